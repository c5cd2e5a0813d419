"""Where szoq computes and in which dtype: one resolver for `--device` and one for `--dtype`.

`--device auto` picks CUDA when torch sees a GPU, else the CPU; `cuda` / `cuda:N` must exist.
`--dtype` names the compute dtype of activations, embeddings, norms, lm_head and the
dequantized base. The trainable sparse values are an fp32 master vector whatever the compute
dtype (see runtime.py), so the choice trades speed for activation precision only.

`--dtype auto` is the default of finetune and eval (the library's `None` keeps the device
type's default below; a resumed run keeps the dtype it recorded):
- CUDA: bf16 (tensor cores; fp32 range, so no loss scaling is needed without a backward pass).
- CPU: bf16 where the CPU has native bf16 matrix instructions, else fp32. bench/bench_dtype.py
  on this 2-core AVX512-BF16 CPU (SmolLM2-135M, nf4, SST-2 batch 16, 1 thread, process CPU seconds): bf16 is 1.88x faster per forward and 1.75x
  per paired ZO step, with equal zero-shot accuracy (64 dev rows) and projected gradients that
  agree in sign on every step (correlation 0.98) but differ by 17% (median) in magnitude; the
  accuracy after fine-tuning is compared in bench/results/quality.md (bf16 SST-2 cells). Pass
  `--dtype fp32` for the exact reference. See bench/results/dtype.md.

`--dtype auto` follows the hardware: bf16 on CUDA, bf16 on a CPU with native bf16 matrix
kernels (x86 `avx512_bf16` / `amx_bf16`, Arm `bf16`: oneDNN runs bf16 matmuls there at up to
twice the fp32 rate), fp32 on any other CPU (where bf16 is emulated and slower than fp32). The
check reads the CPU's flags once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from .errors import ConfigError, DependencyError

from .specs import DEVICE_CHOICES, check_device_spec, check_dtype_spec  # noqa: F401  (torch-free: read by config checks)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_DTYPE = {"cuda": "bf16", "cpu": "fp32"}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device a `--device` value names.

    Args:
        spec: `auto` (or None), `cpu`, `cuda`, `cuda:N`, or a `torch.device`.

    Returns:
        The device (`cuda` resolves to the current CUDA device index).

    Raises:
        ConfigError: an unknown device string, or CUDA asked for but not available (or an
            index past the visible GPUs).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown --device {spec!r}", hint=f"choose one of: {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {spec} is not available: torch sees no CUDA GPU (torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})",
            hint="use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU",
        )
    n = torch.cuda.device_count()
    i = int(index) if index else torch.cuda.current_device()
    if i >= n:
        raise ConfigError(f"--device {spec}: only {n} CUDA device(s) visible", hint=f"choose cuda:0 .. cuda:{n - 1}")
    return torch.device("cuda", i)


# /proc/cpuinfo flags of native bf16 matrix instructions (x86 AVX512-BF16 / AMX, Arm BF16).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (read once per process).

    Linux: the flags of /proc/cpuinfo. Elsewhere, or when it cannot be read: False (fp32 is the
    safe choice where bf16 would be emulated).
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def auto_dtype(device: torch.device) -> str:
    """The `--dtype auto` choice for `device`: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def dtype_name(dtype: torch.dtype) -> str:
    """The `--dtype` spelling of a torch dtype (`bf16`, `fp16`, `fp32`)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"unsupported compute dtype {dtype}", hint=f"choose one of: {', '.join(DTYPES)}")


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype a `--dtype` value names.

    Args:
        spec: `bf16`, `fp16`, `fp32`, a torch dtype; `auto` for the hardware's choice
            (`auto_dtype`); None for the device type's default (`DEFAULT_DTYPE`).
        device: The resolved device (its type chooses the default).

    Returns:
        The torch dtype.

    Raises:
        ConfigError: an unknown dtype.
    """
    if isinstance(spec, torch.dtype):
        dtype_name(spec)  # validates
        return spec
    if spec == "auto":
        spec = auto_dtype(device)
    elif spec is None:
        spec = DEFAULT_DTYPE.get(device.type, "fp32")
    if spec not in DTYPES:
        raise ConfigError(f"unknown --dtype {spec!r}", hint=f"choose one of: {', '.join(DTYPES)}")
    return DTYPES[spec]


def require_quant_backend(quant: str) -> None:
    """Refuse a quantized mode when bitsandbytes is not installed (checked before any model loads).

    Args:
        quant: `nf4`, `fp4`, `int8` (need bitsandbytes) or `none`.

    Raises:
        DependencyError: a quantized mode without bitsandbytes.
    """
    if quant != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyError(f"--quant {quant} needs bitsandbytes", hint="pip install 'bitsandbytes>=0.48' (or use --quant none)")
    if quant != "none":
        from .thirdparty import import_bitsandbytes

        import_bitsandbytes()  # before any other bitsandbytes import: no Hub kernel lookup, no trust_remote_code warning
