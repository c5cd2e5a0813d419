"""The public Python API: `szoq_hub` exports, Hub-mixin methods of masks and deltas, README example."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHARED_DATA
from szoq_hub.core.errors import FingerprintMismatch, MaskError
from szoq_hub.masks.artifact import load_mask
from szoq_hub.masks.registry import Registry
from test_hub import WRITE, repo_name
from conftest import other_run


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _loaded_after(code: str) -> set[str]:
    """The heavy packages a fresh interpreter has loaded after running `code`."""
    probe = code + "\nimport sys; print('loaded:' + ','.join(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(filter(None, done.stdout.strip().splitlines()[-1].removeprefix("loaded:").split(",")))


def test_importing_the_package_loads_no_torch():
    assert _loaded_after("import szoq_hub; szoq_hub.__version__; szoq_hub.SzoqError; szoq_hub.DEFAULT_MODEL") == set()
    assert "torch" in _loaded_after("from szoq_hub import SensitivityMask")  # a name is imported on first use


@pytest.mark.parametrize("argv", ["--version", "--help", "finetune --help", "eval --help", "merge --help", "export peft --help", "mask build --help"])
def test_szoq_version_and_help_load_no_torch(argv):
    # `szoq finetune`'s options come from FinetuneConfig's fields: its module and theirs stay torch-free
    assert _loaded_after(f"import sys; sys.argv = ['szoq', *{argv.split()!r}]\nfrom szoq_cli.app import main\ntry:\n    main()\nexcept SystemExit:\n    pass") == set()


def test_every_public_name_resolves_to_the_module_that_defines_it():
    import ast

    import szoq_hub

    for name in szoq_hub.__all__:
        value = getattr(szoq_hub, name)
        if callable(value) and hasattr(value, "__module__") and name != "__version__":
            assert value.__module__ == f"szoq_hub{szoq_hub._EXPORTS[name]}", name
    from szoq_hub import finetune

    assert callable(finetune) and finetune.__module__ == "szoq_hub.training.finetune"  # the function, not the module
    import szoq_hub.training.finetune  # noqa: F401  (loading the submodule must not shadow the function)

    assert szoq_hub.finetune is finetune
    with pytest.raises(AttributeError, match="no_such_name"):
        szoq_hub.no_such_name  # noqa: B018
    # what IDEs read (the TYPE_CHECKING imports) is exactly what __getattr__ serves
    tree = ast.parse((REPO / "szoq_hub" / "__init__.py").read_text())
    block = next(n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.name: "." + "." * (imp.level - 1) + imp.module for imp in block.body for a in imp.names}
    assert seen == szoq_hub._EXPORTS


def test_hub_methods_are_defined_on_the_classes():
    """`from_pretrained` / `save_pretrained` / `push_to_hub` come from the class (HubMixin), not set at import."""
    import pydoc

    from szoq_hub import Delta, SensitivityMask
    from szoq_hub.hub.mixin import HubMixin

    for cls in (SensitivityMask, Delta):
        assert issubclass(cls, HubMixin)
        for method in ("from_pretrained", "save_pretrained", "push_to_hub"):
            assert method in vars(HubMixin) and getattr(cls, method).__qualname__ == f"HubMixin.{method}", (cls, method)
        assert {"_from_pretrained", "_save_pretrained", "_push_to_hub"} <= set(vars(cls)), cls
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        assert "push_to_hub(self, repo_id: 'str', *, tag: 'str | None' = None" in text and "from_pretrained(ref: 'str | Path'" in text
    assert "merge_into" in vars(Delta)


def test_mask_from_pretrained_takes_every_kind_of_ref(tiny_mask, tiny_model_dir):  # noqa: F811
    from szoq_hub import SensitivityMask

    by_path = SensitivityMask.from_pretrained(tiny_mask)
    assert by_path.path == tiny_mask and by_path.ref == str(tiny_mask) and by_path.nnz > 0
    ref = Registry().add(tiny_mask, "tiny").ref
    by_name = SensitivityMask.from_pretrained("tiny")
    assert by_name.ref == "tiny" and _same(by_name.indices, by_path.indices) and by_name.config == by_path.config
    builtin = SensitivityMask.from_pretrained("smollm2-135m-instruct")
    assert builtin.nnz == 106_020
    assert SensitivityMask.from_pretrained(ref, model=str(tiny_model_dir)).nnz == by_path.nnz
    with pytest.raises(FingerprintMismatch):
        SensitivityMask.from_pretrained("smollm2-135m-instruct", model=str(tiny_model_dir))


def test_mask_save_and_push_round_trip_through_the_hub(hub, tiny_mask, tmp_path, monkeypatch):  # noqa: F811
    from szoq_hub import SensitivityMask

    monkeypatch.setenv("HF_TOKEN", WRITE)
    mask = SensitivityMask.from_pretrained(tiny_mask)
    saved = mask.save_pretrained(tmp_path / "copy")
    assert (saved / "mask.safetensors").read_bytes() == (tiny_mask / "mask.safetensors").read_bytes()
    with pytest.raises(MaskError):
        mask.save_pretrained(saved)  # never over an artifact

    Registry().add(tiny_mask, "tiny")
    repo = repo_name()
    pushed = SensitivityMask.from_pretrained("tiny@v1").push_to_hub(repo)
    assert pushed.status == "pushed" and pushed.tag == "v1"  # a registry entry: its version is the tag
    assert Registry().get("tiny@v1").hub["repo_id"] == repo
    pulled = SensitivityMask.from_pretrained(f"{repo}@v1")  # a Hub ref: pulled, verified, registered
    assert _same(pulled.indices, mask.indices) and pulled.config.fingerprint == mask.config.fingerprint and pulled.path != tiny_mask

    built = SensitivityMask(dict(mask.indices), mask.config, scores=mask.scores)  # in memory: no ref, no folder
    again = built.push_to_hub(repo, tag="v1")
    assert again.status == "unchanged"  # the same bytes as v1: nothing pushed


def test_delta_api_round_trip_and_merge_into_equals_szoq_merge(hub, tiny_model_dir, tiny_mask, run_dir, tmp_path, monkeypatch, run_cli):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from szoq_hub import Delta, SensitivityMask, load_sparse_model

    monkeypatch.setenv("HF_TOKEN", WRITE)
    shifted = other_run(run_dir, tmp_path / "shifted", shift=0.05)
    delta = Delta.from_pretrained(shifted)
    assert delta.path == shifted and set(delta.tensors) == set(SensitivityMask.from_pretrained(tiny_mask).indices)

    copy = delta.save_pretrained(tmp_path / "copy")
    assert {p.name for p in copy.iterdir()} >= {"delta.safetensors", "finetune_config.json", "metrics.jsonl"}
    assert _same(Delta.from_pretrained(copy).tensors, delta.tensors) and Delta.from_pretrained(copy).meta == delta.meta

    repo = repo_name()
    pushed = delta.push_to_hub(repo)
    assert pushed.status == "pushed" and pushed.tag == "v1"
    from_hub = Delta.from_pretrained(f"{repo}@v1")
    assert _same(from_hub.tensors, delta.tensors)

    # merge_into a transformers model == the folder `szoq merge` writes (the mask comes from the delta's settings)
    code, _, err = run_cli("merge", "--model", tiny_model_dir, "--mask", tiny_mask, "--delta", shifted, "--out", tmp_path / "merged")
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert from_hub.merge_into(model, SensitivityMask.from_pretrained(tiny_mask)) is model
    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).named_parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(torch.equal(p, merged[n]) for n, p in model.named_parameters())

    # ... and into a sparse model: its value vector becomes the delta
    mask = SensitivityMask.from_pretrained(tiny_mask)
    sparse = load_sparse_model(str(tiny_model_dir), mask, quant="none")
    delta.merge_into(sparse)
    assert torch.equal(sparse.values, torch.cat([delta.tensors[n] for n, _, _ in sparse.segments]))


def test_merge_into_refuses_another_mask(tiny_model_dir, tiny_mask, run_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from szoq_hub import Delta
    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from szoq_hub.methods.sparse.delta import save_delta

    delta = Delta.from_pretrained(run_dir)
    other, _ = build_mask(MaskBuildConfig(model=str(tiny_model_dir), scorer="random", density=0.01), tmp_path / "random-mask")
    assert other.nnz == sum(t.numel() for t in delta.tensors.values())  # a random mask of the same size
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FingerprintMismatch):
        delta.merge_into(model, other)  # same names and sizes, other positions: values would land wrong
    with pytest.raises(FingerprintMismatch):
        delta.merge_into(model, type(other)(other.indices, other.config))  # in memory, no folder: hashed as written
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # refused before writing anything
    right = load_mask(tiny_mask)
    delta.merge_into(model, type(right)(right.indices, right.config, scores=right.scores))  # the right mask (scores too), in memory: its bytes hash the same
    assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # the mask a delta names: a registry name is resolved (and must be the same file); a local folder is recorded
    # by its name only, so it must be passed
    Registry().add(tmp_path / "random-mask", "other-mask")
    named = {}
    for name, ref in (("registry", "other-mask"), ("folder", tmp_path / "random-mask")):
        named[name] = tmp_path / name
        named[name].mkdir()
        save_delta(named[name], delta.tensors, mask_sha256=delta.mask_sha256, fingerprint=delta.fingerprint,
                   base_model=delta.meta["base_model"], settings={**delta.settings, "mask": str(ref)})
    with pytest.raises(FingerprintMismatch):
        Delta.from_pretrained(named["registry"]).merge_into(model)
    with pytest.raises(MaskError, match="names its mask 'random-mask'") as info:
        Delta.from_pretrained(named["folder"]).merge_into(model)
    assert "pass mask=" in info.value.hint and str(tmp_path) not in str(info.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # refused before writing anything


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its <!-- api-example --> python block"
    return block.group(1)


@pytest.mark.slow
def test_readme_api_example_runs(real_model_available, tmp_path, monkeypatch, capsys):
    if not (SHARED_DATA / "sst2").exists() or not (SHARED_DATA / "c4").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SZOQ_DATA_DIR", str(SHARED_DATA))
    exec(compile(_readme_example(), "README.md:api-example", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "106,020 sensitive weights" in printed
    assert "torch.Size([106020])" in printed
    assert (tmp_path / "api-demo" / "run" / "delta.safetensors").is_file()
    assert (tmp_path / "api-demo" / "mask" / "mask.safetensors").is_file()


def test_readme_example_is_the_api():
    """The README block only uses names the package exports (a fast guard for the slow run above)."""
    code = _readme_example()
    imported = re.findall(r"from szoq_hub import ([\w, ]+)", code)
    assert imported
    import szoq_hub

    for name in ", ".join(imported).split(", "):
        assert name.strip() in szoq_hub.__all__, name
    compile(code, "README.md:api-example", "exec")
