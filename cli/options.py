"""Typer options generated from the library's config dataclasses: a flag, its default and its help are written once.

Each field of a command's config (`FinetuneConfig`, `EvalConfig`, `MaskBuildConfig`, `MergeConfig`,
`PeftExportConfig`) carries its help in `metadata["help"]`, and its flag in `metadata["flag"]` when
that is not `--name-with-dashes`; `argument` makes it the command's positional argument, `hidden`
keeps it out of `--help`. A bool field is a flag (`--dense`); one that defaults to true also gets its
`--no-` form (`--dev-baseline/--no-dev-baseline`). A field marked `nested` (FinetuneConfig's `zo`) holds a config of its
own whose fields become options beside the others, less those it `skip`s, with the defaults and
help it `overrides` (`--lr`: None, the method's own). A field marked `variants` (FinetuneConfig's
`method_config`) holds one of several configs, which `variants()` lists (every registered method's
settings): the fields of all of them become options (`--dense`, `--lora R`, `--lora-alpha`, ...),
and the config picks its variant from the values (a true `--dense` picks dense MeZO). A help text
may be a function (help that lists the registered methods is read when the options are built).

`parameters(Config)` turns the fields into the keyword parameters Typer reads; `command(...)` gives
a function taking `**options` that signature; `config_from(Config, options)` builds the config
back from the flat values (a nested or variant field as a dict of its fields' values, which the
config resolves: FinetuneConfig fills a left-out `--lr` with the method's own). The configs are
torch-free, so `szoq --help` loads no torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Optional

import typer


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option (or argument) of a config field."""

    name: str  # the keyword the command receives: the field's name
    flag: str
    default: Any  # `...`: required
    help: str
    annotation: Any
    argument: bool = False
    hidden: bool = False


def flag_of(f: dataclasses.Field) -> str:
    """The flag of a config field: its metadata's `flag`, else `--name-with-dashes`."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _help(text: str | Callable[[], str]) -> str:
    return text() if callable(text) else text


def _inner(hints: dict, f: dataclasses.Field) -> type:
    """The config class a nested field holds (`ZOConfig` of `ZOConfig | None`)."""
    return next(a for a in typing.get_args(hints[f.name]) if a is not type(None))


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def _annotation(hint: Any, default: Any) -> Any:
    """The type Typer reads: `Optional[X]` for `X | None` (or a None default), else X (the first of a union such as `str | Path`;
    text for a number or a word, `float | Literal["auto"]`: the config parses it)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    words = any(typing.get_origin(a) is typing.Literal for a in args)
    base = str if words else args[0] if args else hint
    optional = type(None) in typing.get_args(hint) or default is None
    return Optional[base] if optional else base


def options_of(cls: type) -> list[Option]:
    """The options of a config dataclass, in field order (a nested config's fields in its place).

    Args:
        cls: A config dataclass whose fields carry `metadata["help"]`.

    Returns:
        One `Option` per field, with its flag, default, help and type.
    """
    hints = typing.get_type_hints(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("variants"):
            out += [o for variant in meta["variants"]() for o in options_of(variant)]
            continue
        if meta.get("nested"):
            overrides = meta.get("overrides", {})
            for o in options_of(_inner(hints, f)):
                if o.name not in meta.get("skip", ()):
                    over = overrides.get(o.name, {})
                    default = over.get("default", o.default)
                    out.append(dataclasses.replace(o, default=default, help=_help(over.get("help", o.help)), annotation=_annotation(o.annotation, default)))
            continue
        default = _default_of(f)
        out.append(Option(f.name, flag_of(f), default, _help(meta["help"]), _annotation(hints[f.name], default),
                          argument=bool(meta.get("argument")), hidden=bool(meta.get("hidden"))))
    return out


def parameters(cls: type) -> list[inspect.Parameter]:
    """The keyword parameters, one per option of `cls`, that a Typer command declares."""
    params = []
    for o in options_of(cls):
        if o.argument:
            info = typer.Argument(o.default, help=o.help, hidden=o.hidden)
        elif o.annotation is bool and o.default is True:  # on by default: only its `--no-` form can turn it off
            info = typer.Option(o.default, f"{o.flag}/--no-{o.flag.removeprefix('--')}", help=o.help, hidden=o.hidden)
        else:
            info = typer.Option(o.default, o.flag, help=o.help, hidden=o.hidden)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=o.annotation))
    return params


def extra(name: str, annotation: Any, info: Any) -> inspect.Parameter:
    """A parameter of a command that is not a config field (`--json`, `--push`, ...)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def command(*configs: type, extras: tuple[inspect.Parameter, ...] = ()) -> Callable[[Callable], Callable]:
    """Give a function taking `**options` the parameters of `configs` (then `extras`), for Typer to read.

    Typer reads a command's options from its signature; a function declared as `fn(*, x=..., **options)`
    gets here the signature of every config field plus its own keyword parameters.
    """
    def wrap(fn: Callable) -> Callable:
        params = [p for cls in configs for p in parameters(cls)] + list(extras)
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn
    return wrap


def config_from(cls: type, options: dict) -> Any:
    """A config from flat option values (a nested config's options beside the rest); the others are left out.

    A nested or variant field gets the values of its fields as a dict (the config builds its
    settings from it: FinetuneConfig's `zo` and `method_config`).

    Args:
        cls: The config dataclass.
        options: name -> value; names that are no option of `cls` are ignored, missing ones keep their default.

    Raises:
        ConfigError: an invalid value (the config validates on creation).
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("variants") or f.metadata.get("nested"):
            inner = f.metadata["variants"]() if f.metadata.get("variants") else [_inner(hints, f)]
            names = {g.name for c in inner for g in dataclasses.fields(c)} - set(f.metadata.get("skip", ()))
            kwargs[f.name] = {k: v for k, v in options.items() if k in names}
        elif f.name in options:
            kwargs[f.name] = options[f.name]
    return cls(**kwargs)
