"""Figures 2 and 4 render from run files alone (result.json + metrics.jsonl of tiny real runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from conftest import REPO, compose_cfg
from lorafa_repro.run import run

TINY = ["model=tiny_roberta", "trainer=tiny", "trainer.log_every=1", "task.max_train_samples=32"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _first_loss(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if "loss" in r)


def test_fig2_curves_from_metrics_jsonl(synthetic_glue: Path, tmp_path: Path) -> None:
    fig2 = _load("fig2_convergence")
    raw = tmp_path / "raw"
    for task in ("cola", "sst2"):
        for method in ("ft", "lora", "lora_fa"):
            seeds = (0, 1) if method == "lora_fa" else (0,)
            for seed in seeds:
                cfg = compose_cfg(TINY + [f"task=glue/{task}", f"task.data_dir={synthetic_glue}", f"method={method}",
                                          "trainer.max_steps=6", f"seed={seed}"])
                assert run(cfg, raw / task / f"{method}_s{seed}")["status"] == "success"
    # a failed run is ignored
    (raw / "broken").mkdir()
    (raw / "broken" / "result.json").write_text(json.dumps({**json.loads((raw / "cola" / "ft_s0" / "result.json")
                                                                        .read_text()), "status": "failed",
                                                            "error": "boom"}))

    fig2.render(raw, tmp_path / "out", model="tiny-roberta (random init)", tasks=("cola", "sst2"))
    for name in ("fig2_convergence.pdf", "fig2_convergence.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    md = (tmp_path / "out" / "fig2_convergence.md").read_text()
    curves = fig2.load_curves(raw, "tiny-roberta (random init)", ["cola", "sst2"])
    lr = 5e-4  # the optimizer default every run here used
    assert len(curves[("cola", "lora_fa", lr)]) == 2 and len(curves[("cola", "ft", lr)]) == 1
    assert sorted(curves[("sst2", "lora", lr)][0]) == [1, 2, 3, 4, 5, 6]
    ft_first = _first_loss(raw / "cola" / "ft_s0")
    assert f"| cola | FT | 0.0005 | 1 | 6 | {ft_first:.4f} |" in md
    assert "| 1.000 |" in md  # FT against itself
    fa = (_first_loss(raw / "sst2" / "lora_fa_s0") + _first_loss(raw / "sst2" / "lora_fa_s1")) / 2
    assert f"| sst2 | LoRA-FA | 0.0005 | 2 | 6 | {fa:.4f} |" in md
    scores = [json.loads((raw / "sst2" / f"lora_fa_s{s}" / "result.json").read_text())["metrics"]["final"]["score"]
              for s in (0, 1)]
    assert fig2.final_scores(raw, "tiny-roberta (random init)", ["sst2"])[("sst2", "lora_fa", lr)] == \
        pytest.approx(100 * sum(scores) / 2)  # the median of two runs
    assert f"| {100 * sum(scores) / 2:.1f} |" in md
    last = fig2.score_curve(raw / "sst2" / "lora_fa_s0")
    assert last[max(last)] == pytest.approx(scores[0])  # the final evaluation is the run's final score


def test_fig2_keeps_learning_rates_apart() -> None:
    """Runs at different learning rates are different curves (only seeds are averaged); FT's reference is
    its learning rate with the lowest second-half loss."""
    fig2 = _load("fig2_convergence")
    curves = {("sst2", "ft", 1e-4): [{1: 1.0, 2: 0.8}], ("sst2", "ft", 1e-3): [{1: 1.0, 2: 0.4}],
              ("sst2", "lora_fa", 5e-4): [{1: 1.0, 2: 0.6}], ("sst2", "lora_fa", 2e-3): [{1: 1.0, 2: 0.2}]}
    rows = fig2.summarize(curves, ["sst2"])
    by = {(r["method"], r["lr"]): r for r in rows}
    assert set(by) == {("ft", 1e-4), ("ft", 1e-3), ("lora_fa", 5e-4), ("lora_fa", 2e-3), ("lora", None)}
    assert by[("ft", 1e-3)]["vs_ft"] == pytest.approx(1.0)
    assert by[("lora_fa", 5e-4)]["vs_ft"] == pytest.approx(1.5)
    assert by[("lora_fa", 2e-3)]["vs_ft"] == pytest.approx(0.5)
    assert by[("lora", None)]["runs"] == 0


def test_fig2_seed_band_spread_and_steps_to_fraction_of_final() -> None:
    fig2 = _load("fig2_convergence")
    loss = {("sst2", "lora", 1e-3): [{1: 0.7, 2: 0.5, 3: 0.3}, {1: 0.7, 2: 0.4, 3: 0.2}, {1: 0.7, 2: 0.6, 3: 0.4}]}
    assert fig2.band(loss[("sst2", "lora", 1e-3)]) == {1: (0.7, 0.7), 2: (0.4, 0.6), 3: (0.2, 0.4)}  # min-max
    # dev scores every 100 steps; 95% of each run's own final: run 1 reaches it at 200, run 2 at 300
    scores = {("sst2", "lora", 1e-3): [{100: 0.6, 200: 0.86, 300: 0.9}, {100: 0.6, 200: 0.8, 300: 0.9},
                                       {300: 0.9}]}
    (row,) = [r for r in fig2.summarize(loss, ["sst2"], score_curves=scores) if r["method"] == "lora"]
    assert row["final_loss_sd"] == pytest.approx(0.1)  # sample sd of 0.3, 0.2, 0.4 (the se would be 0.058)
    assert row["steps_n"] == 2  # the run with only a final evaluation has no curve to read
    assert row["steps_to"] == (pytest.approx(250.0), pytest.approx(70.7106781))
    (other,) = [r for r in fig2.summarize(loss, ["sst2"], score_curves=scores, fraction=0.6)
                if r["method"] == "lora"]
    assert other["steps_to"][0] == pytest.approx(100.0)
    md = fig2.to_markdown(fig2.summarize(loss, ["sst2"], score_curves=scores), Path("raw"), "m")
    assert "| Steps to 95% of final score |" in md and "| 0.1000 | 250 ± 71 |" in md


def test_fig2_mean_curve_and_second_half() -> None:
    fig2 = _load("fig2_convergence")
    mean = fig2.mean_curve([{1: 2.0, 2: 1.0, 4: 0.5}, {1: 4.0, 2: 3.0}])
    assert mean == {1: 3.0, 2: 2.0}  # only the steps both runs logged
    assert fig2.second_half_mean({1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0}) == pytest.approx(1.5)  # steps 3 and 4


def test_fig4_grid_from_result_files(synthetic_glue: Path, tmp_path: Path) -> None:
    fig4 = _load("fig4_rank_lr_heatmap")
    raw = tmp_path / "raw"
    expected = {}
    for method in ("lora", "lora_fa"):
        for rank in (1, 4, 16):
            for lr in (1e-4, 3e-2):
                cfg = compose_cfg(TINY + ["task=glue/mrpc", f"task.data_dir={synthetic_glue}", f"method={method}",
                                          f"method.rank={rank}", f"optim.lr={lr}", "trainer.max_steps=12",
                                          "optim.warmup_ratio=0"])
                result = run(cfg, raw / f"{method}_r{rank}_lr{lr}")
                expected[(method, rank, lr)] = 100 * result["metrics"]["final"]["score"]
    fig4.render(raw, tmp_path / "out", model="tiny-roberta (random init)", task="mrpc")
    for name in ("fig4_rank_lr_heatmap.pdf", "fig4_rank_lr_heatmap.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    grid = fig4.load_grid(raw, "tiny-roberta (random init)", "mrpc")
    assert len(grid) == 12 and (grid["seeds"] == 1).all()
    assert fig4.load_grid(raw, "tiny-roberta", "mrpc").empty  # random-init runs never pass for pretrained ones
    for _, row in grid.iterrows():
        assert row["score"] == pytest.approx(expected[(row["method"], row["rank"], row["lr"])])
    md = (tmp_path / "out" / "fig4_rank_lr_heatmap.md").read_text()
    assert "| Rank \\ lr | 0.0001 | 0.03 | Best lr |" in md
    for rank in (1, 4, 16):
        low, high = (expected[("lora_fa", rank, lr)] for lr in (1e-4, 3e-2))
        best = 3e-2 if high > low else 1e-4  # ties go to the smaller learning rate
        assert f"| {rank} | {low:.1f} | {high:.1f} | {best:g} |" in md
    assert len({round(v, 3) for v in expected.values()}) > 1, "the grid should not be flat"


def test_fig4_best_lr_and_rank_correlation() -> None:
    fig4 = _load("fig4_rank_lr_heatmap")
    table = pd.DataFrame({1e-4: [50.0, 60.0, 70.0, 90.0], 1e-3: [60.0, 80.0, 75.0, 70.0],
                          1e-2: [90.0, 70.0, 60.0, 50.0]}, index=[1, 4, 16, 64])
    assert fig4.best_lr_per_rank(table) == {1: 1e-2, 4: 1e-3, 16: 1e-3, 64: 1e-4}
    assert fig4.rank_lr_correlation(table) == pytest.approx(-0.9486833)  # falls as the rank grows
    assert fig4.rank_lr_correlation(table.iloc[:2]) is None  # too few ranks
    flat = pd.DataFrame({1e-4: [1.0, 1.0, 1.0], 1e-3: [2.0, 2.0, 2.0]}, index=[1, 2, 4])
    assert fig4.rank_lr_correlation(flat) is None  # one best lr for every rank: no correlation to report


@pytest.mark.parametrize("name", ["fig2_convergence", "fig4_rank_lr_heatmap"])
def test_no_runs_is_one_clear_message_and_writes_nothing(name: str, tmp_path: Path, capsys) -> None:
    module = _load(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--results", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no successful" in err and "Fix: run the sweep first" in err and "--config-dir sweeps" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_fig4_splits_scalings_and_reports_best_lr_across_seeds(synthetic_glue: Path, tmp_path: Path) -> None:
    """Runs of both scalings and two seeds: one panel each, cells are seed means, and a run from before
    method.alpha_scaling existed reads as standard."""
    fig4 = _load("fig4_rank_lr_heatmap")
    raw, label = tmp_path / "raw", "tiny-roberta (random init)"
    for scaling in ("standard", "rslora"):
        for seed in (0, 1):
            cfg = compose_cfg(TINY + ["task=glue/mrpc", f"task.data_dir={synthetic_glue}", "method=lora_fa",
                                      "method.rank=4", f"method.alpha_scaling={scaling}", "trainer.max_steps=2",
                                      f"seed={seed}"])
            assert run(cfg, raw / f"{scaling}_s{seed}")["status"] == "success"
    old = raw / "standard_s1" / "result.json"
    data = json.loads(old.read_text())
    del data["config"]["method"]["alpha_scaling"]
    old.write_text(json.dumps(data))
    runs = fig4.load_runs(raw, label, "mrpc")
    assert sorted(zip(runs["scaling"], runs["seed"])) == [("rslora", 0), ("rslora", 1), ("standard", 0),
                                                           ("standard", 1)]
    grid = fig4.load_grid(raw, label, "mrpc")
    for scaling in ("standard", "rslora"):
        cell = grid[grid["scaling"] == scaling].iloc[0]
        scores = runs[runs["scaling"] == scaling]["score"]
        assert cell["seeds"] == 2 and cell["score"] == pytest.approx(scores.mean())
        assert cell["sd"] == pytest.approx(scores.std(ddof=1))
    assert fig4.panels(grid) == [("lora", "standard"), ("lora_fa", "standard"), ("lora", "rslora"),
                                 ("lora_fa", "rslora")]
    fig4.render(raw, tmp_path / "out", model=label, task="mrpc", n_boot=50)
    md = (tmp_path / "out" / "fig4_rank_lr_heatmap.md").read_text()
    assert "## LoRA-FA, rsLoRA, alpha / sqrt(r)" in md and "## LoRA-FA, alpha / r" in md


def test_fig4_best_lr_per_seed_and_grid_edges() -> None:
    fig4 = _load("fig4_rank_lr_heatmap")
    rows = []
    # rank 1: both seeds best at 2e-3 (inside); rank 8: seed 0 best at 4e-3 (the edge), seed 1 at 2e-3
    for rank, seed, scores in ((1, 0, (70, 80, 75)), (1, 1, (72, 79, 70)), (8, 0, (60, 70, 90)),
                               (8, 1, (61, 80, 75)), (64, 0, (80, 70, 60)), (64, 1, (82, 71, 60))):
        rows += [{"method": "lora_fa", "scaling": "rslora", "rank": rank, "lr": lr, "seed": seed, "score": s}
                 for lr, s in zip((1e-3, 2e-3, 4e-3), scores)]
    per_rank, per_pair = fig4.summarize(pd.DataFrame(rows), n_boot=100)
    by_rank = {r["rank"]: r for r in per_rank}
    assert by_rank[1]["best_lr"] == 2e-3 and not by_rank[1]["edge"]
    assert by_rank[8]["best_lr"] == 4e-3 and by_rank[8]["edge"]  # mean 82.5 at 4e-3 beats 75 at 2e-3
    assert by_rank[8]["seed_best"] == {0: 4e-3, 1: 2e-3}
    assert by_rank[64]["best_lr"] == 1e-3 and by_rank[64]["edge"]
    (pair,) = per_pair
    assert pair["rho"] == pytest.approx(-0.5)  # best lrs 2e-3, 4e-3, 1e-3 over ranks 1, 8, 64
    assert pair["low"] <= pair["rho"] <= pair["high"] and pair["seeds"] == [2]
