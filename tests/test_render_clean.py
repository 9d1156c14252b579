"""Rendering never dirties the checkout (issue #17): `make render` rewrites every committed table and figure
byte for byte from the committed result files, and the reuse targets (`make reproduce-table4`, `make fig3`,
`make long-context-memory`) find every committed cell current, so they recompute and rewrite nothing."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analysis"))


def _tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_render_rewrites_every_committed_file_byte_for_byte(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    for name in ("results", "analysis"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Makefile", copy / "Makefile")
    before = _tree(copy / "results")
    out = subprocess.run(["make", "-s", "render", f"PYTHON={sys.executable}"], cwd=copy, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _tree(copy / "results")
    assert sorted(set(after) - set(before)) == []  # nothing new (no stray table folders)
    changed = [k for k in before if not filecmp.cmp(before[k], REPO / "results" / k, shallow=False)
               or not filecmp.cmp(after[k], REPO / "results" / k, shallow=False)]
    assert changed == [], f"re-rendering changed committed files: {changed}"
    assert "wrote" in out.stdout  # it did render


def test_every_committed_memory_cell_is_current_so_reuse_targets_recompute_nothing() -> None:
    """A cell is reused only when its config, backend and code fingerprint match; a stale one would be
    recomputed (minutes each) and rewritten. Fix when this fails: make reproduce-table4; python -m
    lorafa_repro.memory.table4 --gradient-checkpointing; make fig3; make long-context-memory; commit."""
    import long_context_memory as lc
    from fig3_memory_vs_rank import planned_points, point_path

    from lorafa_repro.memory.table4 import cell_name, is_current, table_cells

    stale = []
    for folder, ckpt in (("table4", False), ("table4_ckpt", True)):
        for cfg in table_cells(None, budget_gb=40.0, gradient_checkpointing=ckpt):
            if not is_current(REPO / "results" / folder / cell_name(cfg) / "result.json", cfg, "simulate"):
                stale.append(f"{folder}/{cell_name(cfg)}")
    for cfg in planned_points(40.0):
        path = point_path(REPO / "results", cfg.model, cfg.method, cfg.rank, cfg.dtype, cfg.gradient_checkpointing)
        if not is_current(path, cfg, "simulate"):
            stale.append(str(path.relative_to(REPO)))
    for row, cfg in lc.cells("llama-7b", [8192, 16384], 8, 80.0):
        if not lc.is_stored(lc.cell_dir(REPO / "results" / "long_context", row, cfg) / "result.json", cfg):
            stale.append(f"long_context/{row.key} {cfg.seq_len} {cfg.attn} ckpt={cfg.gradient_checkpointing}")
    assert stale == [], (f"{len(stale)} committed memory cells are stale for this code, e.g. {stale[:5]}. Fix: make "
                         "reproduce-table4; python -m lorafa_repro.memory.table4 --gradient-checkpointing; make fig3; "
                         "make long-context-memory; commit (docs/memory.md)")
