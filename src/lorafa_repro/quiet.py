"""Warnings a user of this suite cannot act on, silenced at their source (every CLI calls
:func:`quiet_known_warnings` first). Each filter matches one message, so every other warning, and each of these
where it would name a real problem, still shows.
"""

from __future__ import annotations

import logging
import warnings

# bitsandbytes >= 0.50, on a CPU with AVX512-BF16, tries to fetch a faster CPU kernel from the Hugging Face Hub
# (package `kernels`) when it is imported and logs this when it cannot. The suite never runs that kernel: every
# 4-bit layer opts out of bnb's AVX512-BF16 CPU path (methods/quantize.py), so nothing is slower or different.
BNB_KERNELS_HUB = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"

# transformers 5 deprecates the model attribute `is_gradient_checkpointing`, which PEFT still reads on every
# get_peft_model: a library-to-library deprecation, nothing in a run depends on it.
GRADIENT_CHECKPOINTING_ATTR = ".*is_gradient_checkpointing.*"

# torch's ModTracker (under the memory simulator's MemTracker) warns when a module is entered again before it
# exits, which gradient checkpointing does by design (the recomputed forward runs inside the backward of the
# same block). memory/simulate.py tracks blocks itself and tests the checkpointed peaks against the allocator.
MOD_TRACKER_REENTRY = "The module hierarchy tracking maybe be messed up"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_known_warnings() -> None:
    """Install the filters above (idempotent). Call before bitsandbytes is imported."""
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_ATTR, category=FutureWarning)
    warnings.filterwarnings("ignore", message=MOD_TRACKER_REENTRY, category=UserWarning)
    bnb_logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropMessage(BNB_KERNELS_HUB))


__all__ = ["quiet_known_warnings"]
