"""Where szoq computes: one resolver for `--device` and one for `--dtype`, the rank under torchrun,
and the quantization backend (bitsandbytes, imported quietly).

`--device auto` picks CUDA when torch sees a GPU, else the CPU; `cuda` / `cuda:N` must exist.
`--dtype` names the compute dtype of activations, embeddings, norms, lm_head and the
dequantized base. The trainable sparse values are an fp32 master vector whatever the compute
dtype (see runtime/sparse.py), so the choice trades speed for activation precision only.

`--dtype auto` is the default of finetune and eval (the library's `None` keeps the device
type's default below; a resumed run keeps the dtype it recorded):
- CUDA: bf16 (tensor cores; fp32 range, so no loss scaling is needed without a backward pass).
- CPU: bf16 where the CPU has native bf16 matrix instructions, else fp32. bench/bench_dtype.py
  on this 2-core AVX512-BF16 CPU (SmolLM2-135M, nf4, SST-2 batch 16, 1 thread, process CPU seconds): bf16 is 1.88x faster per forward and 1.75x
  per paired ZO step, with equal zero-shot accuracy (64 dev rows) and projected gradients that
  agree in sign on every step (correlation 0.98) but differ by 17% (median) in magnitude; the
  accuracy after fine-tuning is compared in bench/results/quality.md (bf16 SST-2 cells). Pass
  `--dtype fp32` for the exact reference. See bench/results/dtype.md.

`--dtype auto` follows the hardware: bf16 on CUDA, bf16 on a CPU with native bf16 matrix
kernels (x86 `avx512_bf16` / `amx_bf16`, Arm `bf16`: oneDNN runs bf16 matmuls there at up to
twice the fp32 rate), fp32 on any other CPU (where bf16 is emulated and slower than fp32). The
check reads the CPU's flags once per process.

Rank and world size under torch.distributed (torchrun) are answered here too: mask building
(FSDP / sharded scoring), the Fisher scorer and fine-tuning all ask whether a process group is
up, which rank they are, and whether they are the one that writes files. Outside torchrun every
answer is the single-process one: rank 0 of 1.

Importing bitsandbytes has a side effect szoq does not want: bitsandbytes (0.50) looks up a CPU
gemm kernel on the Hugging Face Hub *at import* when the CPU has avx512_bf16 (`bitsandbytes/backends/cpu/ops.py`: `kernels.get_kernel("kernels-community/
quantization-bitsandbytes")`). It has no setting to skip that: online the lookup is refused
unless the user sets `trust_remote_code`, offline it misses the cache, and either way it logs
"Failed to load CPU gemm_4bit_forward from kernels-community ... Set trust_remote_code=True",
an alarming warning about code szoq never asked for. The kernel is never used by szoq (the
lookup always fails without trust), so `import_bitsandbytes` makes the lookup's
`from kernels import get_kernel` fail locally (no network, no Hub code) and drops exactly that
one log line; bitsandbytes then uses its own built-in CPU kernels, as it did before.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist

from .defaults import DEVICE_CHOICES
from .errors import ConfigError, DependencyError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_DTYPE = {"cuda": "bf16", "cpu": "fp32"}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device a `--device` value names.

    Args:
        spec: `auto` (or None), `cpu`, `cuda`, `cuda:N`, or a `torch.device`.

    Returns:
        The device (`cuda` resolves to the current CUDA device index).

    Raises:
        ConfigError: an unknown device string, or CUDA asked for but not available (or an
            index past the visible GPUs).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown --device {spec!r}", hint=f"choose one of: {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {spec} is not available: torch sees no CUDA GPU (torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})",
            hint="use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU",
        )
    n = torch.cuda.device_count()
    i = int(index) if index else torch.cuda.current_device()
    if i >= n:
        raise ConfigError(f"--device {spec}: only {n} CUDA device(s) visible", hint=f"choose cuda:0 .. cuda:{n - 1}")
    return torch.device("cuda", i)


# /proc/cpuinfo flags of native bf16 matrix instructions (x86 AVX512-BF16 / AMX, Arm BF16).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (read once per process).

    Linux: the flags of /proc/cpuinfo. Elsewhere, or when it cannot be read: False (fp32 is the
    safe choice where bf16 would be emulated).
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def auto_dtype(device: torch.device) -> str:
    """The `--dtype auto` choice for `device`: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def dtype_name(dtype: torch.dtype) -> str:
    """The `--dtype` spelling of a torch dtype (`bf16`, `fp16`, `fp32`)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"unsupported compute dtype {dtype}", hint=f"choose one of: {', '.join(DTYPES)}")


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype a `--dtype` value names.

    Args:
        spec: `bf16`, `fp16`, `fp32`, a torch dtype; `auto` for the hardware's choice
            (`auto_dtype`); None for the device type's default (`DEFAULT_DTYPE`).
        device: The resolved device (its type chooses the default).

    Returns:
        The torch dtype.

    Raises:
        ConfigError: an unknown dtype.
    """
    if isinstance(spec, torch.dtype):
        dtype_name(spec)  # validates
        return spec
    if spec == "auto":
        spec = auto_dtype(device)
    elif spec is None:
        spec = DEFAULT_DTYPE.get(device.type, "fp32")
    if spec not in DTYPES:
        raise ConfigError(f"unknown --dtype {spec!r}", hint=f"choose one of: {', '.join(DTYPES)}")
    return DTYPES[spec]


def require_quant_backend(quant: str) -> None:
    """Refuse a quantized mode when bitsandbytes is not installed (checked before any model loads).

    Args:
        quant: `nf4`, `fp4`, `int8` (need bitsandbytes) or `none`.

    Raises:
        DependencyError: a quantized mode without bitsandbytes.
    """
    if quant != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyError(f"--quant {quant} needs bitsandbytes", hint="pip install 'bitsandbytes>=0.48' (or use --quant none)")
    if quant != "none":
        import_bitsandbytes()  # before any other bitsandbytes import: no Hub kernel lookup, no trust_remote_code warning


# -- rank and world size under torch.distributed (torchrun) ------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) under an initialized torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True outside torch.distributed, or on rank 0 (the rank that writes files)."""
    return world()[0] == 0


def init_distributed(device: torch.device | None = None) -> None:
    """Start the process group when torchrun launched several processes (WORLD_SIZE > 1).

    Args:
        device: The compute device; CUDA uses NCCL, everything else Gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")


# -- importing bitsandbytes without its Hub kernel lookup ---------------------------------------
# The logger bitsandbytes' CPU backend warns through, and the start of the one line we drop.
_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_KERNEL_LOOKUP_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_kernel_lookup(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KERNEL_LOOKUP_WARNING)


def import_bitsandbytes() -> ModuleType:
    """Import bitsandbytes without its Hub kernel lookup and the warning that lookup logs.

    Every place in szoq that may import bitsandbytes first calls this; later imports are the
    cached module. Other bitsandbytes warnings pass through.

    Returns:
        The `bitsandbytes` module.

    Raises:
        ImportError: bitsandbytes is not installed (callers turn it into a DependencyError).
    """
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    logger = logging.getLogger(_BNB_CPU_LOGGER)
    if _not_the_kernel_lookup not in logger.filters:
        logger.addFilter(_not_the_kernel_lookup)
    missing = object()
    saved = sys.modules.get("kernels", missing)
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `from kernels import ...` raises ImportError: no lookup
    try:
        import bitsandbytes
    finally:
        if saved is missing:
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = saved
    return bitsandbytes
