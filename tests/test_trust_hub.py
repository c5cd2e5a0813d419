"""Issue 21 and 22 against the loopback Hub: a server that echoes the token, Range answers of
unknown length, files corrupted in transit (evicted whole, so a retry works), hostile cards,
a read-only token on push, and refs that look like paths never reaching the Hub."""

from __future__ import annotations

import logging

import pytest

from conftest import assert_one_line_error
from szoq_hub.core.errors import HubError
from szoq_hub.hub.scrub import REDACTED, remember, scrub
from szoq_hub.masks.registry import Registry
from test_hub import READ, WRITE, register, repo_name

# A token of a shape the pattern rules do not know: only "the token in use" can catch it.
ODD = "sk-live-0123456789abcdef"


def pushed(hub, tmp_path) -> str:
    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    return repo


def test_scrub_removes_the_token_in_use_bearer_and_hf_shapes():
    remember(ODD)
    text = scrub(f"boom Bearer abc.def-ghi, key {ODD} and hf_SECRETsecret123 end")
    assert ODD not in text and "abc.def-ghi" not in text and "hf_SECRET" not in text
    assert text.count(REDACTED) == 3 and text.startswith("boom Bearer ") and text.endswith(" end")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("how", ["env", "flag"])
@pytest.mark.parametrize("command", ["pull", "info", "search", "push"])
def test_a_server_that_echoes_the_token_never_gets_it_printed(command, how, debug, hub, tmp_path, run_cli, monkeypatch, caplog):
    repo = pushed(hub, tmp_path)
    ref = register(tmp_path, "other", seed=3)
    monkeypatch.setenv("SZOQ_DEBUG", "")  # restored after the test: --debug sets it
    args = {"pull": ["mask", "pull", f"{repo}@v1"], "info": ["mask", "info", repo], "search": ["mask", "search", "--author", "team"],
            "push": ["mask", "push", ref, "--repo", repo_name()]}[command]
    if how == "env":
        monkeypatch.setenv("HF_TOKEN", WRITE)
    else:
        args += ["--token", WRITE]
    hub.faults["echo_auth"] = True
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli(*(["--debug"] if debug else []), *args)
    hub.faults.clear()
    text = out + err + caplog.text
    assert code != 0
    assert "boom" in text  # the server's words are shown ...
    assert WRITE not in text and "alice_write" not in text  # ... without the token
    if not debug:
        assert_one_line_error(code, err)
    else:
        assert "Traceback" in err


def test_info_reads_a_range_answer_of_unknown_length(hub, tmp_path, run_cli):
    from szoq_hub.hub.masks import mask_info

    repo = pushed(hub, tmp_path)
    hub.faults["unknown_length"] = True
    info = mask_info(repo)
    assert info.file_size is None and info.nnz > 0
    code, out, err = run_cli("mask", "info", repo)
    assert code == 0, err


@pytest.mark.parametrize("fname", ["mask_config.json", "README.md", "mask.safetensors"])
def test_a_file_corrupted_in_transit_is_evicted_whole_and_a_retry_works(fname, hub, tmp_path, run_cli):
    repo = pushed(hub, tmp_path)
    hub.faults["corrupt"] = fname
    code, _, err = run_cli("mask", "pull", f"{repo}@v1", "--name", "got")
    assert_one_line_error(code, err, fname, "does not match")
    assert "szoq-pull" not in err  # names the repo, never a temp folder that is gone
    assert Registry().find("got") is None
    hub.faults.clear()
    code, out, err = run_cli("mask", "pull", f"{repo}@v1", "--name", "got")
    assert code == 0, err
    assert Registry().get("got@v1")


def _replace_card(hub, repo: str, card: bytes) -> None:
    with hub.lock:
        r = hub.repos[repo]
        head = r.branches["main"]
        files = dict(r.commits[head].files)
        files["README.md"] = card
        r.branches["main"] = hub.commit(r, head, files, "a stranger's card").sha


@pytest.mark.parametrize("card", [b"x" * 30_000_000, b"---\nbase_model: a\n---\n\xff\xfe not text"])
def test_a_huge_or_binary_card_is_refused_and_nothing_is_registered(card, hub, tmp_path, run_cli):
    repo = pushed(hub, tmp_path)
    _replace_card(hub, repo, card)
    code, _, err = run_cli("mask", "pull", repo, "--name", "card")
    assert_one_line_error(code, err, "README.md")
    assert Registry().find("card") is None


@pytest.mark.parametrize("status", [401, 403])
def test_a_read_only_token_on_push_says_it_cannot_write(status, hub, tmp_path, run_cli):
    ref = register(tmp_path)
    hub.read_only_status = status
    try:
        code, out, err = run_cli("mask", "push", ref, "--repo", repo_name(), "--token", READ)
    finally:
        hub.read_only_status = 403
    assert_one_line_error(code, err, "read-only token")
    assert "invalid token" not in err and READ not in out + err


@pytest.mark.parametrize("ref", ["runs/sst2-random", "./runs/sst2-random", "../runs/sst2-random"])
def test_a_ref_that_looks_like_a_path_never_goes_to_the_hub(ref, hub, tmp_path, run_cli, monkeypatch):
    from szoq_hub.hub.transport import is_hub_ref

    (tmp_path / "work" / "runs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    hub.served.clear()
    assert not is_hub_ref(ref)
    code, _, err = run_cli("plot", ref, "--out", tmp_path / "p.png")
    assert_one_line_error(code, err, "no local folder")
    code, _, err = run_cli("mask", "show", ref.replace("runs/", "runs/mask-"))  # a mask ref likewise
    assert_one_line_error(code, err, "no local folder")
    assert hub.served == []  # not one request
    assert is_hub_ref("team/some-repo")  # a repo id whose first part is no local folder still is one


def test_a_hub_error_message_is_scrubbed_in_the_library_too(hub, tmp_path, monkeypatch):
    from szoq_hub.hub.masks import pull_mask

    repo = pushed(hub, tmp_path)
    hub.faults["echo_auth"] = True
    with pytest.raises(HubError) as info:
        pull_mask(repo, token=ODD)
    assert "boom" in info.value.message and ODD not in info.value.message
