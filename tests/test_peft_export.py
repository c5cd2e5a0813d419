"""`szoq export peft`: a SHiRA adapter that PEFT loads and that computes `szoq merge`'s logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from szoq_hub.core.errors import ConfigError
from szoq_hub.training.finetune import finetune
from szoq_hub.methods.sparse.peft import shira_entries, shira_rank
from conftest import tiny_finetune_config as _config
from conftest import other_run


@pytest.fixture(scope="module")
def shifted_run(tiny_model_dir, tiny_mask, train_jsonl, tmp_path_factory) -> Path:  # noqa: F811
    """A real 2-step run whose delta is then moved by 0.05 per value, so that it changes the logits clearly."""
    root = tmp_path_factory.mktemp("peft-run")
    finetune(_config(tiny_model_dir, tiny_mask, train_jsonl, root / "run", steps=2, eval_every=2, save_every=2))
    return other_run(root / "run", root / "shifted", shift=0.05)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits  # [B, T, V]


def test_peft_adapter_logits_equal_merge_logits(tiny_model_dir, tiny_mask, shifted_run, tmp_path, run_cli):  # noqa: F811
    pytest.importorskip("peft", reason="pip install 'szoq[peft]'")
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from szoq_hub.masks.artifact import load_mask

    common = ["--model", tiny_model_dir, "--mask", tiny_mask, "--delta", shifted_run]
    code, out, err = run_cli("merge", *common, "--out", tmp_path / "merged")
    assert code == 0, err
    code, out, err = run_cli("export", "peft", *common, "--out", tmp_path / "adapter", "--json")
    assert code == 0, err
    result = json.loads(out)
    mask = load_mask(tiny_mask)
    assert result["nnz"] == mask.nnz and result["layers"] == len(mask.indices) and result["padding"] > 0

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == result["r"]
    assert sorted(config["target_modules"]) == sorted(n.removesuffix(".weight") for n in mask.indices)
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        assert fh.metadata()["szoq_mask_sha256"] and fh.metadata()["szoq_fingerprint"]
        name = next(iter(mask.indices))
        weight = fh.get_tensor(f"base_model.model.{name.removesuffix('.weight')}.shira_weight")
        nnz = mask.indices[name].numel()
        assert weight.numel() == result["r"] * sum(fh.get_tensor(f"base_model.model.{name.removesuffix('.weight')}.shira_indices").shape[1:])
        assert bool((weight[nnz:] == 0).all()) and bool((weight[:nnz] != 0).any())  # padding adds exactly 0

    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval(), ids)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    adapted = _logits(peft_model, ids)
    assert (merged - base_logits).abs().max() > 1e-2  # the delta matters: equality below is not vacuous
    torch.testing.assert_close(adapted, merged, rtol=1e-5, atol=1e-5)


def test_shira_rank_holds_the_densest_layer_and_refuses_the_impossible():
    assert shira_rank({"a": (4, 8), "b": (8, 8)}, {"a": 3, "b": 5}) == 1
    assert shira_rank({"a": (4, 8), "b": (8, 8)}, {"a": 13, "b": 5}) == 2  # 13 > 1 * (4 + 8)
    assert shira_rank({"a": (2, 2)}, {"a": 4}) == 1  # r * (2 + 2) = every weight: allowed
    with pytest.raises(ConfigError, match="SHiRA cannot express"):
        shira_rank({"a": (1, 8)}, {"a": 1})  # r = 1 asks 9 entries of a layer with 8 weights


def test_shira_padding_is_outside_the_mask_and_zero():
    idx = torch.tensor([0, 2, 5], dtype=torch.int32)
    indices, weight = shira_entries(idx, torch.tensor([1.0, 2.0, 3.0]), (3, 4), 7)
    flat = (indices[0] * 4 + indices[1]).tolist()
    assert flat[:3] == [0, 2, 5] and len(set(flat)) == 7 and not set(flat[3:]) & {0, 2, 5}
    assert weight.tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0] and indices.dtype == torch.int32


def test_export_without_peft_names_the_extra(run_cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)  # an import of peft now fails as if it were not installed
    code, _, err = run_cli("export", "peft", "--delta", tmp_path, "--out", tmp_path / "a")
    assert_one_line_error(code, err, "peft")
    assert "pip install 'szoq[peft]'" in err and not (tmp_path / "a").exists()


def test_export_push_publishes_an_adapter_peft_loads_from_the_hub(hub, tiny_model_dir, tiny_mask, shifted_run, tmp_path, run_cli, monkeypatch):  # noqa: F811
    pytest.importorskip("peft", reason="pip install 'szoq[peft]'")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from test_hub import WRITE, repo_name

    repo = repo_name()
    monkeypatch.setenv("HF_TOKEN", WRITE)
    code, out, err = run_cli("export", "peft", "--model", tiny_model_dir, "--mask", tiny_mask, "--delta", shifted_run,
                             "--out", tmp_path / "adapter", "--push", repo, "--json")
    assert code == 0, err
    pushed = json.loads(out)["push"]
    assert pushed["status"] == "pushed" and pushed["tag"] == "v1"
    files = hub.repos[repo].commits[pushed["commit"]].files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "library_name: peft" in card and f'"{repo}"' in card and str(tmp_path) not in card
    assert str(tiny_model_dir) not in files["adapter_config.json"].decode()  # only the folder's name, never a local path

    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    local = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter").eval(), ids)
    remote = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), repo, revision="v1").eval(), ids)
    torch.testing.assert_close(remote, local, rtol=0, atol=0)

    # a hand-edited adapter naming a local path is refused before anything is sent
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_dir)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    from szoq_hub.export.peft import push_peft

    commits = len(hub.repos[repo].commits)
    with pytest.raises(ConfigError, match="local path"):
        push_peft(tmp_path / "adapter", repo_id=repo)
    assert len(hub.repos[repo].commits) == commits


def test_export_takes_the_deltas_own_model_and_registry_mask(tiny_model_dir, tiny_mask, train_jsonl, tmp_path, run_cli):  # noqa: F811
    """`export peft --delta RUN` with no --model/--mask uses the run's model and mask, like merge and eval (issue 22)."""
    pytest.importorskip("peft", reason="pip install 'szoq[peft]'")
    from szoq_hub.masks.artifact import load_mask
    from szoq_hub.masks.registry import Registry

    Registry().add(Path(tiny_mask), "tiny-reg")  # a registry mask, not the built-in default
    finetune(_config(tiny_model_dir, "tiny-reg", train_jsonl, tmp_path / "run", steps=2, eval_every=2, save_every=2))
    code, out, err = run_cli("export", "peft", "--delta", tmp_path / "run", "--out", tmp_path / "adapter", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["nnz"] == load_mask(tiny_mask).nnz and result["layers"] == len(load_mask(tiny_mask).indices)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == Path(tiny_model_dir).name  # the run's model, not the built-in SmolLM2
