"""`finetune`: the ZO fine-tuning loop, one loop over a `Trainable` (szoq_hub/methods/trainable.py).

The loop owns what every trainable shares: the task's batches (seeded epochs, any step
reproducible), the step log, dev evaluation and the best-dev choice (the untouched model, scored
at step 0 unless --no-dev-baseline, is the first candidate: a run is never left worse on dev than
it started), checkpoint timing (every `save_every` steps, and every `save_every_minutes` of wall
time), --resume, Ctrl-C and divergence messages. What is trained, and how its state is written, is the trainable's: the
method's (szoq_hub/methods/: the mask's values on the quantized runtime, every linear weight of the
fp32 model, LoRA adapters, ...).
The run folder's files are named and written in run_folder.py; settings in config.py.

Each step evaluates its 2q perturbed points (v +- eps z_i) in ONE forward over 2q copies of the
batch (`Trainable.perturbed`), so every quantized base is dequantized once per step.
Under torchrun every rank computes the 2q losses on its shard of each batch with the same
perturbation seeds; losses are all-reduced (weighted by shard size) so all ranks apply the same
update.

`device` / `dtype` are resolved once (core/devices.py) and recorded in the run's config as
`runtime`; --resume refuses another device type or compute dtype, because z is drawn from the
device's own generator and the losses depend on the compute dtype.

--resume checks contents, not names: the config and every checkpoint record the model's
fingerprint (for a local folder, the sha256 of its weight files) and `data_sha256`, the sha256
of the examples the run trains, selects on and evaluates (`examples_sha256`). A resume whose model
or rows changed behind the same paths is refused with both values shown, before any step runs
(a run that went on would mix two trainings in one file).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Callable

import torch
import torch.distributed as dist

from ..core.devices import dtype_name, init_distributed, require_quant_backend, resolve_device, resolve_dtype, world
from ..core.errors import ConfigError, Interrupted, TrainingError
from ..core.defaults import __version__
from ..data.scoring import encode, loss_sums, pad_id_of
from ..data.tasks import describe_split, load_task
from ..runtime.zo import StepRecord
from ..runtime.zo_config import AUTO_LR, SCORES_LR
from .config import FinetuneConfig, FinetuneResult, settings_of
from .evaluate import score
from .lr_probe import LrProbe, probe_lr
from .lr_scores import lr_from_scores
from .run_folder import RunFolder
from .tracking import check_report_to, open_tracker, scalars

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict], None]


def batch_indices(n: int, batch_size: int, step: int, seed: int, cache: dict[int, list[int]]) -> list[int]:
    """Indices of the step's batch: epochs are seeded permutations, so any step is reproducible.

    Args:
        n: Train examples.
        batch_size: Examples per step.
        step: 0-based step.
        seed: The run seed.
        cache: Permutations per epoch, filled as needed (pass the same dict every step).
    """
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, n)
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.append(cache[epoch][i])
    return out


# `--micro-batch-size` left out on a CPU: forwards of at most this many padded tokens per copy,
# rows grouped by length. On a CPU a forward gains nothing from more rows (it is compute-bound)
# and loses to padding: bench/results/micro_batch.md measured 0.61x (SST-2), 0.47x (RTE) and
# 0.39x (BoolQ) the whole-batch step time with forwards of 1-4 rows, which this budget gives
# (~4 SST-2 sentences, 1-2 RTE pairs, one BoolQ passage). On CUDA the whole batch stays one
# forward (a GPU forward is far from compute-bound at batch 16).
MICRO_BATCH_TOKENS = 128


def examples_sha256(task) -> str:
    """sha256 of a task's sampled train, dev and eval examples (prompts, options, labels), in order."""
    import hashlib

    h = hashlib.sha256()
    for split in (task.train, task.dev, task.eval):
        for e in split:
            h.update(json.dumps([e.prompt, e.options, e.label, e.group], ensure_ascii=True).encode() + b"\n")
        h.update(b"--\n")
    return h.hexdigest()


def runtime_of(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """The resolved device type and compute dtype a run records (what --resume must match)."""
    return {"device_type": device.type, "dtype": dtype_name(dtype)}


def micro_batch_of(config: FinetuneConfig, device: torch.device, saved: dict | None) -> dict[str, int | None]:
    """How a step's batch is split into forwards: `micro_batch_size` rows, or `micro_batch_tokens`
    padded tokens per copy (both None: one forward).

    Args:
        config: The run's settings (`micro_batch_size` forces a size).
        device: The resolved device (the automatic choice depends on it).
        saved: On --resume, the config the run recorded: its choice is kept (unless a size is forced).
    """
    if config.micro_batch_size is not None:
        return {"micro_batch_size": config.micro_batch_size, "micro_batch_tokens": None}
    if saved is not None:
        runtime = saved.get("runtime") or {}
        if "micro_batch_tokens" in runtime:
            return {"micro_batch_size": runtime.get("micro_batch_size"), "micro_batch_tokens": runtime["micro_batch_tokens"]}
        # a run started before the choice was recorded: its settings were the choice
        return {"micro_batch_size": saved["settings"].get("micro_batch_size"), "micro_batch_tokens": None}
    return {"micro_batch_size": None, "micro_batch_tokens": MICRO_BATCH_TOKENS if device.type == "cpu" else None}


def _checkpoint_rule(config: FinetuneConfig) -> str:
    minutes = f" or {config.save_every_minutes:g} minutes" if config.save_every_minutes else ""
    return f"every {config.save_every} steps{minutes}"


def _diverged_hint(config: FinetuneConfig, lr: float, last_checkpoint: int | None) -> str:
    """A hint for a diverged run that works as written: --resume keeps --lr, so a lower --lr is a new run."""
    usual = config.method_spec.config_cls.numeric_lr()
    lower = usual if lr > usual else lr / 10
    kept = (f"the checkpoint at step {last_checkpoint} in {config.out} is intact, but --resume keeps --lr"
            if last_checkpoint else f"no checkpoint was written yet ({_checkpoint_rule(config)})")
    return f"{kept}; lower --lr (e.g. --lr {lower:g}) or --eps and start a new run with a new --out, e.g. --out {config.out}-lr{lower:g}"


def _interrupted(config: FinetuneConfig, done: int, last_checkpoint: int | None) -> Interrupted:
    """What Ctrl-C leaves behind, and the command that continues from it."""
    if last_checkpoint:
        return Interrupted(f"interrupted at step {done} of {config.steps}; the checkpoint at step {last_checkpoint} is in {config.out}",
                           hint=f"run the same command again (same options, --out {config.out}) to continue from there; --resume insists on continuing")
    return Interrupted(f"interrupted at step {done} of {config.steps}, before the first checkpoint ({_checkpoint_rule(config)})",
                       hint=f"run the same command again (or with --resume) to start it over in {config.out}; lower --save-every to checkpoint sooner")


def finetune(config: FinetuneConfig, *, resume: bool | None = None, progress: ProgressFn | None = None,
             clock: Callable[[], float] = time.monotonic) -> FinetuneResult:
    """Fine-tune with ZO on a task, by the run's method (`config.method`, szoq_hub/methods/): the
    sparse values of a quantized model (SensZOQ), every linear weight of the fp32 model (dense
    MeZO), LoRA adapters on the quantized base, or any registered method.

    Args:
        config: The run's settings.
        resume: None (default): continue the stopped run in `config.out` when it has the same
            settings, else start a new run (a folder with another run is refused). True: there
            must be a stopped run to continue. False: `config.out` must be new or empty.
        progress: Called with dicts: {"kind": "start"|"step"|"eval"|"final", ...}; "start" carries
            "split" (a line on the data split), "start" (first step) and "resumed"; an "eval" at
            "step" 0 scores the untouched model (`config.dev_baseline`); "lr_auto" (`--lr auto`,
            before "start") carries the chosen "lr", "median_grad", "probes", "c" and "resumed";
            "lr_scores" (`--lr scores`, a sparse run's default) the chosen "lr", "c", "score_sum",
            "windows" and "per_window" (None, None, None: the mask has no scores, "lr" is the fixed default).
        clock: Seconds of a monotonic clock, for checkpoints by time (tests pass their own).

    Returns:
        The run's `FinetuneResult` (on every rank; only rank 0 writes files). Its `best_step` 0
        (`kept_start`): no step beat the untouched model on dev, and the run kept its starting state.

    Raises:
        ConfigError, TaskError, DependencyError: bad input (before anything is written).
        FingerprintMismatch: the mask does not fit the model (before weights load).
        TrainingError: output folder conflicts, non-finite loss (the last checkpoint stays).
        Interrupted: Ctrl-C (what was kept and how to continue).
    """
    started = time.perf_counter()
    init_distributed()
    rank, size = world()
    method = config.method_spec
    if not method.config_cls.data_parallel and size > 1:
        raise ConfigError(f"{method.flag} runs in one process (no data-parallel path)", hint=f"run szoq finetune {method.flag} without torchrun")
    emit = progress or (lambda _event: None)
    require_quant_backend(config.quant)
    check_report_to(config.report_to)
    device = resolve_device(config.device)
    run = RunFolder(config.out)
    resume = run.check_out(config, resume)
    spec = config.dtype
    if resume and spec == "auto":  # the run's own choice, whatever `auto` picks here
        spec = (run.saved_runtime() or {}).get("dtype", spec)
    dtype = resolve_dtype(spec, device) if method.config_cls.quantized else torch.float32  # unquantized weights train in fp32
    runtime = runtime_of(device, dtype)
    if resume:
        run.check_runtime(runtime)
    micro = micro_batch_of(config, device, run.read_config() if resume else None)
    runtime = {**runtime, **micro}
    # Data, template and labels are read and checked before anything loads (a bad row costs no model load).
    task = load_task(config.task, custom=config.custom_task(), data_dir=config.data_dir, sampling=config.sampling())
    settings = settings_of(config)
    data_sha = examples_sha256(task)
    if resume:  # the rows first: no model loads for a run that cannot continue
        run.check_contents(data_sha256=data_sha)
    trainable = method.trainable_cls(config, device, dtype, settings, rank == 0)
    if resume:
        run.check_contents(fingerprint=trainable.fingerprint, model=config.model, mask_sha256=trainable.record().get("mask_sha256"))
    pad_id = pad_id_of(trainable.tokenizer)
    train, dev, evals = (encode(trainable.tokenizer, x) for x in (task.train, task.dev, task.eval))
    perms: dict[int, list[int]] = {}

    def closure_at(step: int) -> Callable[[object], list[float]]:
        """The paired closure of the step's batch (this rank's shard): 2q points -> their 2q losses, mean over the whole batch."""
        batch = batch_indices(len(train), config.batch_size, step, config.seed, perms)
        shard = [train[i] for i in batch[rank::size]]

        def closure(points) -> list[float]:  # the step's 2q points, in the trainable's form
            with trainable.perturbed(points) as parts:  # one forward over P copies of the shard
                local = loss_sums(trainable.model, shard, pad_id, copies=parts, **micro) if shard else [0.0] * parts
            if size == 1:
                return [x / len(batch) for x in local]
            total = torch.tensor([*local, float(len(shard))], dtype=torch.float64)  # [P + 1]
            dist.all_reduce(total)
            return [float(x / total[-1]) for x in total[:-1]]
        return closure

    lr = config.zo.lr
    if lr == SCORES_LR:  # deterministic given the mask (a resumed run's mask is checked by sha256): recomputed, never read back
        scores_of = getattr(trainable, "lr_scores", lambda: (None, None))  # a method without scores (dense, a plugin's) may not define it
        chosen = lr_from_scores(*scores_of(), fallback=config.method_spec.config_cls.numeric_lr())
        lr = chosen.lr
        trainable.set_lr(lr)
        settings["lr_scores"] = chosen.record()  # finetune_config.json records how; the result files, the lr itself
        emit({"kind": "lr_scores", "resumed": resume, **chosen.record()})
    if lr == AUTO_LR:  # a resumed run keeps the lr its probe chose; only a new run probes (lr_probe.py)
        auto = _recorded_probe(run) if resume else probe_lr(lambda at: trainable.estimate(closure_at(-at - 1), at))  # probe step -(k+1): step k's batch
        lr = auto.lr
        trainable.set_lr(lr)
        settings["lr_auto"] = auto.record()  # finetune_config.json records how; the result files, the lr itself
        emit({"kind": "lr_auto", "resumed": resume, **auto.record()})
    if rank == 0 and not resume:
        run.write_config({"settings": settings, "task": {"name": task.name, "metric": task.metric, **task.info}, "base_model": trainable.source.base_model,
                          "fingerprint": trainable.fingerprint, "data_sha256": data_sha, **trainable.record(), "szoq_version": __version__, "world_size": size, "runtime": runtime})

    start, best_dev, best_step = 0, -math.inf, None
    ckpt = trainable.restore(run) if resume else None
    if ckpt is not None:
        start, best_step, best_dev = ckpt
    redone = run.truncate_metrics(start if ckpt is not None else None) if rank == 0 and resume else 0
    if resume:
        log.info("resuming %s at step %d (%s)", run.path, start, "checkpoint" if ckpt is not None else "no checkpoint yet")
        if rank == 0:
            trainable.resume_best(run, start, best_step, best_dev)
    emit({"kind": "start", "steps": config.steps, "start": start, "task": task.name, "train": len(train), "dev": len(dev), "eval": len(evals),
          "nnz": trainable.nnz, "resumed": resume, "checkpoint": start if ckpt is not None else None, "redone": redone,
          "save_every": config.save_every, "split": describe_split(task, config.sampling()), "out": str(run.path), "dtype": runtime["dtype"], **micro})
    last_checkpoint = start if ckpt is not None else None
    contents = {"fingerprint": trainable.fingerprint, "data_sha256": data_sha}  # every checkpoint records what it was trained on
    done = start
    metrics = tracker = None
    try:
        metrics = run.open_metrics() if rank == 0 else None
        tracker = open_tracker(config.report_to, out=run.path, name=run.path.name, config=settings) if rank == 0 else None

        def log_row(row: dict, x: int) -> None:
            if metrics is not None:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if tracker is not None:
                tracker.log(scalars(row), x)

        def evaluate_dev(at: int) -> bool:
            """Score dev with `at` steps done and keep a new best; returns whether keeping it wrote the checkpoint."""
            nonlocal best_dev, best_step
            dev_score = score(trainable.model, dev, task.metric, pad_id, config.eval_batch_size)
            log_row({"kind": "eval", "step": at, "split": "dev", task.metric: dev_score}, at)
            emit({"kind": "eval", "step": at, "dev": dev_score, "metric": task.metric})
            if dev_score > best_dev:  # strict: a tie keeps the earlier step
                best_dev, best_step = dev_score, at
                return trainable.keep_best(run, at, dev_score, _meta(at, best_dev, best_step, contents))
            return False

        # The untouched model is the first best-dev candidate (step 0), so a run whose steps never beat
        # it on dev ends with the model it started from, not a worse one. Only from the start: a run
        # resumed from a checkpoint has that score in its best dev already.
        if config.dev_baseline and dev and ckpt is None and evaluate_dev(0):
            last_checkpoint = 0
        saved_at = clock()
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            try:
                record: StepRecord = trainable.step(closure_at(step), step)
            except TrainingError as exc:
                raise TrainingError(exc.message, hint=_diverged_hint(config, lr, last_checkpoint)) from None
            done = step + 1
            log_row({"kind": "step", **record.to_dict(), "seconds": round(time.perf_counter() - t0, 4)}, done)  # x axis: steps done
            emit({"kind": "step", "step": done, "steps": config.steps, "loss": record.loss, "grad": record.grad_norm, "lr": record.lr})
            checkpointed = False
            if dev and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                checkpointed = evaluate_dev(done)
            timed = config.save_every_minutes > 0 and clock() - saved_at >= 60.0 * config.save_every_minutes
            if not checkpointed and rank == 0 and (done % config.save_every == 0 or done == config.steps or timed):
                trainable.save_checkpoint(run, _meta(done, best_dev, best_step, contents))
                checkpointed = True
            if checkpointed:
                last_checkpoint, saved_at = done, clock()

        # Keep the best-dev state (the paper's protocol; best step 0: the untouched model); without a dev set, the final one.
        trainable.use_best(run, best_step, done)
        eval_score = score(trainable.model, evals, task.metric, pad_id, config.eval_batch_size)
        result = {"metric": task.metric, "eval_metric": eval_score, "best_dev": None if best_step is None else best_dev, "best_step": best_step}
        emit({"kind": "final", **result})
        if rank == 0:
            log_row({"kind": "final", "split": "eval", **result}, config.steps)
            trainable.write_final(run, config, {**result, "task": task.name, "lr": lr})
    except KeyboardInterrupt:
        raise _interrupted(config, done, last_checkpoint) from None
    finally:
        if metrics is not None:
            metrics.close()
        if tracker is not None:
            tracker.close()
    if size > 1:
        dist.barrier()
    return FinetuneResult(run.path, config.steps, task.metric, best_step, result["best_dev"], eval_score, time.perf_counter() - started, start,
                          dtype=runtime["dtype"], lr=lr, **micro)


def _recorded_probe(run: RunFolder) -> LrProbe:
    """The lr a resumed `--lr auto` run chose when it started (its settings' `lr_auto`).

    Raises:
        TrainingError: the run recorded no choice.
    """
    recorded = run.read_config()["settings"].get("lr_auto")
    if not isinstance(recorded, dict) or "lr" not in recorded:
        raise TrainingError(f"--lr auto: {run.config} records no chosen lr (lr_auto)", hint="resume with the --lr the run used, or start a new run")
    return LrProbe.from_record(recorded)


def _meta(done: int, best_dev: float, best_step: int | None, contents: dict[str, str]) -> dict[str, str]:
    """The loop's part of a checkpoint header (with the model fingerprint and rows sha256 it was trained on)."""
    return {"step": str(done), "best_dev": repr(best_dev), "best_step": "" if best_step is None else str(best_step), **contents}
