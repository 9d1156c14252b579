"""Extra layer on real public data (../shared/data); skipped with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

from conftest import compose_cfg
from lorafa_repro.results import read_result
from lorafa_repro.run import run


def test_50_step_tiny_run_on_real_mrpc(shared_data: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "trainer.max_steps=50", "trainer.log_every=10",
                       "method=lora_fa", "method.rank=4", "task=glue/mrpc",
                       f"task.data_dir={shared_data / 'glue'}", "task.max_eval_samples=128"])
    run(cfg, tmp_path)
    data = read_result(tmp_path / "result.json")
    assert data["status"] == "success"
    assert data["timing"]["steps"] == 50
    assert {"accuracy", "f1", "score"} <= set(data["metrics"]["final"])
    assert 0.0 <= data["metrics"]["final"]["accuracy"] <= 1.0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 6
