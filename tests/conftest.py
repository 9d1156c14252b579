"""Shared fixtures: composed Hydra configs, synthetic GLUE data, the optional ../shared/data layer."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per test process (and for the subprocesses tests start): the tiny models gain nothing from
# more, and a loaded machine (or `pytest -n 2`) is not oversubscribed. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lorafa_repro.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = Path(os.environ.get("LORAFA_SHARED_DATA", REPO.parent / "shared" / "data"))

register_configs()


def compose_cfg(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml with overrides, as the CLI would."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides)


@pytest.fixture(scope="session")
def synthetic_glue(tmp_path_factory) -> Path:
    """A GLUE folder in the original on-disk layout with learnable synthetic data for every task."""
    from lorafa_repro.tasks.glue_data import GLUE_TASKS, write_synthetic_glue

    root = tmp_path_factory.mktemp("glue")
    return write_synthetic_glue(root, tasks=list(GLUE_TASKS), n_train=96, n_dev=32, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real public data in ../shared/data; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set LORAFA_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA
