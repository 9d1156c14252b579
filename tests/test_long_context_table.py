"""analysis/long_context_memory.py on tiny-llama: cells run, the table renders, LoRA-FA's saving shows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("long_context_memory", REPO / "analysis" / "long_context_memory.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~20 s: four simulated cells
def test_table_on_tiny_llama(tmp_path: Path) -> None:
    lc = _module()
    wanted = {"lora", "lora_fa", "longlora", "longlora_fa"}
    todo = [(row, cfg) for row, cfg in lc.cells("tiny-llama", [256], rank=4, budget_gb=1.0)
            if row.key in wanted and cfg.attn == "eager" and not cfg.gradient_checkpointing]
    assert len(todo) == 4 and all(c.batch_size == 1 and c.dtype == "bf16" for _, c in todo)
    lc.run_cells(todo, tmp_path)
    table = lc.load(tmp_path)
    peak = {k[0]: r["memory"]["peak_bytes"] for k, r in table.items()}
    assert peak["lora_fa"] < peak["lora"] and peak["longlora_fa"] < peak["longlora"]
    # S2 groups of 64 instead of 256 tokens: the eager score matrices shrink, and so does the peak
    assert peak["longlora"] < peak["lora"]
    text = lc.render(tmp_path, "tiny-llama")
    assert "LongLoRA-FA (LoRA-FA + S2 + embed/norm)" in text
    assert f"{peak['lora'] / lc.GIB:,.1f}" in text
    assert (tmp_path / "long_context.csv").read_text().count("\n") == 5
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/result.json")}
    lc.run_cells(todo, tmp_path)  # stored cells are skipped
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/result.json")}
