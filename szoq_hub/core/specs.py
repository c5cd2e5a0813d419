"""Spellings of `--device` and `--dtype`, checked without torch (config validation and `szoq --help` load no torch).

`core.devices` turns them into torch devices and dtypes.
"""

from __future__ import annotations

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_NAMES = ("bf16", "fp16", "fp32")


def check_device_spec(spec: str) -> None:
    """Validate the spelling of a `--device` value without touching CUDA (for config checks).

    Raises:
        ConfigError: not `auto`, `cpu`, `cuda` or `cuda:N`.
    """
    kind, _, index = (spec or "").strip().lower().partition(":")
    if kind in ("auto", "cpu") and not index:
        return
    if kind == "cuda" and (not index or index.isdigit()):
        return
    raise ConfigError(f"unknown --device {spec!r}", hint=f"choose one of: {', '.join(DEVICE_CHOICES)}")


def check_dtype_spec(spec: str | None) -> None:
    """Validate a `--dtype` value (None = the device's default).

    Raises:
        ConfigError: not `auto`, `bf16`, `fp16` or `fp32`.
    """
    if spec is not None and spec != "auto" and spec not in DTYPE_NAMES:
        raise ConfigError(f"unknown --dtype {spec!r}", hint=f"choose one of: auto, {', '.join(DTYPE_NAMES)}")
