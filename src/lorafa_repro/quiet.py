"""Warnings a user of this suite cannot act on, silenced at their source (every CLI calls
:func:`quiet_known_warnings` first). Each filter matches one message, so every other warning, and each of these
where it would name a real problem, still shows.
"""

from __future__ import annotations

import logging
import re
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


# transformers 5 logs a LOAD REPORT whenever a checkpoint and the model differ. Fine-tuning a pretrained encoder for a
# task always adds a new head (MISSING classifier.* / score.* / qa_outputs.*) and drops the pretraining head
# (UNEXPECTED lm_head.* / cls.*): nothing to act on. A report with any other row (another missing or unexpected key,
# a shape mismatch, a conversion error) is a real problem and still shows.
TRANSFORMERS_LOAD_LOGGER = "transformers.modeling_utils"
NEW_HEAD_KEYS = ("classifier.", "score.", "qa_outputs.")
PRETRAINING_HEAD_KEYS = ("lm_head.", "cls.")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def expected_head_report(message: str) -> bool:
    """True for a LOAD REPORT whose every row is a new task head (MISSING) or a dropped pretraining head
    (UNEXPECTED)."""
    text = _ANSI.sub("", message)
    if "LOAD REPORT" not in text:
        return False
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.fullmatch(r"-+\+[-+]*", line.strip())), None)
    if start is None:
        return False
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("|")]
        rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
    return bool(rows) and all((status == "MISSING" and key.startswith(NEW_HEAD_KEYS))
                              or (status == "UNEXPECTED" and key.startswith(PRETRAINING_HEAD_KEYS))
                              for key, status in rows)


class _DropExpectedHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not expected_head_report(record.getMessage())


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
    load_logger = logging.getLogger(TRANSFORMERS_LOAD_LOGGER)
    if not any(isinstance(f, _DropExpectedHeadReport) for f in load_logger.filters):
        load_logger.addFilter(_DropExpectedHeadReport())


__all__ = ["quiet_known_warnings"]
