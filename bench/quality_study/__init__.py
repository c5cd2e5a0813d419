"""The quality study: does the C4 sensitivity mask (SensZOQ) beat the alternatives on real tasks?

SmolLM2-135M-Instruct, nf4 base, the `szoq` CLI itself. The grid is a list of cells (task,
method, seed, density); every finished cell is cached as one JSON file under
`bench/results/quality/cells/`, so the study resumes where it stopped (a half-finished fine-tuning
run also resumes from its checkpoint). Each cell records `argv`: the `szoq` arguments (without
`--out`) that rerun it, and for mask methods `mask_argv`, the `szoq mask build` that made the
mask. Paths in them are written `{work}/...` (the work folder, `$SZOQ_QUALITY_WORK`, default
`~/.cache/szoq/quality`) and `{data}/...` (the shared data, `$SZOQ_DATA_DIR`): `--verify` expands
them, so a cell reruns on any machine (absolute paths of older cells are read the same way).
`bench/results/quality.json` ({"cells": [...], "transfer": [...], "pending": [...]}), `quality.md`
and the PNG plots are regenerated from the cached cells after every cell.

Methods: zero-shot, icl (K demonstrations), senszoq (the built-in C4 fisher mask), random and
magnitude masks at the same density, task-fisher (fisher mask on the task's own train text:
the reference the C4 mask should come close to), dense (MeZO over every decoder linear weight of
the fp32 model, unquantized: `szoq finetune --dense`), zo-lora (`szoq finetune --lora 8`: LoRA on q_proj
and v_proj of the nf4 base, trained by the same ZO estimator, the paper's equal-memory competitor).
Cells of the second model (Gemma-3-270M, GGUF from PyPI) carry a `gemma3-` key prefix; cells of
another horizon than 300 steps a `-<N>steps` part. The lr is per method (`settings.LR`), chosen by
an lr sweep on SST-2 dev (`--sweep`) and then fixed for every task; eps is `settings.EPS` throughout. A cell
run at another lr (an earlier pass) keeps `-lr<value>` in its key; see README "Results".

The modules, in the order a cell goes through them:

- `settings`: folders, models and the grid's fixed numbers (lr per method, steps, batch, sample sizes).
- `plan`: the cells and lr-sweep runs, their keys and lrs; the lrs complete sweeps chose.
- `szoq_process`: running `szoq` as a child process; `{work}`/`{data}` paths in a recorded argv.
- `run`: one cell or sweep run through the CLI (masks built first), returned as a record.
- `records`: the JSON records on disk (atomic writes; a record whose key changed moves).
- `verify`, `probes`, `transfer`: rerun a recorded cell; memory/time probes; the Σg² share of the C4 mask.
- `report`, `plots`: quality.json, quality.md, README's table and the PNGs, from the records alone.
- `main`: the command line of `bench/quality.py`.
"""
