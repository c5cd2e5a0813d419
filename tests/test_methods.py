"""A training method is a unit: the method table, and a fourth method registered from this file alone.

The toy method trains the final RMSNorm weight [hidden] of the fp32 model by ZO. Its settings,
trainable and result are defined here, registered with one `register_method` line, and it trains,
saves, evaluates and merges through the public API (`finetune`, `evaluate`, `merge`) with no
edit to the library.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import assert_one_line_error

# `szoq finetune`'s options are built once, when its module is imported: import it before the toy method
# registers, or every later test of the CLI's options would see the toy's --norm-scale.
import szoq_cli.finetune  # noqa: F401  (before the toy registers)
from szoq_hub import ConfigError, EvalConfig, FinetuneConfig, evaluate, finetune, get_method, merge, method_names, register_method, unregister_method
from szoq_hub.core import content
from szoq_hub.data.models import load_model, model_fingerprint, resolve_model
from szoq_hub.methods import method_of_result, method_of_settings
from szoq_hub.methods.result import Merged, MethodResult, Scorable
from szoq_hub.methods.spec import MethodConfig, opt
from szoq_hub.methods.trainable import VectorTrainable

NORM_FILE = "norm.safetensors"


# ---- the toy method: settings, trainable, result --------------------------------------------
@dataclass
class NormConfig(MethodConfig):
    """Toy: ZO over the final norm's weight of the fp32 model."""

    norm_scale: float = opt(1.0, "Toy norm method: the trained weight starts at the model's times this.")

    final_file: ClassVar[str] = NORM_FILE
    default_lr: ClassVar[float] = 1e-3
    quantized: ClassVar[bool] = False
    data_parallel: ClassVar[bool] = False
    summary: ClassVar[str] = "toy: the final RMSNorm weight"


def _patch_norm(norm: torch.nn.Module, weight_of) -> None:
    """RMSNorm whose weight comes from `weight_of()`: [H], or [P, H] for P copy-major row blocks."""
    eps = norm.variance_epsilon

    def forward(x: torch.Tensor) -> torch.Tensor:  # x [N, T, H]
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        w = weight_of()
        if w.dim() == 1:
            return (h * w).to(x.dtype)
        p = w.shape[0]
        return (h.view(p, -1, *h.shape[1:]) * w[:, None, None, :]).view(x.shape).to(x.dtype)  # [P, B, T, H] -> [N, T, H]

    norm.forward = forward


class NormTrainable(VectorTrainable):
    final_file = NORM_FILE

    def __init__(self, config, device, dtype, settings, writer) -> None:
        self.source = resolve_model(config.model, revision=config.revision)
        self.fingerprint = model_fingerprint(self.source)
        loaded = load_model(self.source, dtype=torch.float32)
        self.model, self.tokenizer = loaded.model.to(device), loaded.tokenizer
        norm = self.model.model.norm
        super().__init__(norm.weight.detach().float().clone() * config.method_config.norm_scale, config, settings, writer)  # [H]
        self._points: torch.Tensor | None = None  # [P, H] inside `perturbed`
        _patch_norm(norm, lambda: self.values if self._points is None else self._points)

    @contextmanager
    def perturbed(self, points: torch.Tensor):
        self._points = points
        try:
            yield points.shape[0]
        finally:
            self._points = None

    def record(self) -> dict:
        return {"nnz": self.nnz, "mask_sha256": None, "mask_ref": None}

    def save_values(self, path: Path, values: torch.Tensor, **facts) -> None:
        from safetensors.torch import save_file

        tensors = {"model.norm.weight": values.detach().cpu().contiguous()}
        meta = {"format": "toy.norm", "fingerprint": self.fingerprint, "settings": json.dumps({**self.settings, **facts}, default=str)}
        save_file(tensors, str(path), metadata=content.stamp(meta, tensors))  # every method artifact records its content hash

    def write_final(self, run, config, result: dict) -> None:
        run.write_card(title="# toy norm", summary="toy", rows=[], config=config, result={**result, "base_model": self.source.base_model},
                       tags=["szoq"], use=["szoq eval --delta THIS_FOLDER"])
        self.save_values(run.file(self.final_file), self.values, **result)


class NormResult(MethodResult):
    file = NORM_FILE
    describes = "a norm weight"
    flag = "--method toy-norm"

    @classmethod
    def _model(cls, ref, model, revision):
        from safetensors import safe_open

        with safe_open(str(cls.path_of(ref)), framework="pt") as fh:
            weight, meta = fh.get_tensor("model.norm.weight"), fh.metadata()
        content.verify(meta, str(cls.path_of(ref)), ConfigError, tensors={"model.norm.weight": weight}, hashless_ok=False,
                       hint="train the toy run again")  # before any value is used
        settings = json.loads(meta["settings"])
        loaded = load_model(resolve_model(model or settings["model"], revision=revision), dtype=torch.float32)
        with torch.no_grad():
            loaded.model.model.norm.weight.copy_(weight)
        return loaded, weight.numel()

    @classmethod
    def for_eval(cls, ref, *, model, mask, quant, dtype, revision, device) -> Scorable:
        loaded, _ = cls._model(ref, model, revision)
        return Scorable(loaded.model.to(device), loaded.tokenizer, "toy-norm")

    @classmethod
    def merged(cls, ref, *, model, mask_ref, revision, device) -> Merged:
        loaded, n = cls._model(ref, model, revision)
        return Merged(loaded.model.to(device), loaded.tokenizer, loaded.source, n)


@pytest.fixture
def toy_method():
    register_method(name="toy-norm", config_cls=NormConfig, trainable_cls=NormTrainable, result_cls=NormResult)
    yield get_method("toy-norm")
    unregister_method("toy-norm")


# ---- tests ----------------------------------------------------------------------------------
def _run(tiny_model_dir, train_file, out, **kw) -> FinetuneConfig:
    return FinetuneConfig(model=str(tiny_model_dir), task=None, train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                          steps=3, batch_size=4, eval_every=2, save_every=2, train_samples=12, dev_samples=4, eval_samples=4,
                          device="cpu", out=str(out), **kw)


def test_a_fourth_method_trains_saves_evaluates_and_merges_through_the_public_api(toy_method, tiny_model_dir, train_file, tmp_path):
    assert "toy-norm" in method_names()
    config = _run(tiny_model_dir, train_file, tmp_path / "run", method="toy-norm", dev_baseline=False)  # trained, not kept at step 0
    assert config.quant == "none" and config.mask is None and config.zo.lr == 1e-3  # the method's facts
    result = finetune(config)
    run = Path(result.out)
    assert (run / NORM_FILE).is_file()
    recorded = json.loads((run / "finetune_config.json").read_text())
    assert recorded["settings"]["method"] == "toy-norm" and recorded["settings"]["norm_scale"] == 1.0
    assert method_of_result(run) is toy_method and method_of_settings(recorded["settings"]) is toy_method

    scored = evaluate(EvalConfig(delta=str(run), task="custom", train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                                 eval_samples=4, device="cpu"))
    assert scored.mode == "toy-norm" and 0.0 <= scored.value <= 1.0

    merged = merge(delta=run, out=tmp_path / "merged", device="cpu")
    from safetensors.torch import load_file

    trained = load_file(str(run / NORM_FILE))["model.norm.weight"]
    reloaded = load_model(resolve_model(str(merged)), dtype=torch.float32).model
    assert torch.equal(reloaded.model.norm.weight, trained)
    base = load_model(resolve_model(str(tiny_model_dir)), dtype=torch.float32).model
    assert not torch.equal(base.model.norm.weight, trained)  # three ZO steps moved it


def test_a_method_is_chosen_by_name_or_by_its_option(toy_method):
    from szoq_cli.finetune import finetune_config  # flat options, as `szoq finetune` gives them

    assert finetune_config({"method": "toy-norm", "norm_scale": 2.0}).method_config == NormConfig(norm_scale=2.0)
    assert finetune_config({"dense": True}).method == "dense"
    assert finetune_config({"lora": 4}).method_config.settings().rank == 4
    assert FinetuneConfig(method="dense").quant == "none" and FinetuneConfig(method="dense").mask is None
    with pytest.raises(ConfigError, match="only apply to a toy-norm run"):
        finetune_config({"norm_scale": 2.0})
    with pytest.raises(ConfigError, match="--lora and --dense were both given|--dense and --lora were both given"):
        finetune_config({"dense": True, "lora": 4})
    with pytest.raises(ConfigError, match="unknown method"):
        FinetuneConfig(method="nope")


def test_registering_twice_or_over_a_builtin_is_refused(toy_method):
    register_method(name="toy-norm", config_cls=NormConfig, trainable_cls=NormTrainable, result_cls=NormResult)  # the same: a no-op
    with pytest.raises(ConfigError):
        register_method(name="dense", config_cls=NormConfig, trainable_cls=NormTrainable, result_cls=NormResult)
    with pytest.raises(ConfigError):
        unregister_method("sparse")


def test_a_plugin_falls_back_to_its_own_lr_and_a_rule_default_needs_a_fixed_lr():
    """`--lr scores` without scores falls back to the method's own numeric lr (the toy's 1e-3, not the base 1e-4);
    a method whose default is the rule must say what it falls back to."""
    assert NormConfig.numeric_lr() == 1e-3 and get_method("sparse").config_cls.numeric_lr() == 1e-4

    @dataclass
    class RuleConfig(NormConfig):
        default_lr: ClassVar[float | str] = "scores"

    with pytest.raises(ConfigError, match="needs a numeric fixed_lr"):
        register_method(name="toy-rule", config_cls=RuleConfig, trainable_cls=NormTrainable, result_cls=NormResult)


def test_a_0_1_0_run_config_names_its_method_by_its_options():
    assert method_of_settings({"dense": True, "lora": 0}).name == "dense"
    assert method_of_settings({"dense": False, "lora": 8}).name == "lora"
    assert method_of_settings({"dense": False, "lora": 0, "mask": "m"}).name == "sparse"
    assert method_of_settings({"method": "lora"}).name == "lora"


def test_cli_takes_a_method_by_name_and_refuses_two(tmp_path, run_cli):
    code, _, err = run_cli("finetune", "--method", "nope", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "unknown method 'nope'")
    code, _, err = run_cli("finetune", "--method", "dense", "--lora", "4", "--out", tmp_path / "y")
    assert_one_line_error(code, err, "were both given")


@pytest.mark.parametrize("method, old", [("dense", {"dense": True, "lora": 0, "lora_alpha": 16.0, "lora_targets": "q_proj,v_proj"}),
                                         ("lora", {"dense": False, "lora": 8, "lora_alpha": 16.0, "lora_targets": "q_proj,v_proj"}),
                                         ("sparse", {"dense": False, "lora": 0, "lora_alpha": 16.0, "lora_targets": "q_proj,v_proj"})])
def test_a_run_folder_written_by_0_1_0_is_the_same_run(method, old, tmp_path):
    """0.1.0 recorded `dense` / `lora` and no `method`: the same command finds its run (here: complete)."""
    from szoq_cli.finetune import finetune_config
    from szoq_hub import TrainingError
    from szoq_hub.training.config import settings_of
    from szoq_hub.training.run_folder import RunFolder

    options = {"out": str(tmp_path), **({"dense": True} if method == "dense" else {"lora": 8} if method == "lora" else {})}
    config = finetune_config(options)
    settings = {k: v for k, v in settings_of(config).items() if k not in ("method", "dense", "lora", "lora_alpha", "lora_targets")}
    (tmp_path / "finetune_config.json").write_text(json.dumps({"settings": {**settings, **old}, "task": {}}))
    (tmp_path / get_method(method).config_cls.final_file).write_bytes(b"")
    with pytest.raises(TrainingError, match="already complete"):
        RunFolder(tmp_path).check_out(config, None)
