"""Scale benchmark: peak RSS and seconds per ZO step of `szoq finetune` at real model sizes.

Usage (heavy: run alone, under the shared lock):
    nice -n 10 python bench/bench_scale.py [--root $SZOQ_SCALE_ROOT] \
        [--shapes llama-1.1b llama-2-7b] [--device cpu] [--dtype bf16] [--steps 2]

For each shape (bench/scale_models.py: random bf16 weights with the exact layer shapes of
Llama-2-7B, or of a 1.1B Llama with 4 KV heads; SmolLM2's 49k vocabulary and tokenizer):
1. write the checkpoint once under --root, shard by shard (skipped when complete);
2. build a random-scorer mask at density 1e-3 (skipped when present) with
   `szoq mask build --scorer random` in a child process (--mask-writer cli), or with the
   stopgap writer below (--mask-writer stream) where mask build still loads the whole model: it
   draws the same per-tensor random scores the random scorer draws (one tensor at a time) and
   keeps the same top-k, so the mask is the one `mask build` writes;
3. run `szoq finetune` (nf4, --dtype compute, batch 2 x 64 tokens, --steps steps) in a child
   process, and read its peak RSS (VmHWM, written by the child at exit) and the seconds of
   each ZO step (metrics.jsonl).
Results: bench/results/scale.json and scale.md. Targets: peak RSS < 5 GiB at llama-2-7b, <= 1.5 GB
at llama-1.1b.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = {"llama-2-7b": ("< 5 GiB", lambda rss: rss < 5 * 2**30), "llama-1.1b": ("<= 1.5 GB", lambda rss: rss <= 1.5e9)}
DENSITY = 1e-3
SEQ_TOKENS = 64


def _write_peak_rss(hwm_file: str) -> None:
    from common import peak_rss_bytes  # at exit: torch is loaded by then, so this adds nothing to the peak

    Path(hwm_file).write_text(str(peak_rss_bytes()))


def child(hwm_file: str, argv: list[str]) -> None:
    """Run the real `szoq` entry point in this process; write its VmHWM at exit."""
    atexit.register(_write_peak_rss, hwm_file)
    from szoq_cli.app import main

    sys.argv = ["szoq", *argv]
    main()


def run_szoq(argv: list[str], hwm_file: Path, log_file: Path) -> tuple[int, float, str]:
    """`szoq ARGV` in a child process. Returns (peak RSS bytes, wall seconds, stdout)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(hwm_file), "--", *argv]
    t0 = time.perf_counter()
    with open(log_file, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "SZOQ_NO_PROGRESS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"szoq {' '.join(argv[:2])} failed (exit {proc.returncode}); see {log_file}:\n{log_file.read_text()[-3000:]}")
    return int(hwm_file.read_text()), wall, proc.stdout


def stream_random_mask(model_dir: Path, out: Path, density: float, seed: int = 0) -> None:
    """Stopgap for a whole-model `mask build --scorer random`: the same mask, one tensor at a time.

    Scores per target tensor k are torch.rand(shape, Generator(seed * 1_000_003 + k)) as in
    szoq_hub.masks.sensitivity.random_scores, and the selection is szoq_hub.masks.selection.select per tensor
    (per-matrix scope), so only one tensor's scores are ever in memory and no weight is read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from szoq_hub.masks.build import build_timestamp
    from szoq_hub.masks.artifact import MaskConfig, mask_stats, save_mask
    from szoq_hub import SensitivityMask
    from szoq_hub.masks.selection import select
    from szoq_hub.data.models import model_fingerprint, resolve_model, target_parameter_names

    source = resolve_model(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    params = dict(model.named_parameters())
    targets = target_parameter_names(model)
    indices = {}
    for k, name in enumerate(targets):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
        indices.update(select({name: torch.rand(params[name].shape, generator=gen)}, density, "per-matrix"))
    shapes = {n: list(params[n].shape) for n in targets}
    config = MaskConfig(base_model=source.base_model, base_revision=None, fingerprint=model_fingerprint(source), density=density,
                        scope="per-matrix", scorer="random", shapes=shapes, seed=seed, created_at=build_timestamp(),
                        command=f"bench/bench_scale.py stream_random_mask {model_dir} density={density} seed={seed}",
                        stats=mask_stats(indices, shapes))
    save_mask(SensitivityMask(indices, config), out)


def train_file(tokenizer_dir: Path, path: Path, rows: int = 8) -> Path:
    """Rows whose prompt `{text} It was` + option is about SEQ_TOKENS tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = ("the movie was great and the actors were wonderful but a terrible film with a boring plot "
            "and bad acting can still be fine for zeroth order fine tuning of quantized language models ") * 4
    ids = tok(base)["input_ids"][: SEQ_TOKENS - 4]
    text = tok.decode(ids)
    lines = [json.dumps({"text": text, "label": i % 2}) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_shape(shape: str, root: Path, args) -> dict:
    from scale_models import write_checkpoint

    model_dir = write_checkpoint(shape, root / shape, log=lambda s: print(s, file=sys.stderr))
    work = root / "bench-scale"
    work.mkdir(parents=True, exist_ok=True)
    mask_dir = work / f"{shape}-random-{DENSITY:g}"
    result: dict = {"shape": shape, "model": str(model_dir), "mask": str(mask_dir)}
    if not (mask_dir / "mask.safetensors").exists():
        t0 = time.perf_counter()
        if args.mask_writer == "cli":
            rss, wall, _ = run_szoq(["mask", "build", str(model_dir), "--scorer", "random", "--density", str(DENSITY), "--out", str(mask_dir)],
                                    work / f"{shape}-mask.hwm", work / f"{shape}-mask.log")
            result["mask_build"] = {"writer": "szoq mask build --scorer random", "peak_rss_bytes": rss, "seconds": round(wall, 1)}
        else:
            stream_random_mask(model_dir, mask_dir, DENSITY)
            result["mask_build"] = {"writer": "bench stopgap stream_random_mask", "seconds": round(time.perf_counter() - t0, 1)}
    data = train_file(model_dir, work / "train.jsonl")
    run = work / f"{shape}-run-{args.device}-{args.dtype}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    argv = ["finetune", "--model", str(model_dir), "--mask", str(mask_dir), "--train", str(data), "--template", "{text} It was",
            "--labels", "0=bad,1=good", "--quant", "nf4", "--steps", str(args.steps), "--batch-size", "2", "--eval-every", "0",
            "--save-every", str(args.steps), "--train-samples", "4", "--dev-samples", "0", "--eval-samples", "1", "--out", str(run), "--json"]
    help_text = subprocess.run([sys.executable, "-m", "szoq_cli", "finetune", "--help"], capture_output=True, text=True).stdout
    for flag, value in (("--dtype", args.dtype), ("--device", args.device)):
        if flag in help_text:
            argv += [flag, value]
        else:
            result.setdefault("flags_unsupported", []).append(flag)
    load_before = os.getloadavg()[0]
    rss, wall, _ = run_szoq(argv, work / f"{shape}-finetune.hwm", work / f"{shape}-finetune.log")
    result["load_average_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]  # before, after: 2 cores
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in l]
    seconds = [s["seconds"] for s in steps]
    target_text, meets = TARGETS.get(shape, ("report", None))
    result.update({
        "finetune_argv": argv, "peak_rss_bytes": rss, "peak_rss_gib": round(rss / 2**30, 3), "peak_rss_gb": round(rss / 1e9, 3),
        "step_seconds": seconds, "seconds_per_step": round(statistics.median(seconds), 2), "finetune_wall_seconds": round(wall, 1),
        "target": target_text, "met": None if meets is None else meets(rss),
    })
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    if "--child" in sys.argv:  # internal: python bench_scale.py --child HWM_FILE -- szoq args...
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("SZOQ_SCALE_ROOT", "~/.cache/szoq-scale")).expanduser(), help="where checkpoints, masks and runs live (outside the repo)")
    ap.add_argument("--shapes", nargs="+", default=["llama-1.1b", "llama-2-7b"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mask-writer", choices=["cli", "stream"], default="cli",
                    help="cli: szoq mask build --scorer random; stream: the bench's stopgap writer (same mask)")
    ap.add_argument("--name", default="scale", help="results name under bench/results/")
    ap.add_argument("--combine", nargs="+", metavar="NAME", help="run nothing: write --name from the results of earlier runs (one shape each)")
    args = ap.parse_args()

    from common import RESULTS, write_results

    if args.combine:
        earlier = [json.loads((RESULTS / f"{n}.json").read_text()) for n in args.combine]
        results = [r for e in earlier for r in e["results"]]
        commands = [e["command"] for e in earlier]
        environments = [e["environment"] for e in earlier]
    else:
        results = [bench_shape(s, args.root, args) for s in args.shapes]
        commands = ["nice -n 10 python bench/bench_scale.py " + " ".join(sys.argv[1:])]
        environments = []
    rows = []
    for r in results:
        rows.append((f"{r['shape']}: peak RSS of szoq finetune", f"{r['peak_rss_gib']} GiB ({r['peak_rss_gb']} GB)", r["target"]))
        rows.append((f"{r['shape']}: seconds per ZO step", f"{r['seconds_per_step']} (steps: {', '.join(map(str, r['step_seconds']))})", "report"))
        if "mask_build" in r:
            mb = r["mask_build"]
            rss = f", peak RSS {mb['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in mb else ""
            rows.append((f"{r['shape']}: random mask at {DENSITY:g}", f"{mb['writer']}, {mb['seconds']} s{rss}", "report"))
    data = {"command": commands[0] if len(commands) == 1 else commands, "device": args.device, "dtype": args.dtype, "density": DENSITY,
            "batch": "2 x 64 tokens", "quant": "nf4", "results": results}
    if environments:
        data["runs_environment"] = environments
    write_results(args.name, data, rows)


if __name__ == "__main__":
    main()
