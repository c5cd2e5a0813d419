"""Does the catalog command still build the built-in mask, index for index?

Runs the `command` of a `masks/catalog.json` entry (default: the default mask) through the
real CLI in a fresh process, with its `VAR=value` prefix (SOURCE_DATE_EPOCH), into a scratch
`--out` folder (the recorded recipe leaves `--out` out, so the bytes do not depend on it) and a
scratch registry. Compares the result with the shipped file: its content sha256 (the tensors'
bytes: the shipped file predates content hashes and keeps its pinned bytes, a rebuild records
the hash in its header, so the file sha256 differs by that one header key), its header less that
key, nnz, fingerprint and captured share, and the indices (how many differ, Jaccard). Exits 1
on a mismatch, so it can gate a release.

A benchmark rather than a slow test: the fisher build is 32 x 256 tokens of fp32
forward+backward on SmolLM2-135M (minutes on 2 shared cores), too long for CI.

Usage: python bench/bench_builtin_mask.py [--name smollm2-135m-instruct] [--runs 2]
           [--shared-data DIR]   (the folder the command's ../shared/data stands for)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "masks" / "catalog.json"


def catalog_entry(name: str | None) -> dict:
    masks = json.loads(CATALOG.read_text())["masks"]
    entry = next((m for m in masks if m["name"] == name), None) if name else next((m for m in masks if m.get("default")), masks[0])
    if entry is None:
        raise SystemExit(f"error: no mask {name!r} in {CATALOG}")
    return entry


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 szoq mask build ...` -> ({A: 1, B: 2}, [mask, build, ...])."""
    words = shlex.split(command)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[:3] != ["szoq", "mask", "build"]:
        raise SystemExit(f"error: the catalog command is not a `szoq mask build`: {command}")
    return env, words[1:]


def localize(args: list[str], out: Path, shared_data: Path) -> list[str]:
    """Point --out at `out` and the command's ../shared/data at `shared_data`."""
    result, i = [], 0
    while i < len(args):
        word = args[i]
        if word == "--out":
            result += ["--out", str(out)]
            i += 2
            continue
        if word.startswith("../shared/data/"):
            word = str(shared_data / word.removeprefix("../shared/data/"))
        result.append(word)
        i += 1
    return result


def indices(path: Path) -> dict[str, set[int]]:
    from safetensors.torch import load_file

    return {n: set(t.tolist()) for n, t in load_file(path).items()}


def compare(a: dict[str, set[int]], b: dict[str, set[int]]) -> dict:
    union = inter = 0
    differing = {}
    for n in sorted(set(a) | set(b)):
        x, y = a.get(n, set()), b.get(n, set())
        union += len(x | y)
        inter += len(x & y)
        if x != y:
            differing[n] = {"only_shipped": sorted(x - y), "only_rebuilt": sorted(y - x)}
    return {"indices_only_in_one": union - inter, "jaccard": inter / union if union else 1.0, "differing_tensors": differing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default=None, help="catalog entry (default: the default mask)")
    ap.add_argument("--runs", type=int, default=1, help="builds to run (2 also checks that rebuilds are byte-identical)")
    ap.add_argument("--shared-data", type=Path, default=Path(os.environ.get("SZOQ_SHARED_DATA", SHARED_DATA)))
    args = ap.parse_args()

    from safetensors.torch import load_file

    from szoq_hub.core.content import CONTENT_KEY, SCHEME_KEY, tensors_sha256
    from szoq_hub.core.files import file_sha256
    from szoq_hub.masks.artifact import MASK_FILE, load_mask, read_header

    entry = catalog_entry(args.name)
    env_prefix, build_args = split_command(entry["command"])
    shipped = CATALOG.parent / entry["path"] / MASK_FILE
    runs = []
    with tempfile.TemporaryDirectory(prefix="szoq-bench-builtin-") as tmp:
        env = {**os.environ, **env_prefix, "SZOQ_HOME": str(Path(tmp) / "home")}
        for r in range(args.runs):
            out = Path(tmp) / f"run{r}" / entry["path"]
            argv = [sys.executable, "-m", "szoq_cli", *localize(build_args, out, args.shared_data), "--json"]
            start = time.perf_counter()
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"error: the catalog command failed (exit {proc.returncode})")
            mask = load_mask(out)
            header = read_header(out / MASK_FILE)
            runs.append({"seconds": round(seconds, 1), "sha256": file_sha256(out / MASK_FILE), "nnz": mask.nnz,
                         "content_sha256": header.get(CONTENT_KEY), "tensors_sha256": tensors_sha256(load_file(str(out / MASK_FILE))),
                         "header_without_content_hash": {k: v for k, v in header.items() if k not in (CONTENT_KEY, SCHEME_KEY)},
                         "captured_share": mask.config.stats["captured_share"], "fingerprint": mask.config.fingerprint,
                         "command_recorded": mask.config.command, **compare(indices(shipped), indices(out / MASK_FILE))})
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    first = runs[0]
    # The shipped file predates content hashes (it records none, and its bytes stay as pinned); a rebuild records one (scheme 2,
    # over its header too). So a rebuild reproduces the mask when its tensors' bytes hash to the shipped file's (scheme 1) and its
    # header is the shipped one plus its hash fields.
    shipped_content = tensors_sha256(load_file(shipped))
    shipped_header = read_header(shipped)
    checks = {
        "content_sha256": all(r["tensors_sha256"] == shipped_content for r in runs),
        "header": all(r["header_without_content_hash"] == shipped_header for r in runs),
        "shipped_file_sha256": file_sha256(shipped) == entry["sha256"],
        "nnz": first["nnz"] == entry["nnz"],
        "captured_share": first["captured_share"] == entry["captured_share"],
        "fingerprint": first["fingerprint"] == entry["fingerprint"],
    }
    if len(runs) > 1:  # with one run, the match with the pinned sha256 (a separate build) is the check
        checks["rebuilds_identical"] = len({r["sha256"] for r in runs}) == 1  # same szoq, same bytes
    data = {"name": entry["name"], "command": entry["command"], "pinned_sha256": entry["sha256"], "runs": runs,
            "peak_rss_bytes_child": peak, "load_average": os.getloadavg(), "checks": checks, "reproduced": all(checks.values())}
    rows = [
        ("catalog command", f"`{entry['command']}`", ""),
        ("build time (s)", ", ".join(str(r["seconds"]) for r in runs), f"load average {os.getloadavg()[0]:.1f} at the end"),
        ("peak RSS of a build", f"{peak / 1e9:.2f} GB", ""),
        ("tensor sha256 of the rebuild", first["tensors_sha256"][:16],
         f"shipped tensors {shipped_content[:16]}: {'match' if checks['content_sha256'] else 'MISMATCH'}"),
        ("header of the rebuild, less its content hash", "same as shipped" if checks["header"] else "DIFFERS", "same as shipped"),
        ("indices differing from the shipped file", str(first["indices_only_in_one"]), "0"),
        ("Jaccard with the shipped file", f"{first['jaccard']:.6f}", "1"),
        ("nnz / captured share", f"{first['nnz']} / {first['captured_share']}", f"{entry['nnz']} / {entry['captured_share']}"),
    ]
    if "rebuilds_identical" in checks:
        rows.append(("rebuilds byte-identical", f"{checks['rebuilds_identical']} ({len(runs)} runs)", "True"))
    write_results(f"builtin_mask_{entry['name'].replace('-', '_')}", data, rows)
    return 0 if data["reproduced"] else 1


if __name__ == "__main__":
    sys.exit(main())
