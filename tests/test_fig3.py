"""Figure 3 script (issue #4): the points it plans, and rendering from stored points alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


@pytest.fixture(scope="module")
def fig3() -> ModuleType:
    spec = importlib.util.spec_from_file_location("analysis_fig3", REPO / "analysis" / "fig3_memory_vs_rank.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_planned_points_cover_every_panel_and_the_settings_study(fig3: ModuleType) -> None:
    cfgs = fig3.planned_points(40.0)
    keys = {(c.model, c.method, c.rank, c.dtype, c.gradient_checkpointing) for c in cfgs}
    assert len(keys) == len(cfgs), "duplicate points"
    for panel in fig3.PANELS:
        for method in fig3.METHODS:
            for rank in fig3.RANKS:
                assert (panel.model, method, rank, "fp32", panel.gradient_checkpointing) in keys
    for dtype, ckpt in fig3.STUDY:
        assert ("llama-7b", "lora_fa", fig3.STUDY_RANK, dtype, ckpt) in keys
    roberta = next(c for c in cfgs if c.model == "roberta-large")
    llama = next(c for c in cfgs if c.model == "llama-7b")
    assert (roberta.batch_size, roberta.seq_len) == (64, 128)  # the paper's Figure 3 settings
    assert (llama.batch_size, llama.seq_len, llama.target_len) == (32, 128, 128)
    names = {fig3.point_name(c.model, c.method, c.rank, c.dtype, c.gradient_checkpointing) for c in cfgs}
    assert len(names) == len(cfgs), "two points would share a file"


def _store(out: Path, fig3: ModuleType, model: str, method: str, rank: int, gib: float, *,
           dtype: str = "fp32", ckpt: bool = False) -> None:
    path = fig3.point_path(out, model, method, rank, dtype, ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "method": method, "rank": rank, "dtype": dtype, "gradient_checkpointing": ckpt}
    from lorafa_repro.results import new_result

    result = {**new_result("memory_probe", config), "status": "success",
              "memory": {"peak_bytes": int(gib * GIB), "backend": "simulate", "device": "fake tensors"}}
    path.write_text(json.dumps(result))


def test_renders_from_stored_points_without_recomputing(fig3: ModuleType, tmp_path: Path, monkeypatch) -> None:
    import lorafa_repro.memory.probe as probe

    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: pytest.fail("--plot-only must not probe"))
    for rank in fig3.RANKS:
        _store(tmp_path, fig3, "roberta-large", "lora", rank, 20.0 + rank / 64)
        _store(tmp_path, fig3, "roberta-large", "lora_fa", rank, 15.0 + rank / 64)
    _store(tmp_path, fig3, "llama-7b", "lora", 8, 33.0, ckpt=True)
    _store(tmp_path, fig3, "llama-7b", "lora_fa", 8, 32.5, ckpt=True)
    _store(tmp_path, fig3, "llama-7b", "lora", 8, 18.0, dtype="bf16", ckpt=True)

    assert fig3.main(["--out", str(tmp_path), "--plot-only"]) == 0
    for name in ("fig3_memory_vs_rank.pdf", "fig3_memory_vs_rank.png"):
        assert (tmp_path / name).stat().st_size > 1000
    md = (tmp_path / "fig3_memory_vs_rank.md").read_text()
    assert "Mean gap: ours 5.00 GiB; paper: ~5 GB" in md
    assert "| 8 | 20.12 | 15.12 | 5.00 |" in md
    assert "| fp32 | on | 33.00 | 32.50 | 0.50 | both | both |" in md
    assert "| bf16 | on | 18.00 | - | - | - | - |" in md  # a missing point is shown as missing, not invented
    points = fig3.load_points(tmp_path)
    panel = next(p for p in fig3.PANELS if p.model == "llama-7b" and p.gradient_checkpointing)
    assert fig3.panel_gap(points, panel) == pytest.approx(0.5)
    assert fig3.panel_gap(points, fig3.PANELS[1]) is None  # no points for LLaMA without checkpointing
