"""Quiet by default (issue #17): the warnings a user cannot act on are filtered at their source, one message
each, and every other warning still shows."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lorafa_repro import quiet
from lorafa_repro.quiet import quiet_known_warnings


def test_bitsandbytes_kernel_hub_message_is_dropped_and_its_other_warnings_kept(caplog) -> None:
    quiet_known_warnings()
    quiet_known_warnings()  # idempotent: one filter
    log = logging.getLogger(quiet.BNB_CPU_LOGGER)
    assert len(log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=quiet.BNB_CPU_LOGGER):
        log.warning("%s: No module named 'kernels'.", quiet.BNB_KERNELS_HUB)
        log.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


@pytest.mark.parametrize("message,category", [
    (quiet.MOD_TRACKER_REENTRY + ". Please file a bug to PyTorch, if it is the case.", UserWarning),
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
])
def test_known_library_warnings_are_filtered_and_others_are_not(message: str, category: type) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn(message, category)
        warnings.warn("an unrelated warning", category)
    assert [str(w.message) for w in seen] == ["an unrelated warning"]


def test_a_qlora_run_prints_no_warning(synthetic_glue: Path, tmp_path: Path) -> None:
    """On a CPU with AVX512-BF16 bitsandbytes logs its kernel-hub warning at import; no run should show it."""
    out = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "model=tiny_roberta", "trainer=tiny", "task=glue/mrpc",
         f"task.data_dir={synthetic_glue}", "method=qlora", "trainer.max_steps=2", "trainer.progress=false",
         "task.max_eval_samples=8", f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "warn" not in text.lower(), text[-2000:]


REPORT = ("\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: /models/minilm\n"
          "Key               | Status  | \n------------------+---------+-\n{rows}\n\nNotes:\n"
          "- MISSING:\tthose params were newly initialized because missing from the checkpoint.")


@pytest.mark.parametrize("rows,shown", [
    ("classifier.weight | MISSING | \nclassifier.bias   | MISSING | ", False),  # the task head fine-tuning adds
    ("classifier.weight | MISSING | \nlm_head.dense.weight | UNEXPECTED | ", False),  # + the dropped MLM head
    ("classifier.weight | MISSING | \nbert.encoder.layer.0.attention.self.query.weight | MISSING | ", True),
    ("classifier.weight | MISMATCH | ", True),  # a shape mismatch is a real problem
    ("bert.pooler.dense.weight | UNEXPECTED | ", True),
])
def test_a_load_report_is_dropped_only_when_it_lists_the_new_head(rows: str, shown: bool, caplog) -> None:
    quiet_known_warnings()
    log = logging.getLogger(quiet.TRANSFORMERS_LOAD_LOGGER)
    with caplog.at_level(logging.WARNING, logger=quiet.TRANSFORMERS_LOAD_LOGGER):
        log.warning(REPORT.format(rows=rows))
    assert bool(caplog.records) is shown
