"""Importing third-party packages whose import has side effects szoq does not want.

bitsandbytes (0.50) looks up a CPU gemm kernel on the Hugging Face Hub *at import* when the CPU
has avx512_bf16 (`bitsandbytes/backends/cpu/ops.py`: `kernels.get_kernel("kernels-community/
quantization-bitsandbytes")`). It has no setting to skip that: online the lookup is refused
unless the user sets `trust_remote_code`, offline it misses the cache, and either way it logs
"Failed to load CPU gemm_4bit_forward from kernels-community ... Set trust_remote_code=True",
an alarming warning about code szoq never asked for. The kernel is never used by szoq (the
lookup always fails without trust), so `import_bitsandbytes` makes the lookup's
`from kernels import get_kernel` fail locally (no network, no Hub code) and drops exactly that
one log line; bitsandbytes then uses its own built-in CPU kernels, as it did before.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

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
