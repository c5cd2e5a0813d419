"""Hub sharing against the loopback Hub server (tests/hub_server.py) with the real client.

Every test creates uniquely named repos; tokens are the ones conftest registers on the server.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from szoq_hub.core.errors import ConfigError, HubError, MaskError, RegistryError
from szoq_hub.masks.artifact import CARD_FILE, CONFIG_FILE, MASK_FILE, MaskConfig, mask_stats, save_mask
from szoq_hub import SensitivityMask
from szoq_hub.masks.registry import Registry

WRITE = "hf_alice_write_0123456789"  # alice, member of org "team", write
READ = "hf_alice_read_0123456789"  # alice, read-only
BOB = "hf_bob_write_0123456789"  # bob, not a member of "team"
SHAPES = {"model.layers.0.mlp.up_proj.weight": [128, 64], "model.layers.0.self_attn.q_proj.weight": [64, 64]}
_counter = itertools.count()



def repo_name(prefix: str = "team") -> str:
    return f"{prefix}/mask-{os.getpid()}-{next(_counter)}"


def make_mask(folder: Path, *, seed: int = 0, base_model: str = "HuggingFaceTB/SmolLM2-135M", scorer: str = "fisher", density: float = 0.05,
              scores: bool = False) -> Path:
    """A real artifact folder written by szoq's own writer (random indices, tiny shapes; with `scores`, random ones too)."""
    g = torch.Generator().manual_seed(seed)
    indices = {n: torch.randperm(s[0] * s[1], generator=g)[: int(s[0] * s[1] * density)].sort().values.to(torch.int32) for n, s in SHAPES.items()}
    config = MaskConfig(base_model=base_model, base_revision=None, fingerprint=hashlib.sha256(base_model.encode()).hexdigest(),
                        density=density, scope="per-matrix", scorer=scorer, shapes=SHAPES,
                        calibration={"source": "c4", "samples": 4, "seq_len": 16, "seed": seed},
                        command=f"szoq mask build {base_model} --seed {seed}", created_at="2026-01-01T00:00:00+00:00")
    config.stats = mask_stats(indices, SHAPES)
    kept = {n: torch.rand(i.numel(), generator=g) for n, i in indices.items()} if scores else None
    return save_mask(SensitivityMask(indices, config, scores=kept), folder)


def register(tmp_path: Path, name: str = "m", **kw) -> str:
    folder = make_mask(tmp_path / f"art-{next(_counter)}", **kw)
    return Registry().add(folder, name).ref


def artifact_bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in (MASK_FILE, CONFIG_FILE) if (folder / f).exists()}


# -- round trips -----------------------------------------------------------------------------
def test_push_then_pull_by_tag_branch_and_sha_is_byte_equal(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    ref = register(tmp_path)
    local = Registry().get(ref)
    repo = repo_name()
    res = push_mask(ref, repo_id=repo, token=WRITE)
    assert res.status == "pushed" and res.tag == "v1" and len(res.commit) == 40
    assert Registry().get(ref).hub["commit"] == res.commit and Registry().get(ref).hub["repo_id"] == repo

    for rev, expected_version in (("v1", "v1"), ("main", "v1"), (res.commit, "v1"), (res.commit[:7], "v1")):
        pulled = pull_mask(repo, revision=rev, name=f"p{next(_counter)}")
        assert pulled.commit == res.commit
        assert pulled.ref.endswith("@" + expected_version)
        assert artifact_bytes(pulled.path) == artifact_bytes(local.path)
        assert Registry().get(pulled.ref).hub["commit"] == res.commit
    card = hub.repos[repo].commits[res.commit].files[CARD_FILE].decode()
    assert "library_name: szoq" in card and "base_model: HuggingFaceTB/SmolLM2-135M" in card
    assert f"--mask {repo}@v1" in card and "szoq mask build" in card
    for tag in ("szoq", "sensitivity-mask", "zeroth-order"):
        assert f"- {tag}" in card


def test_untagged_commit_registers_under_short_sha(hub, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    res = push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    HfApi().delete_tag(repo, tag="v1", token=WRITE)
    pulled = pull_mask(repo, name="untagged")
    assert pulled.ref == f"untagged@{res.commit[:7]}" and pulled.tag is None


def test_pushing_twice_is_a_noop(hub, tmp_path):
    from szoq_hub.hub.masks import push_mask

    ref, repo = register(tmp_path), repo_name()
    first = push_mask(ref, repo_id=repo, token=WRITE)
    commits_before = len(hub.repos[repo].commits)
    again = push_mask(ref, repo_id=repo, token=WRITE)
    assert again.noop and again.status == "unchanged" and again.commit == first.commit
    assert len(hub.repos[repo].commits) == commits_before


def test_push_v1_then_v2_then_pull_v1_gives_v1(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    v1 = register(tmp_path, seed=1)
    v2 = register(tmp_path, seed=2)
    assert (v1, v2) == ("m@v1", "m@v2")
    c1 = push_mask(v1, repo_id=repo, token=WRITE).commit
    c2 = push_mask(v2, repo_id=repo, token=WRITE).commit
    assert c1 != c2 and hub.repos[repo].tags == {"v1": c1, "v2": c2}
    assert hub.repos[repo].commits[c2].parent == c1
    got = pull_mask(repo, revision="v1", name="teammate")
    assert got.ref == "teammate@v1" and got.commit == c1
    assert artifact_bytes(got.path) == artifact_bytes(Registry().get(v1).path)
    other = repo_name()  # another repo's v1 under the same local name is refused, with a way out
    push_mask(register(tmp_path, name="other", seed=3), repo_id=other, token=WRITE)
    with pytest.raises(RegistryError, match="already exists with other content") as info:
        pull_mask(other, revision="v1", name="teammate")
    assert f"szoq mask pull {other}@v1 --name" in info.value.hint
    latest = pull_mask(repo, name="teammate")
    assert latest.ref == "teammate@v2" and artifact_bytes(latest.path) == artifact_bytes(Registry().get(v2).path)
    # re-pushing v1 (already tagged) changes nothing; a different mask under a taken tag is refused
    assert push_mask(v1, repo_id=repo, token=WRITE).noop
    with pytest.raises(HubError, match="tag v1 already exists"):
        push_mask(v2, repo_id=repo, tag="v1", token=WRITE)


def test_pushed_card_is_valid_hub_metadata(hub, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    push_mask(register(tmp_path, scorer="magnitude", density=0.02), repo_id=repo, token=WRITE)
    info = HfApi().model_info(repo)
    assert info.library_name == "szoq"
    assert {"szoq", "sensitivity-mask", "zeroth-order", "base_model:HuggingFaceTB/SmolLM2-135M"} <= set(info.tags)
    assert info.card_data.to_dict()["szoq"]["scorer"] == "magnitude"
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", CARD_FILE, MASK_FILE, CONFIG_FILE]


def test_create_pr_leaves_main_alone(hub, tmp_path):
    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    push_mask(register(tmp_path, seed=1), repo_id=repo, token=WRITE)
    main_before = hub.repos[repo].branches["main"]
    res = push_mask(register(tmp_path, seed=2), repo_id=repo, token=WRITE, create_pr=True)
    assert res.status == "pull-request" and res.pr_url.endswith("/discussions/1") and res.tag is None
    assert hub.repos[repo].branches["main"] == main_before and hub.repos[repo].prs[1] == res.commit


# -- auth and private repos ------------------------------------------------------------------
def test_write_needs_a_valid_write_token(hub, tmp_path):
    from szoq_hub.hub.masks import push_mask

    ref = register(tmp_path)
    for token, status, needle in ((None, 401, "no token or an invalid token"), ("hf_wrong_token", 401, "no token or an invalid token"),
                                  (READ, 403, "read-only token"), (BOB, 403, "not a member of team")):
        repo = repo_name()
        hub.served.clear()
        with pytest.raises(HubError, match=needle) as info:
            push_mask(ref, repo_id=repo, token=token if token else False)
        assert status in [r["status"] for r in hub.served if r["path"] == "/api/repos/create"]
        assert repo not in hub.repos
        assert token is None or token not in str(info.value) + str(info.value.hint)
    assert Registry().get(ref).hub is None  # nothing recorded locally


def test_private_repo_is_invisible_without_access(hub, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import mask_info, pull_mask, push_mask

    repo = repo_name()
    push_mask(register(tmp_path), repo_id=repo, private=True, token=WRITE)
    assert hub.repos[repo].private
    for token, status in ((False, 401), (BOB, 404)):  # the Hub answers 401 to anonymous callers
        hub.served.clear()
        with pytest.raises(HubError, match="not found .*private"):
            pull_mask(repo, token=token, name="x")
        assert hub.served[-1]["status"] == status
        with pytest.raises(HubError, match="not found"):
            mask_info(repo, token=token)
        assert repo not in [m.id for m in HfApi().list_models(author="team", token=token)]
    assert Registry().find("x") is None
    got = pull_mask(repo, token=READ, name="x")  # a read token of a member sees it
    assert got.ref == "x@v1"
    assert repo in [m.id for m in HfApi().list_models(author="team", token=READ)]


def test_anonymous_read_of_public_repo(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    assert pull_mask(repo, token=False, name="anon").ref == "anon@v1"


# -- faults ----------------------------------------------------------------------------------
def test_racing_push_is_refused_and_local_state_unchanged(hub, tmp_path):
    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    push_mask(register(tmp_path, seed=1), repo_id=repo, token=WRITE)
    ref2 = register(tmp_path, seed=2)
    index_before = Registry().index_path.read_bytes()
    hub.faults["commit_before_next"] = True  # another client commits to main first
    with pytest.raises(HubError, match="changed while pushing") as info:
        push_mask(ref2, repo_id=repo, token=WRITE)
    assert "push again" in info.value.hint
    assert hub.served[-1]["status"] == 412
    assert Registry().index_path.read_bytes() == index_before
    assert set(hub.repos[repo].tags) == {"v1"}
    head = hub.repos[repo].commits[hub.repos[repo].branches["main"]]
    assert head.title == "a concurrent commit"  # their commit survived, ours did not land
    assert push_mask(ref2, repo_id=repo, token=WRITE).status == "pushed"  # retry after refresh works


def test_offline_pull_from_cache(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    res = push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    online = pull_mask(repo, revision="v1", name="team-mask")
    Registry().remove("team-mask")
    hub.served.clear()
    offline = pull_mask(repo, revision="v1", name="team-mask", offline=True)
    assert hub.served == []  # not a single request
    assert offline.from_cache and offline.commit == res.commit and offline.ref == "team-mask@v1"
    assert artifact_bytes(offline.path) == artifact_bytes(online.path)
    # never pulled at this revision: a clear error that names the command to run online
    with pytest.raises(HubError, match="not in the local Hugging Face cache") as info:
        pull_mask(repo, revision="v9", offline=True)
    assert f"szoq mask pull {repo}@v9" in info.value.hint


def test_cut_off_download_registers_nothing_and_retry_succeeds(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    before = [e.ref for e in Registry().entries()]
    hub.faults["cut"] = MASK_FILE
    with pytest.raises(HubError, match="connection to the Hub broke"):
        pull_mask(repo, name="cut")
    assert any(r["path"].endswith(MASK_FILE) and r["method"] == "GET" and r["bytes"] for r in hub.served)
    assert [e.ref for e in Registry().entries()] == before and Registry().find("cut") is None
    hub.faults.clear()
    assert pull_mask(repo, name="cut").ref == "cut@v1"


def test_corrupt_download_is_refused_and_removed_from_cache(hub, tmp_path):
    from szoq_hub.hub.masks import pull_mask, push_mask

    repo = repo_name()
    push_mask(register(tmp_path), repo_id=repo, token=WRITE)
    hub.faults["corrupt"] = MASK_FILE
    with pytest.raises(HubError, match="does not match the commit's hash"):
        pull_mask(repo, name="bad")
    assert Registry().find("bad") is None
    hub.faults.clear()
    assert pull_mask(repo, name="bad").ref == "bad@v1"


def test_repo_that_is_not_a_mask(hub, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import mask_info, pull_mask

    repo = repo_name()
    api = HfApi()
    api.create_repo(repo, token=WRITE)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo, token=WRITE)
    with pytest.raises(HubError, match="not a szoq mask repo"):
        pull_mask(repo)
    api.upload_file(path_or_fileobj=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", path_in_repo=MASK_FILE, repo_id=repo, token=WRITE)
    with pytest.raises(HubError, match="not a szoq mask"):
        mask_info(repo)
    with pytest.raises(MaskError, match="not a szoq mask"):
        pull_mask(repo)
    with pytest.raises(HubError, match="revision 'nope' not found"):
        pull_mask(repo, revision="nope")
    with pytest.raises(HubError, match="not found"):
        pull_mask("team/does-not-exist")
    with pytest.raises(ConfigError, match="invalid Hub repo id"):
        pull_mask("not a repo/x y")


# -- info and search -------------------------------------------------------------------------
def test_info_reads_only_the_header(hub, tmp_path):
    from szoq_hub.hub.masks import mask_info, push_mask

    repo = repo_name()
    ref = register(tmp_path, density=0.2)
    res = push_mask(ref, repo_id=repo, token=WRITE)
    size = (Registry().get(ref).path / MASK_FILE).stat().st_size
    hub.served.clear()
    info = mask_info(repo, revision="v1")
    assert info.commit == res.commit and info.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert info.density == 0.2 and info.scorer == "fisher" and info.calibration["samples"] == 4
    assert info.nnz == sum(int(s[0] * s[1] * 0.2) for s in SHAPES.values()) and info.file_size == size
    downloads = [r for r in hub.served if r["path"].endswith(MASK_FILE)]
    assert downloads and all(r["range"] and r["status"] == 206 for r in downloads)
    served = sum(r["bytes"] for r in downloads)
    assert served == info.bytes_read and served < size / 4, (served, size)


def test_a_mask_with_scores_travels_whole_and_its_info_counts_weights_only(hub, tmp_path):
    from szoq_hub.hub.masks import mask_info, pull_mask, push_mask

    repo = repo_name()
    ref = register(tmp_path, density=0.2, scores=True)
    push_mask(ref, repo_id=repo, token=WRITE)
    info = mask_info(repo)
    assert info.nnz == sum(int(s[0] * s[1] * 0.2) for s in SHAPES.values()) and info.tensors == len(SHAPES)
    assert info.metadata["format_version"] == "2"
    got = pull_mask(repo, name="scored")
    local = Registry().get(ref)
    from szoq_hub.masks.artifact import load_mask

    mine, theirs = load_mask(local.path), load_mask(got.path)
    assert all(torch.equal(mine.scores[n], theirs.scores[n]) for n in SHAPES)


def test_search_filters_by_tag_base_model_and_author(hub, tmp_path):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import push_mask, search_masks

    org = f"team"
    a, b = repo_name(), repo_name()
    other = repo_name("bob")
    push_mask(register(tmp_path, name="a", base_model="HuggingFaceTB/SmolLM2-135M", scorer="fisher"), repo_id=a, token=WRITE)
    push_mask(register(tmp_path, name="b", base_model="meta-llama/Llama-3.2-1B", scorer="random", density=0.01), repo_id=b, token=WRITE)
    push_mask(register(tmp_path, name="c", base_model="meta-llama/Llama-3.2-1B"), repo_id=other, token=BOB)
    HfApi().create_repo(repo_name(), token=WRITE)  # an unrelated repo is never listed

    found = {m.repo_id: m for m in search_masks(author=org)}
    assert a in found and b in found and other not in found
    assert all(m.repo_id.startswith("team/") for m in found.values())
    assert (found[b].scorer, found[b].density, found[b].base_model) == ("random", 0.01, "meta-llama/Llama-3.2-1B")
    llama = {m.repo_id for m in search_masks(base_model="meta-llama/Llama-3.2-1B")}
    assert b in llama and other in llama and a not in llama
    assert {m.repo_id for m in search_masks(base_model="meta-llama/Llama-3.2-1B", author="bob")} >= {other}
    assert a not in {m.repo_id for m in search_masks(author="bob")}


# -- the stock tools read what szoq pushes ---------------------------------------------------
def test_stock_tools_download_and_plain_safetensors_loads(hub, tmp_path):
    from huggingface_hub import snapshot_download
    from safetensors import safe_open

    from szoq_hub.hub.masks import push_mask

    repo = repo_name()
    ref = register(tmp_path)
    push_mask(ref, repo_id=repo, token=WRITE)
    local = Registry().get(ref).path

    snap = Path(snapshot_download(repo, revision="v1", local_dir=tmp_path / "snap"))
    env = dict(os.environ)
    hf = Path(sys.executable).parent / "hf"
    out = subprocess.run([str(hf), "download", repo, MASK_FILE, "--revision", "v1", "--local-dir", str(tmp_path / "cli")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for folder in (snap, tmp_path / "cli"):
        assert (folder / MASK_FILE).read_bytes() == (local / MASK_FILE).read_bytes()
        with safe_open(str(folder / MASK_FILE), framework="pt") as fh:
            assert fh.metadata()["format"] == "szoq.mask"
            assert set(fh.keys()) == set(SHAPES)
            assert fh.get_tensor(next(iter(SHAPES))).dtype == torch.int32


def test_refs_resolve_hub_masks_on_demand(hub, tmp_path):
    from szoq_hub.hub.masks import push_mask
    from szoq_hub.hub.refs import open_mask

    repo = repo_name()
    ref = register(tmp_path)
    push_mask(ref, repo_id=repo, token=WRITE)
    mask = open_mask(f"{repo}@v1")
    assert mask.config.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert Registry().find(f"{repo.split('/')[1]}@v1") is not None


def test_real_built_mask_round_trip(hub, tmp_path, tiny_model_dir, tiny_text_file):
    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from szoq_hub.hub.masks import pull_mask, push_mask

    _, folder = build_mask(MaskBuildConfig(model=str(tiny_model_dir), calibration=str(tiny_text_file), samples=4, seq_len=16, scorer="magnitude"), tmp_path / "built")
    ref = Registry().add(folder, "tiny").ref
    repo = repo_name()
    push_mask(ref, repo_id=repo, token=WRITE)
    got = pull_mask(repo, revision="v1", name="tiny-copy")
    assert artifact_bytes(got.path) == artifact_bytes(Registry().get(ref).path)
