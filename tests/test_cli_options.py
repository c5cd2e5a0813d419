"""Each command's flags come from its config dataclass: names, defaults and help written once, in the fields."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from szoq_cli.app import _register, app
from szoq_hub import EvalConfig, FinetuneConfig, MaskBuildConfig, MergeConfig, PeftExportConfig, ZOConfig, get_method, method_names

# command path -> (its config, the parameters it adds that are no config field)
COMMANDS = {
    ("finetune",): (FinetuneConfig, {"resume", "as_json"}),
    ("eval",): (EvalConfig, {"as_json"}),
    ("merge",): (MergeConfig, set()),
    ("mask", "build"): (MaskBuildConfig, {"name", "version", "out_dir", "as_json"}),
    ("export", "peft"): (PeftExportConfig, {"push", "tag", "private", "token", "as_json"}),
}


def _command(path: tuple[str, ...]):
    """The command Typer built (its `params`: name, opts, default, help, hidden)."""
    _register()
    cmd = typer.main.get_command(app)
    for word in path:
        cmd = cmd.commands[word]
    return cmd


def _help(text) -> str:
    return text() if callable(text) else text  # help that lists the registered methods is read when the options are built


def _expected(cls: type) -> dict[str, tuple[list[str], object, str]]:
    """field name -> (flags, default, help) as the field declares them (a nested config's fields in its
    place; a variant field: the fields of every registered method's settings)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("variants"):
            assert f.name == "method_config"
            for name in method_names():
                out.update(_expected(get_method(name).config_cls))
            continue
        if f.metadata.get("nested"):
            overrides = f.metadata.get("overrides", {})
            for name, (flags, default, text) in _expected(ZOConfig).items():
                if name not in f.metadata["skip"]:
                    over = overrides.get(name, {})
                    out[name] = (flags, over.get("default", default), _help(over.get("help", text)))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None  # a required option: no default
        flags = [] if f.metadata.get("argument") else [f.metadata.get("flag") or "--" + f.name.replace("_", "-")]
        out[f.name] = (flags, default, _help(f.metadata["help"]))
    return out


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_config_field_is_an_option_with_its_flag_default_and_help(path):
    cls, extras = COMMANDS[path]
    params = {p.name: p for p in _command(path).params}
    expected = _expected(cls)
    assert set(params) == set(expected) | extras, set(params) ^ (set(expected) | extras)
    for name, (flags, default, text) in expected.items():
        p = params[name]
        assert list(p.opts) == (flags or [name]), name
        assert p.default == default, name
        # Typer 0.25 with click 8.3 drops an argument's help (mask build's MODEL shows none, as before generation)
        assert p.help == text or (not flags and p.help is None), name
        assert p.required == (getattr(cls.__dataclass_fields__.get(name), "default", None) is dataclasses.MISSING), name


def test_finetune_has_every_registered_methods_settings_and_they_choose_the_method():
    """`--method NAME`, and each method's own fields (`--dense`, `--lora R`, `--lora-alpha`, ...) as options
    of `szoq finetune`; a selecting one picks its method, another method's options are refused."""
    from szoq_cli.finetune import finetune_config
    from szoq_hub import ConfigError

    params = {p.name: p for p in _command(("finetune",)).params}
    for name in method_names():
        for f in dataclasses.fields(get_method(name).config_cls):
            assert f.name in params, (name, f.name)
    assert list(params["dense"].opts) == ["--dense"] and list(params["lora"].opts) == ["--lora"] and "--method" in params["method"].opts
    assert all(name in params["method"].help for name in method_names())  # each method's summary
    assert "with --dense" in params["lr"].help and "with --lora" in params["lr"].help
    assert finetune_config({"dense": True}).method == "dense"
    assert finetune_config({"lora": 4, "lora_alpha": 8.0}).method_config.settings().alpha == 8.0
    assert finetune_config({"method": "lora", "lora": 4}).method == "lora"
    assert finetune_config({}).method == "sparse"
    with pytest.raises(ConfigError, match="only apply to a LoRA run"):
        finetune_config({"lora_alpha": 8.0})


def test_no_option_helper_is_public_api():
    import szoq_hub

    assert not {"flag", "help_of", "default_of", "option_fields", "config_from_options"} & set(szoq_hub.__all__)


def test_hidden_options_stay_hidden_and_help_reads_the_config():
    params = {p.name: p for p in _command(("mask", "build")).params}
    assert params["score_quant"].hidden and not params["density"].hidden
    lr = {p.name: p for p in _command(("finetune",)).params}["lr"]
    assert lr.default is None and "with --dense" in lr.help  # --lr left out: the method's own


def test_a_bool_option_on_by_default_can_be_turned_off():
    """A bool field that defaults to true gets its `--no-` form (`--dev-baseline/--no-dev-baseline`); one off by default is a flag."""
    from szoq_cli.finetune import finetune_config

    params = {p.name: p for p in _command(("finetune",)).params}
    assert (list(params["dev_baseline"].opts), list(params["dev_baseline"].secondary_opts), params["dev_baseline"].default) == \
        (["--dev-baseline"], ["--no-dev-baseline"], True)
    assert list(params["dense"].secondary_opts) == []
    assert finetune_config({"dev_baseline": False}).dev_baseline is False and finetune_config({}).dev_baseline is True
