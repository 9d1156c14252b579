"""Scale-out configs (issue 11, item 4): Hydra's submitit (SLURM) and joblib launchers and the Optuna sweeper
over the paper's lr x rank grid. The plugins come with ``pip install -e ".[scale]"``; tests that need one skip
when it is missing. Multi-process DDP/FSDP is tested in tests/test_distributed.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO
from lorafa_repro.results import read_result

def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"hydra_plugins.{module}") is not None
    except ModuleNotFoundError:  # no hydra plugin installed at all
        return False


HAS = {name: _has(mod) for name, mod in (
    ("submitit", "hydra_submitit_launcher"), ("joblib", "hydra_joblib_launcher"), ("optuna", "hydra_optuna_sweeper"))}


def _choices(text: str) -> list[float]:
    assert text.startswith("choice(") and text.endswith(")"), text
    return [float(x) for x in text[len("choice("):-1].split(",")]


def test_optuna_search_covers_the_papers_grid_within_a_budget() -> None:
    """The Optuna study searches exactly the Figure 4 grid (the full-grid sweep's values) with fewer trials."""
    optuna = OmegaConf.load(REPO / "sweeps" / "optuna_rank_lr_mrpc.yaml").hydra.sweeper
    grid = OmegaConf.load(REPO / "sweeps" / "rank_lr_mrpc.yaml").hydra.sweeper.params
    ranks = [float(x) for x in str(grid["method.rank"]).split(",")]
    lrs = [float(x) for x in str(grid["optim.lr"]).split(",")]
    assert _choices(optuna.params["method.rank"]) == ranks == [1, 2, 4, 8, 16, 32, 64, 128]
    assert _choices(optuna.params["optim.lr"]) == lrs and len(lrs) == 14
    assert optuna.direction == "maximize" and 0 < optuna.n_trials < len(ranks) * len(lrs)


def _compose(overrides: list[str], config_dir: Path = CONF_DIR, name: str = "train"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


@pytest.mark.skipif(not HAS["submitit"], reason='pip install -e ".[scale]" for the submitit launcher')
def test_slurm_launcher_config_composes() -> None:
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.signal_delay_s == 120


@pytest.mark.skipif(not HAS["joblib"], reason='pip install -e ".[scale]" for the joblib launcher')
def test_joblib_launcher_config_composes() -> None:
    cfg = _compose(["hydra/launcher=local_parallel"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


@pytest.mark.skipif(not HAS["optuna"], reason='pip install -e ".[scale]" for the Optuna sweeper')
def test_optuna_sweep_composes() -> None:
    cfg = _compose([f"hydra.searchpath=[file://{CONF_DIR}]"], REPO / "sweeps", "optuna_rank_lr_mrpc")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.n_trials == 30


@pytest.mark.slow
@pytest.mark.skipif(not HAS["joblib"], reason='pip install -e ".[scale]" for the joblib launcher')
def test_joblib_multirun_goes_on_after_a_failed_cell(synthetic_glue: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "-m", "hydra/launcher=local_parallel", "model=tiny_roberta",
         "trainer=tiny", f"task.data_dir={synthetic_glue}", "trainer.max_steps=2", "method=lora",
         "method.rank=4", "trainer.fault=error@1,null", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 1 and "1 of 2 cells did not succeed" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(read_result(p)["status"] for p in tmp_path.rglob("result.json")) == ["failed", "success"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS["optuna"], reason='pip install -e ".[scale]" for the Optuna sweeper')
def test_optuna_sweep_runs_trials(synthetic_glue: Path, tmp_path: Path) -> None:
    """The Optuna sweep file on the tiny model: 3 trials, each an ordinary run dir with a result.json."""
    proc = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "--config-dir", str(REPO / "sweeps"), "--config-name",
         "optuna_rank_lr_mrpc", "model=tiny_roberta", "trainer=tiny", "trainer.max_steps=2", "method=lora_fa",
         f"task.data_dir={synthetic_glue}", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [read_result(p) for p in tmp_path.rglob("result.json")]
    assert len(results) == 3 and all(r["status"] == "success" for r in results)
    assert (tmp_path / "optimization_results.yaml").exists()


def test_scale_extra_keeps_hydra_off_pre_releases() -> None:
    """The plugins ask for hydra-core>=1.1.0.dev7, a specifier that lets pip pick pre-releases (1.4.0rc3):
    the extra must carry the suite's own upper bound, and the Hydra installed must be a release."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    import hydra

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for reqs in (project["dependencies"], project["optional-dependencies"]["scale"]):
        hydra_req = next(Requirement(r) for r in reqs if Requirement(r).name == "hydra-core")
        assert not hydra_req.specifier.contains("1.4.0rc3", prereleases=True)
    assert not Version(hydra.__version__).is_prerelease
