"""Table 1 renders from result.json files alone, next to the paper's numbers."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from conftest import REPO, compose_cfg
from lorafa_repro.run import run


def _table1():
    spec = importlib.util.spec_from_file_location("table1", REPO / "analysis" / "table1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table1_renders_runs_next_to_the_paper(synthetic_glue: Path, tmp_path: Path) -> None:
    for seed in (0, 1):
        cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "trainer.max_steps=2", "method=lora_fa",
                           "task=glue/rte", f"task.data_dir={synthetic_glue}", f"seed={seed}"])
        run(cfg, tmp_path / "raw" / f"seed{seed}")
    table = _table1().render(tmp_path / "raw", tmp_path / "out")
    row = table[(table["model"] == "tiny-roberta (random init)") & (table["method"] == "lora_fa")].iloc[0]
    assert 0 <= row["rte_ours"] <= 100 and row["mrpc_ours"] is None
    paper = table[(table["model"] == "roberta-base") & (table["method"] == "lora_fa")].iloc[0]
    assert paper["rte_paper"] == 67.9
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| roberta-base | lora_fa | 1.8 / - |" in md  # no random-init run fills the paper's pretrained row
    assert "| tiny-roberta (random init) | lora_fa |" in md


def test_table1_reports_the_best_configuration_of_the_search(synthetic_glue: Path, tmp_path: Path) -> None:
    """Several learning rates (one with two seeds): each configuration is scored by its median over seeds,
    and the cell shows the best configuration, as the paper reports the best of its lr x rank search."""
    runs = {(1e-4, 0): None, (1e-4, 1): None, (3e-2, 0): None}
    for lr, seed in runs:
        cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "trainer.max_steps=12", "optim.warmup_ratio=0",
                           "method=lora_fa", "task=glue/sst2", f"task.data_dir={synthetic_glue}", f"optim.lr={lr}",
                           f"seed={seed}", "task.max_train_samples=32"])
        out = tmp_path / "raw" / f"lr{lr}_s{seed}"
        run(cfg, out)
        runs[(lr, seed)] = 100 * json.loads((out / "result.json").read_text())["metrics"]["final"]["score"]
    per_config = {1e-4: statistics.median([runs[(1e-4, 0)], runs[(1e-4, 1)]]), 3e-2: runs[(3e-2, 0)]}
    table = _table1().render(tmp_path / "raw", tmp_path / "out")
    row = table[table["model"] == "tiny-roberta (random init)"].iloc[0]
    assert row["sst2_ours"] == pytest.approx(round(max(per_config.values()), 1))
    assert per_config[row["sst2_lr"]] == max(per_config.values())
    assert row["sst2_configs"] == 2 and row["sst2_seeds"] == (2 if row["sst2_lr"] == 1e-4 else 1)
    assert row["sst2_rank"] == 8


def test_table1_seeds_spread_and_paired_difference(synthetic_glue: Path, tmp_path: Path) -> None:
    """Three seeds per method: mean ± sample sd, the median stays the table's number, and LoRA-FA - LoRA is
    paired by seed (scipy's ttest_rel interval); FT (rank null) is a row too; --chosen names each cell's lr."""
    from scipy.stats import ttest_rel

    scores: dict[tuple[str, int], float] = {}
    for method in ("ft", "lora", "lora_fa"):
        for seed in (0, 1, 2):
            cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "trainer.max_steps=3", f"method={method}",
                               "task=glue/sst2", f"task.data_dir={synthetic_glue}", f"seed={seed}",
                               "task.max_train_samples=32", "optim.lr=1e-2"])
            result = run(cfg, tmp_path / "raw" / f"{method}_s{seed}")
            scores[(method, seed)] = 100 * result["metrics"]["final"]["score"]
    mod = _table1()
    table = mod.render(tmp_path / "raw", tmp_path / "out")
    label = "tiny-roberta (random init)"
    for method in ("ft", "lora", "lora_fa"):
        row = table[(table["model"] == label) & (table["method"] == method)].iloc[0]
        vals = [scores[(method, s)] for s in (0, 1, 2)]
        assert row["sst2_seeds"] == 3 and row["sst2_ours"] == pytest.approx(round(statistics.median(vals), 1))
        assert row["sst2_mean"] == pytest.approx(statistics.mean(vals))
        assert row["sst2_sd"] == pytest.approx(statistics.stdev(vals))
    fa, lora = ([scores[(m, s)] for s in (0, 1, 2)] for m in ("lora_fa", "lora"))
    (diff,) = [r for r in mod.seed_rows(mod.ours(tmp_path / "raw")) if r["method"] == "lora_fa - lora"]
    assert diff["pairs"] == 3 and diff["diff"] == pytest.approx(statistics.mean(fa) - statistics.mean(lora))
    if len({a - b for a, b in zip(fa, lora)}) > 1:  # constant differences have no t interval to compare
        ci = ttest_rel(fa, lora).confidence_interval(0.95)
        assert (diff["low"], diff["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "## Seeds of each chosen configuration (ours)" in md and "| LoRA-FA - LoRA | | 3 pairs |" in md
    assert mod.chosen(mod.per_config(tmp_path / "raw")) == [("sst2", m, 1e-2) for m in ("ft", "lora", "lora_fa")]


def test_table1_grid_marks_the_chosen_lr_and_its_edge(tmp_path: Path) -> None:
    """The lr search section: scores in ascending lr, the best chosen (median over seeds, not the mean), and an
    optimum at the smallest / largest lr flagged as the grid's edge, an interior one not."""
    import pandas as pd

    mod = _table1()
    row = dict(model="m", rank=8, alpha_scaling="standard", trainable=1, sd=0.0, seeds=1, seed_scores={})
    frame = pd.DataFrame([
        {**row, "task": "sst2", "method": "lora", "lr": 4e-3, "score": 80.0, "mean": 80.0},
        {**row, "task": "sst2", "method": "lora", "lr": 1e-3, "score": 70.0, "mean": 70.0},
        {**row, "task": "sst2", "method": "lora", "lr": 2e-3, "score": 75.0, "mean": 90.0},  # mean is not the score
        {**row, "task": "sst2", "method": "ft", "lr": 1e-4, "score": 60.0, "mean": 60.0},
        {**row, "task": "sst2", "method": "ft", "lr": 2e-5, "score": 65.0, "mean": 65.0},
        {**row, "task": "sst2", "method": "ft", "lr": 5e-5, "score": 85.0, "mean": 85.0},
        {**row, "task": "mrpc", "method": "ft", "lr": 5e-5, "score": 85.0, "mean": 85.0},
        {**row, "task": "mrpc", "method": "lora", "lr": 1e-3, "score": 71.0, "mean": 71.0},
        {**row, "task": "mrpc", "method": "lora", "lr": 2e-3, "score": 70.0, "mean": 70.0},
        {**row, "task": "sst2", "method": "lora", "rank": 64, "lr": 1e-3, "score": 95.0, "mean": 95.0},  # own row
        {**row, "task": "sst2", "method": "lora", "rank": 64, "lr": 2e-3, "score": 90.0, "mean": 90.0},
    ])
    by_rank = {(r["task"], r["method"], r["rank"]): r for r in mod.grid_rows(frame)}
    assert (by_rank[("sst2", "lora", 64)]["chosen"], by_rank[("sst2", "lora", 64)]["where"]) == (1e-3, "low")
    assert "| m | sst2 | lora (r=64, standard) | **0.001: 95.0**, 0.002: 90.0 | 0.001 | edge (smallest) |" in "\n".join(
        mod._grid_lines(mod.grid_rows(frame), tmp_path))
    frame = frame[frame["rank"] == 8]
    got = {(r["task"], r["method"]): r for r in mod.grid_rows(frame)}
    assert list(got[("sst2", "lora")]["scores"]) == [1e-3, 2e-3, 4e-3]
    assert (got[("sst2", "lora")]["chosen"], got[("sst2", "lora")]["where"]) == (4e-3, "high")
    assert (got[("sst2", "ft")]["chosen"], got[("sst2", "ft")]["where"]) == (5e-5, "inside")
    assert (got[("mrpc", "lora")]["chosen"], got[("mrpc", "lora")]["where"]) == (1e-3, "low")
    assert got[("mrpc", "ft")]["where"] == "one lr"
    lines = "\n".join(mod._grid_lines(mod.grid_rows(frame), tmp_path))
    assert "| m | sst2 | lora | 0.001: 70.0, 0.002: 75.0, **0.004: 80.0** | 0.004 | edge (largest) |" in lines
