"""Curvature-aware SensZOQ (`--method senszoq-curvature`): a registered method of its own that trains
SensZOQ's masked values with the sparse trainable and writes the sparse delta; its four settings set
the run's optimizer in one place (methods/curvature/config.py).

Tiny random Llama, its fisher mask (which stores scores) and a magnitude mask (which does not).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_ARGS, assert_one_line_error, tiny_finetune_config

from szoq_hub import ConfigError, EvalConfig, evaluate, finetune, get_method, merge
from szoq_hub.methods import method_of_result, method_of_settings
from szoq_hub.methods.curvature.config import CURVATURE_METHOD, CurvatureConfig
from szoq_hub.methods.sparse.config import DELTA_FILE
from szoq_hub.methods.sparse.delta import load_delta

CURV = CURVATURE_METHOD
FLAGS = ("--curvature-source", "--curvature-alpha", "--curvature-lambda", "--curvature-adaptive")


@pytest.fixture(scope="module")
def curvature_run(tiny_model_dir, tiny_mask, train_jsonl, tmp_path_factory) -> Path:
    """A finished 4-step run of the method with its defaults (scores, α 1, λ 0.1, zo-sgd, lr 1e-3); read-only."""
    out = tmp_path_factory.mktemp("curvature-run") / "run"
    finetune(tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, out, method=CURV, steps=4, eval_every=2, save_every=2))
    return out


def _step_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]


def test_the_method_is_registered_with_the_sparse_trainable_and_delta():
    method, sparse = get_method(CURV), get_method("sparse")
    assert method.trainable_cls is sparse.trainable_cls and method.result_cls is sparse.result_cls  # reused, not copied
    assert method.config_cls.final_file == DELTA_FILE and method.config_cls.takes_mask


def test_it_trains_through_the_api_and_its_delta_records_the_method(curvature_run, run_dir):
    settings = json.loads((curvature_run / "finetune_config.json").read_text())["settings"]
    assert settings["method"] == CURV and settings["curvature_source"] == "scores" and settings["curvature_alpha"] == 1.0
    assert (settings["precondition"], settings["precond_alpha"], settings["precond_lambda"], settings["optimizer"], settings["lr"]) == \
        ("scores", 1.0, 0.1, "zo-sgd", 1e-3)  # mapped onto the optimizer; the method's own lr
    assert load_delta(curvature_run).settings["method"] == CURV
    assert method_of_result(curvature_run).name == CURV and method_of_result(curvature_run / DELTA_FILE).name == CURV
    assert method_of_settings(settings).name == CURV
    assert method_of_result(run_dir).name == "sparse"  # a plain SensZOQ delta, same artifact: still SensZOQ's


def test_the_same_command_finds_its_finished_run(curvature_run, tiny_model_dir, tiny_mask, train_jsonl):
    """The settings it records (its own and the optimizer's it set) compare equal when the command is run again."""
    from szoq_hub import TrainingError
    from szoq_hub.training.run_folder import RunFolder

    config = tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, curvature_run, method=CURV, steps=4, eval_every=2, save_every=2)
    with pytest.raises(TrainingError, match="already complete"):
        RunFolder(curvature_run).check_out(config, None)


def test_its_delta_evaluates_merges_and_exports_like_a_senszoq_delta(curvature_run, tiny_model_dir, tiny_mask, train_jsonl, tmp_path, run_cli):
    from safetensors.torch import load_file

    from szoq_hub.hub.refs import open_mask

    scored = evaluate(EvalConfig(delta=str(curvature_run), task=None, train_file=str(train_jsonl), template="{text} It was",
                                 labels="0=bad,1=good", quant="none", eval_samples=4, device="cpu"))
    assert scored.mode == "delta" and 0.0 <= scored.value <= 1.0
    code, out, err = run_cli("eval", "--delta", curvature_run, "--train", train_jsonl, *TRAIN_ARGS, "--quant", "none", "--eval-samples", "4",
                             "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["value"] == scored.value, err

    merged = merge(delta=curvature_run, out=tmp_path / "merged", device="cpu")  # the delta's own model and mask
    weights = load_file(str(Path(merged) / "model.safetensors"))
    mask, delta = open_mask(str(tiny_mask)), load_delta(curvature_run)
    for name, idx in mask.indices.items():
        if idx.numel():
            assert torch.equal(weights[name].reshape(-1)[idx.long()], delta.tensors[name]), name

    pytest.importorskip("peft", reason="pip install 'szoq[peft]'")
    code, out, err = run_cli("export", "peft", "--delta", curvature_run, "--out", tmp_path / "peft")
    assert code == 0, err
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "SHIRA"


def test_its_delta_pushes_and_pulls_like_a_senszoq_delta(hub, curvature_run, tmp_path):
    from szoq_hub.methods.sharing import pull_delta, push_delta
    from test_hub import WRITE, repo_name

    repo = repo_name()
    assert push_delta(curvature_run, repo_id=repo, token=WRITE).tag == "v1"
    got = pull_delta(repo, revision="v1", out=tmp_path / "pulled")
    assert (got.path / DELTA_FILE).read_bytes() == (curvature_run / DELTA_FILE).read_bytes()
    assert method_of_result(got.path).name == CURV


def test_with_alpha_0_it_is_plain_senszoq_bit_for_bit(tiny_model_dir, tiny_mask, train_jsonl, tmp_path):
    """D = 1 exactly at α = 0 (and zo-sgd): same seed, same lr -> the same step log and the same delta."""
    common = dict(steps=3, eval_every=0, lr=1e-3)
    plain = finetune(tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, tmp_path / "plain", **common)).out
    curved = finetune(tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, tmp_path / "curved", method=CURV, curvature_alpha=0.0,
                                           **common)).out
    a, b = load_delta(plain), load_delta(curved)
    assert b.settings["method"] == CURV and a.settings["method"] == "sparse"
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)
    assert [(r["grads"], r["seeds"]) for r in _step_rows(plain)] == [(r["grads"], r["seeds"]) for r in _step_rows(curved)]
    steered = finetune(tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, tmp_path / "steered", method=CURV, **common)).out
    assert any(not torch.equal(a.tensors[n], t) for n, t in load_delta(steered).tensors.items())  # α = 1 steps elsewhere


def test_it_trains_from_the_cli_with_its_flags(tiny_model_dir, tiny_mask, train_jsonl, tmp_path, run_cli):
    out = tmp_path / "cli"
    code, stdout, err = run_cli("finetune", "--method", CURV, "--model", tiny_model_dir, "--mask", tiny_mask, "--quant", "none",
                                "--train", train_jsonl, *TRAIN_ARGS, "--steps", "2", "--batch-size", "4", "--train-samples", "12",
                                "--dev-samples", "4", "--eval-samples", "4", "--eval-every", "0", "--curvature-alpha", "0.5",
                                "--curvature-adaptive", "--out", out, "--json")
    assert code == 0, err
    settings = json.loads((out / "finetune_config.json").read_text())["settings"]
    assert settings["method"] == CURV and settings["optimizer"] == "zo-rmsprop" and settings["precond_alpha"] == 0.5
    assert (out / DELTA_FILE).is_file() and method_of_result(out).name == CURV


def test_a_mask_without_scores_is_refused_unless_the_source_is_online(tiny_model_dir, train_jsonl, tmp_path, run_cli):
    from szoq_hub.masks.build import MaskBuildConfig, build_mask

    _, folder = build_mask(MaskBuildConfig(model=str(tiny_model_dir), scorer="magnitude", density=0.01), tmp_path / "magnitude")
    with pytest.raises(ConfigError, match="holds no scores") as info:
        finetune(tiny_finetune_config(tiny_model_dir, folder, train_jsonl, tmp_path / "api", method=CURV))
    assert "fisher" in info.value.hint and "--curvature-source online" in info.value.hint
    assert not (tmp_path / "api" / "checkpoint.safetensors").exists()
    code, _, err = run_cli("finetune", "--method", CURV, "--model", tiny_model_dir, "--mask", folder, "--quant", "none", "--train", train_jsonl,
                           *TRAIN_ARGS, "--out", tmp_path / "cli")
    assert_one_line_error(code, err, "holds no scores", "--curvature-source scores")
    finetune(tiny_finetune_config(tiny_model_dir, folder, train_jsonl, tmp_path / "online", method=CURV, curvature_source="online",
                                  steps=1, eval_every=0))  # starts from ones


def test_its_settings_set_the_optimizer_and_other_values_are_refused():
    from szoq_cli.finetune import finetune_config

    config = finetune_config({"method": CURV, "curvature_source": "online", "curvature_alpha": 2.0, "curvature_lambda": 0.5,
                              "curvature_adaptive": True, "curvature": "hessian"})
    assert (config.zo.precondition, config.zo.precond_alpha, config.zo.precond_lambda, config.zo.optimizer, config.zo.curvature) == \
        ("online", 2.0, 0.5, "zo-rmsprop", "hessian")
    assert finetune_config({"method": CURV, "precondition": "scores", "precond_alpha": 1.0}).zo.precond_alpha == 1.0  # repeating is fine
    for given, flag in (({"precond_alpha": 0.5}, "--precond-alpha 0.5"), ({"precondition": "online"}, "--precondition online"),
                        ({"optimizer": "zo-adam"}, "--optimizer zo-adam")):
        with pytest.raises(ConfigError, match=f"{re.escape(flag)} does not apply to a {CURV} run") as info:
            finetune_config({"method": CURV, **given})
        assert "--curvature-" in info.value.hint
    with pytest.raises(ConfigError, match=f"only apply to a {CURV} run"):
        finetune_config({"curvature_alpha": 0.5})  # its options without --method
    for bad in (dict(curvature_source="newton"), dict(curvature_alpha=5.0), dict(curvature_alpha=float("nan")), dict(curvature_lambda=0.0)):
        with pytest.raises(ConfigError):
            CurvatureConfig(**bad)


def test_finetune_help_lists_its_flags(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("finetune", "--help")
    assert code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert all(flag in text for flag in FLAGS)
    method_help = text.split("--method", 1)[1].split("--curvature-source TEXT", 1)[0]
    assert f"{CURV}:" in method_help and all(flag in method_help for flag in FLAGS)  # --method's help names the method and its flags
