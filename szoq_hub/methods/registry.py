"""The method table: `register_method`, `get_method`, and finding the method of a run or a result.

The built-in methods register in this package's `__init__` (which Python runs before any module
of the package); a method's own code reads the table from here, never from `__init__`, so no
import of a method's module leads back to the registrations.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .spec import MethodConfig, field_flag

DEFAULT_METHOD = "sparse"
BUILTIN_METHODS = ("sparse", "senszoq-curvature", "dense", "lora")


def _load(ref: Any) -> Any:
    """A class given directly, or as `"module:Class"` (module relative to this package)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module, __package__), name)


@dataclass(frozen=True)
class Method:
    """One registered training method.

    Attributes:
        name: What `--method` and the run folder call it.
        config_cls: Its settings (`MethodConfig` subclass; its fields are `szoq finetune` options).
    """

    name: str
    config_cls: type[MethodConfig]
    _trainable: Any
    _result: Any

    @property
    def trainable_cls(self) -> type:
        """The `Trainable` class: built with (FinetuneConfig, device, dtype, settings, writer)."""
        return _load(self._trainable)

    @property
    def result_cls(self) -> type:
        """The `MethodResult` class: what reads the run's final file."""
        return _load(self._result)

    @property
    def selector(self) -> str | None:
        """The config field that picks this method on the command line (`dense` for --dense), if any."""
        return next((f.name for f in fields(self.config_cls) if f.metadata.get("selects")), None)

    @property
    def flag(self) -> str:
        """How a message names the choice of this method: its selecting flag, else `--method NAME`."""
        sel = self.selector
        return field_flag(next(f for f in fields(self.config_cls) if f.name == sel)) if sel else f"--method {self.name}"

    @property
    def choice(self) -> str:
        """The option that chooses this method, as a user types it (`--lora 8`, `--dense`, `--method NAME`)."""
        sel = next((f for f in fields(self.config_cls) if f.metadata.get("selects")), None)
        example = sel.metadata.get("example") if sel is not None else None
        return f"{self.flag} {example}" if example else self.flag


_METHODS: dict[str, Method] = {}


def register_method(*, name: str, config_cls: type[MethodConfig], trainable_cls: Any, result_cls: Any) -> Method:
    """Add a training method to the table (`finetune`, `eval`, `merge`, ... find it by name).

    Args:
        name: The method's name (`FinetuneConfig(method=name)`, `szoq finetune --method name`).
        config_cls: Its `MethodConfig` subclass.
        trainable_cls: Its `Trainable` class, or `"module:Class"`.
        result_cls: Its `MethodResult` class, or `"module:Class"`.

    Returns:
        The registered `Method`.

    Raises:
        ConfigError: the name is taken by another method, a settings field clashes with
            another method's (every method's fields are options of one command), or a rule
            `default_lr` ("scores") comes without the numeric `fixed_lr` it falls back to.
    """
    if not issubclass(config_cls, MethodConfig):
        raise ConfigError(f"method {name!r}: config_cls must subclass MethodConfig", hint="see szoq_hub/methods/spec.py")
    if isinstance(config_cls.default_lr, str) and not isinstance(config_cls.fixed_lr, (int, float)):
        raise ConfigError(f"method {name!r}: default_lr {config_cls.default_lr!r} needs a numeric fixed_lr to fall back to",
                          hint="set fixed_lr, e.g. fixed_lr: ClassVar[float] = 1e-4")
    old = _METHODS.get(name)
    if old is not None and old.config_cls is not config_cls:
        raise ConfigError(f"a method named {name!r} is registered already", hint="choose another name")
    mine = {f.name for f in fields(config_cls)}
    for other in _METHODS.values():
        clash = mine & {f.name for f in fields(other.config_cls)}
        if other.name != name and clash:
            raise ConfigError(f"method {name!r}: settings {sorted(clash)} clash with method {other.name!r}", hint="prefix the field names with the method's name")
    _METHODS[name] = Method(name, config_cls, trainable_cls, result_cls)
    return _METHODS[name]


def unregister_method(name: str) -> None:
    """Remove a method added with `register_method` (a built-in method stays).

    Raises:
        ConfigError: `name` is a built-in method.
    """
    if name in BUILTIN_METHODS:
        raise ConfigError(f"{name!r} is a built-in method", hint="built-in methods cannot be removed")
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method `name`.

    Raises:
        ConfigError: no method by that name.
    """
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_METHODS.values())


def method_names() -> list[str]:
    """The names of every registered method, in registration order."""
    return list(_METHODS)


def method_of_settings(settings: dict) -> Method:
    """The method a run's recorded settings name (0.1.0 runs: the one their `dense` / `lora` options select)."""
    name = settings.get("method")
    if isinstance(name, str) and name in _METHODS:
        return _METHODS[name]
    return next((m for m in _METHODS.values() if m.selector and settings.get(m.selector)), _METHODS[DEFAULT_METHOD])


def method_of_result(ref: str | Path) -> Method:
    """The method whose finished run `ref` (a run folder or its final file) holds.

    Methods that write the same artifact (SensZOQ and its curvature-aware variant both write a
    delta) share a result class: among them, the one the file records by name, else the first
    registered. A folder or file no method recognises is the default method's to judge: its
    loader says what is missing (an unfinished run, a wrong path).
    """
    default = _METHODS[DEFAULT_METHOD]
    for method in [m for m in _METHODS.values() if m is not default] + [default]:
        if method.result_cls.holds(ref):
            sharing = [m for m in _METHODS.values() if m.result_cls is method.result_cls]
            if len(sharing) == 1:
                return method
            recorded = method.result_cls.recorded_method(ref)
            return next((m for m in sharing if m.name == recorded), sharing[0])
    return default
