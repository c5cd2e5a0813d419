"""`szoq mask push / pull / info / search` through the real entry point, against the loopback Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from szoq_hub.masks.registry import Registry
from test_hub import BOB, READ, WRITE, make_mask, register, repo_name

SECRET = WRITE



def test_push_pull_info_search_and_the_token_never_shows(hub, run_cli, tmp_path, monkeypatch, isolated_state):
    repo = repo_name()
    ref = register(tmp_path, name="team-mask")
    code, out, err = run_cli("mask", "push", ref, "--repo", repo, "--token", SECRET)
    assert code == 0, err
    url, commit, tag = out.strip().split("\t")
    assert url.endswith(repo) and len(commit) == 40 and tag == "v1"
    assert f"szoq finetune --mask {repo}@v1" in " ".join(err.split())
    logs = [out, err]

    code, out, err = run_cli("mask", "push", ref, "--repo", repo, "--token", SECRET)
    assert code == 0 and "unchanged" in err and "nothing pushed" in " ".join(err.split())
    logs += [out, err]

    monkeypatch.setenv("HF_TOKEN", SECRET)  # the client's own token lookup
    code, out, err = run_cli("mask", "push", register(tmp_path, name="team-mask", seed=5), "--repo", repo, "--json")
    assert code == 0, err
    assert json.loads(out)["tag"] == "v2" and json.loads(out)["status"] == "pushed"
    logs += [out, err]
    monkeypatch.delenv("HF_TOKEN")

    code, out, err = run_cli("mask", "pull", f"{repo}@v1", "--name", "mine", "--json")
    assert code == 0, err
    pulled = json.loads(out)
    assert pulled["ref"] == "mine@v1" and pulled["commit"] == commit
    logs += [out, err]

    code, out, err = run_cli("mask", "info", f"{repo}@v2", "--json")
    assert code == 0, err
    assert json.loads(out)["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    code, out, err = run_cli("mask", "info", f"{repo}@v1")
    assert code == 0 and "HuggingFaceTB/SmolLM2-135M" in out and commit in out
    logs += [out, err]

    code, out, err = run_cli("mask", "search", "--author", "team", "--base-model", "HuggingFaceTB/SmolLM2-135M", "--json")
    assert code == 0 and repo in [r["repo_id"] for r in json.loads(out)]
    code, out, err = run_cli("mask", "search", "--author", "team")  # the table may truncate long ids
    assert code == 0 and "HuggingFaceTB/" in out and "mask repo(s)" in err
    logs += [out, err]

    code, out, err = run_cli("mask", "show", f"{repo}@v2")  # any REF accepts ORG/NAME[@REV]
    assert code == 0 and "HuggingFaceTB/SmolLM2-135M" in out

    assert all(SECRET not in text for text in logs)
    written = [p for root in (isolated_state, Path(os.environ["HF_HOME"])) for p in root.rglob("*") if p.is_file()]
    assert written and all(SECRET.encode() not in p.read_bytes() for p in written)


def test_help_has_an_example_everywhere(run_cli):
    for cmd in ("push", "pull", "info", "search"):
        code, out, _ = run_cli("mask", cmd, "--help")
        assert code == 0 and "Example: szoq mask" in out, cmd


def test_bad_input_is_one_line_plus_hint(hub, run_cli, tmp_path):
    repo = repo_name()
    ref = register(tmp_path, name="local")
    assert_one_line_error(*run_cli("mask", "push", "nope@v1", "--repo", repo, "--token", WRITE)[::2], "no mask 'nope@v1'")
    assert_one_line_error(*run_cli("mask", "push", ref, "--repo", "bad repo id", "--token", WRITE)[::2], "invalid Hub repo id")
    assert_one_line_error(*run_cli("mask", "push", ref, "--repo", repo)[::2], "no token or an invalid token")
    assert_one_line_error(*run_cli("mask", "push", ref, "--repo", repo, "--token", "hf_not_a_real_token")[::2], "no token or an invalid token")
    code, out, err = run_cli("mask", "push", ref, "--repo", repo, "--token", READ)
    assert_one_line_error(code, err, "read-only token")
    assert "hf_alice_read" not in out + err
    assert_one_line_error(*run_cli("mask", "push", ref, "--repo", repo, "--token", BOB)[::2], "not a member of team")
    assert repo not in hub.repos

    assert run_cli("mask", "push", ref, "--repo", repo, "--private", "--token", WRITE)[0] == 0
    assert_one_line_error(*run_cli("mask", "pull", repo)[::2], "not found", "private")
    assert_one_line_error(*run_cli("mask", "info", repo, "--token", BOB)[::2], "not found")
    assert_one_line_error(*run_cli("mask", "pull", "team/no-such-mask")[::2], "team/no-such-mask not found")
    assert_one_line_error(*run_cli("mask", "pull", f"{repo}@v7", "--token", WRITE)[::2], "revision 'v7' not found")
    code, _, err = run_cli("mask", "pull", f"{repo}@v1", "--offline")
    assert_one_line_error(code, err, "not in the local Hugging Face cache")
    assert f"hint: run once while online: szoq mask pull {repo}@v1" in err

    # a second mask under a taken tag, and a push that races another push
    other = register(tmp_path, name="local", seed=9)
    assert_one_line_error(*run_cli("mask", "push", other, "--repo", repo, "--tag", "v1", "--token", WRITE)[::2], "tag v1 already exists")
    hub.faults["commit_before_next"] = True
    before = Registry().index_path.read_bytes()
    assert_one_line_error(*run_cli("mask", "push", other, "--repo", repo, "--token", WRITE)[::2], "changed while pushing")
    assert Registry().index_path.read_bytes() == before

    # a repo that holds something else
    from huggingface_hub import HfApi

    foreign = repo_name()
    HfApi().create_repo(foreign, token=WRITE)
    HfApi().upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=foreign, token=WRITE)
    assert_one_line_error(*run_cli("mask", "pull", foreign)[::2], "not a szoq mask repo")
    assert_one_line_error(*run_cli("mask", "info", foreign)[::2], "not a szoq mask repo")


def test_hub_mask_for_another_base_model_is_refused(hub, run_cli, tmp_path, tiny_model_dir):
    repo = repo_name()
    folder = make_mask(tmp_path / "m", base_model="meta-llama/Llama-3.2-1B")
    assert run_cli("mask", "push", str(folder), "--repo", repo, "--tag", "v1", "--token", WRITE)[0] == 0
    code, _, err = run_cli("mask", "verify", f"{repo}@v1", "--model", tiny_model_dir)
    assert_one_line_error(code, err, "mask was built for meta-llama/Llama-3.2-1B")
