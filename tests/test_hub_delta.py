"""`szoq delta push / pull` and Hub refs for `--delta`, against the loopback Hub with the real client.

The delta comes from a real (tiny) `szoq finetune` run, made once per session (conftest `run_dir`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TRAIN_ARGS, assert_one_line_error, other_run
from szoq_hub.methods.sparse.config import DELTA_FILE
from szoq_hub.methods.sparse.delta import load_delta
from szoq_hub.core.errors import HubError, MaskError
from test_hub import BOB, READ, WRITE, make_mask, repo_name

SECRET = WRITE



def test_push_pull_by_tag_and_sha_is_byte_equal_and_repush_is_a_noop(hub, run_dir, tmp_path):
    from szoq_hub.methods.sharing import pull_delta, push_delta

    repo = repo_name()
    res = push_delta(run_dir, repo_id=repo, token=WRITE)
    assert res.status == "pushed" and res.tag == "v1" and len(res.commit) == 40 and res.ref is None
    files = hub.repos[repo].commits[res.commit].files
    assert set(files) - {".gitattributes"} == {DELTA_FILE, "finetune_config.json", "metrics.jsonl", "README.md"}  # never checkpoints
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: szoq" in card and "- sparse-delta" in card
    assert f"--delta {repo}@v1" in card and "THIS_FOLDER" not in card
    assert "base_model:" not in card.split("\n---\n")[0]  # the tiny model is a local path, never a Hub link

    local = (run_dir / DELTA_FILE).read_bytes()
    for rev in ("v1", "main", res.commit, res.commit[:7]):
        got = pull_delta(repo, revision=rev)
        assert got.commit == res.commit and got.tag == "v1" and got.ref == f"{repo}@v1"
        assert (got.path / DELTA_FILE).read_bytes() == local
    got = pull_delta(repo, revision="v1", out=tmp_path / "pulled")
    assert got.path == tmp_path / "pulled" and (got.path / DELTA_FILE).read_bytes() == local
    assert load_delta(got.path).tensors.keys() == load_delta(run_dir).tensors.keys()

    commits = len(hub.repos[repo].commits)
    again = push_delta(run_dir, repo_id=repo, token=WRITE)
    assert again.status == "unchanged" and again.noop and again.tag == "v1" and again.commit == res.commit
    assert len(hub.repos[repo].commits) == commits

    v2 = push_delta(other_run(run_dir, tmp_path / "run2", base_model="HuggingFaceTB/SmolLM2-135M"), repo_id=repo, token=WRITE)
    assert v2.status == "pushed" and v2.tag == "v2"  # default tag: the next vN
    assert "base_model: HuggingFaceTB/SmolLM2-135M" in hub.repos[repo].commits[v2.commit].files["README.md"].decode()
    assert (pull_delta(repo, revision="v1").path / DELTA_FILE).read_bytes() == local
    assert push_delta(run_dir, repo_id=repo, token=WRITE).tag == "v1"  # v1's bytes are still v1: no-op
    with pytest.raises(HubError, match="tag v1 already exists .* holds another delta") as info:
        push_delta(tmp_path / "run2", repo_id=repo, tag="v1", token=WRITE)
    assert "--tag v3" in info.value.hint

    hub.served.clear()
    offline = pull_delta(repo, revision="v1", offline=True)
    assert hub.served == [] and offline.from_cache and (offline.path / DELTA_FILE).read_bytes() == local


def test_corrupt_or_foreign_remote_delta_is_refused(hub, run_dir, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.methods.sharing import pull_delta, push_delta
    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    push_delta(run_dir, repo_id=repo, token=WRITE)
    hub.faults["corrupt"] = DELTA_FILE  # bytes flipped in transit
    with pytest.raises(HubError, match="does not match the commit's hash"):
        pull_delta(repo, revision="v1")
    hub.faults.clear()
    assert (pull_delta(repo, revision="v1").path / DELTA_FILE).read_bytes() == (run_dir / DELTA_FILE).read_bytes()

    bad = repo_name()  # a published delta.safetensors that is not a szoq delta
    HfApi().create_repo(bad, token=WRITE)
    HfApi().upload_file(path_or_fileobj=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", path_in_repo=DELTA_FILE, repo_id=bad, token=WRITE)
    with pytest.raises(MaskError, match="not a szoq delta"):
        pull_delta(bad)

    mask_repo = repo_name()
    push_mask(str(make_mask(tmp_path / "m")), repo_id=mask_repo, tag="v1", token=WRITE)
    with pytest.raises(HubError, match="holds no delta.safetensors: it is not a szoq delta repo"):
        pull_delta(mask_repo)
    with pytest.raises(HubError, match="not in the local Hugging Face cache") as info:
        pull_delta(repo, revision="v9", offline=True)
    assert f"szoq delta pull {repo}@v9" in info.value.hint


def test_cli_push_pull_eval_merge_with_hub_ref_and_the_token_never_shows(hub, run_cli, run_dir, tiny_model_dir, tiny_mask, train_jsonl, tmp_path, isolated_state):  # noqa: F811
    repo = repo_name()
    code, out, err = run_cli("delta", "push", run_dir, "--repo", repo, "--token", SECRET)
    assert code == 0, err
    url, commit, tag = out.strip().split("\t")
    assert url.endswith(repo) and len(commit) == 40 and tag == "v1"
    assert f"szoq eval --delta {repo}@v1" in " ".join(err.split())
    logs = [out, err]
    code, out, err = run_cli("delta", "push", run_dir, "--repo", repo, "--token", SECRET, "--json")
    assert code == 0 and json.loads(out)["status"] == "unchanged" and json.loads(out)["noop"]
    logs += [out, err]
    code, out, err = run_cli("delta", "pull", f"{repo}@v1", "--out", tmp_path / "mine", "--json")
    assert code == 0, err
    assert json.loads(out)["commit"] == commit and (tmp_path / "mine" / DELTA_FILE).read_bytes() == (run_dir / DELTA_FILE).read_bytes()
    logs += [out, err]

    common = ["--model", tiny_model_dir, "--mask", tiny_mask, "--quant", "none"]
    evals = {}
    for delta in (run_dir, f"{repo}@v1", f"{repo}@{commit}"):
        code, out, err = run_cli("eval", *common, "--train", train_jsonl, *TRAIN_ARGS, "--eval-samples", "4", "--delta", delta, "--json")
        assert code == 0, err
        evals[str(delta)] = json.loads(out)["value"]
        assert json.loads(out)["mode"] == "delta"
    assert len(set(evals.values())) == 1, evals  # the Hub delta scores exactly like the local one
    code, out, err = run_cli("merge", *common[:4], "--delta", f"{repo}@v1", "--out", tmp_path / "merged")
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").exists()

    assert all(SECRET not in text for text in logs)
    written = [p for root in (isolated_state, Path(os.environ["HF_HOME"]), tmp_path) for p in root.rglob("*") if p.is_file()]
    assert written and all(SECRET.encode() not in p.read_bytes() for p in written)


def test_cli_bad_input_is_one_line_plus_hint(hub, run_cli, run_dir, tmp_path, tiny_model_dir, tiny_mask):  # noqa: F811
    repo = repo_name()
    mask_folder = make_mask(tmp_path / "a-mask")
    assert_one_line_error(*run_cli("delta", "push", mask_folder, "--repo", repo, "--token", WRITE)[::2], "not a szoq delta folder")
    assert_one_line_error(*run_cli("delta", "push", tmp_path / "nope", "--repo", repo, "--token", WRITE)[::2], "not found")
    assert_one_line_error(*run_cli("delta", "push", run_dir, "--repo", "bad repo id", "--token", WRITE)[::2], "invalid Hub repo id")
    assert_one_line_error(*run_cli("delta", "push", run_dir, "--repo", repo)[::2], "no token or an invalid token")
    code, out, err = run_cli("delta", "push", run_dir, "--repo", repo, "--token", READ)
    assert_one_line_error(code, err, "read-only token")
    assert READ not in out + err
    assert_one_line_error(*run_cli("delta", "push", run_dir, "--repo", repo, "--token", BOB)[::2], "not a member of team")
    assert repo not in hub.repos
    assert_one_line_error(*run_cli("delta", "pull", "team/no-such-delta")[::2], "team/no-such-delta not found")
    assert_one_line_error(*run_cli("merge", "--model", tiny_model_dir, "--mask", tiny_mask, "--delta", "runs/no-such-run",
                                   "--out", tmp_path / "m")[::2], "no local folder runs/no-such-run")
    assert not (tmp_path / "m").exists()


def test_help_has_an_example(run_cli):
    for cmd in ("push", "pull"):
        code, out, _ = run_cli("delta", cmd, "--help")
        assert code == 0 and f"Example: szoq delta {cmd}" in " ".join(out.split()), (cmd, out)
