"""analysis/bench_train.py: the step-time cut, and one tiny cell through both loops."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "analysis"))
import bench_train  # noqa: E402


def test_interval_step_times_divides_each_interval_by_its_own_steps_and_drops_the_first() -> None:
    # logged at steps 1, 5, 10 (log_every 5): intervals 2-5 (4 steps) and 6-10 (5 steps)
    assert bench_train.interval_step_times({10: 8.0, 1: 1.0, 5: 3.0}, start=0.0) == [0.5, 1.0]


@pytest.mark.slow
def test_one_cell_trains_the_same_model_on_the_same_batch_both_ways(synthetic_glue: Path, tmp_path: Path) -> None:
    bench_train.main(["--models", "tiny", "--methods", "lora_fa", "--reps", "1", "--steps", "6", "--log-every", "2",
                      "--data-dir", str(synthetic_glue), "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "train_bench.json").read_text())["rows"]
    ours, hf = row["ours"], row["trainer"]
    assert ours["first_loss"] == pytest.approx(hf["first_loss"], abs=1e-6)  # same init, batch and dropout masks
    assert ours["trainable"] == hf["trainable"] > 0
    assert row["time_ratio"] == pytest.approx(ours["step_ms"] / hf["step_ms"])
    for impl in (ours, hf):  # high-water marks: training's cannot be below loading's
        assert impl["peak_rss_mib"] >= impl["load_rss_mib"] > 0
    assert "| tiny | lora_fa |" in (tmp_path / "train_bench.md").read_text()
