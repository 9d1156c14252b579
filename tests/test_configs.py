"""Every config composes; bad values fail before any model is loaded, with a message naming the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF_DIR, REPO, compose_cfg
from lorafa_repro.schema import ConfigError, validate


def _options(group: str) -> list[str]:
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "task", "method", "optim", "trainer"])
def test_every_option_composes(group: str) -> None:
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for opt in options:
        cfg = compose_cfg([f"{group}={opt}"])
        assert cfg[group] is not None


def test_every_config_starts_with_the_command_that_uses_it() -> None:
    for path in list(CONF_DIR.rglob("*.yaml")) + list((REPO / "sweeps").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and ("python" in first or "make" in first), f"{path}: {first!r}"


def test_method_configs_share_keys() -> None:
    keys = {opt: set(compose_cfg([f"method={opt}"]).method.keys()) for opt in _options("method")}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys


@pytest.mark.parametrize("method", ["ft", "lora", "lora_fa", "lora_fa_v2", "qlora", "qlora_fa", "adapter"])
def test_rank_sweep_composes_for_every_method(method: str) -> None:
    cfg = compose_cfg([f"method={method}", "method.rank=16", "model=tiny_roberta"])
    assert cfg.method.rank == 16
    validate(cfg)


def _has_optuna() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


def test_sweep_files_compose() -> None:
    from hydra import compose, initialize_config_dir

    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        if "hydra/sweeper: optuna" in path.read_text() and not _has_optuna():
            continue  # needs pip install -e ".[scale]"; tests/test_scale.py checks it without the plugin
        with initialize_config_dir(str(REPO / "sweeps"), version_base="1.3"):
            cfg = compose(path.stem, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params, f"{path.name} sweeps nothing"


def test_valid_defaults_pass(synthetic_glue: Path) -> None:
    validate(compose_cfg(["model=tiny_roberta", f"task.data_dir={synthetic_glue}"]))


BAD = [
    (["method.rank=0"], "method.rank must be > 0"),
    (["method.rank=-4"], "method.rank=8"),
    (["method.name=dora"], "unknown method 'dora'"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["optim.lr=-1e-4"], "optim.lr=5e-4"),
    (["trainer.batch_size=0"], "trainer.batch_size must be > 0"),
    (["trainer.grad_accum=0"], "trainer.grad_accum"),
    (["model=tiny_t5"], "needs an encoder model"),
    (["model=tiny_llama"], "Fix: pick a model with arch=encoder"),
    (["task.data_dir=/nonexistent/glue_data"], "task.data_dir"),
    (["method.dropout=1.5"], "method.dropout must be in [0, 1)"),
    (["model.path=no-such-arch"], "no shipped architecture config"),
    (["method=lora", "method.quantize_4bit=true"], "method=qlora"),
    (["method.alpha_scaling=sqrt"], "method.alpha_scaling must be one of standard, rslora"),
    (["method=ft", "method.alpha_scaling=rslora"], "Fix: method.alpha_scaling=standard"),
    (["method=adapter", "method.alpha_scaling=rslora"], "no LoRA scale"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_fail_before_model_load(overrides, needle, monkeypatch, synthetic_glue: Path) -> None:
    import lorafa_repro.run as run_mod

    def boom(*a, **k):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(run_mod, "build_model", boom)
    base = ["model=tiny_roberta", f"task.data_dir={synthetic_glue}"]
    cfg = compose_cfg(base + overrides)
    with pytest.raises(ConfigError) as err:
        run_mod.run(cfg, output_dir="/nonexistent/should-not-be-created")
    assert needle in str(err.value)
    assert "Fix: " in str(err.value)
    assert not Path("/nonexistent/should-not-be-created").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_option_without_gpu_names_the_fix(synthetic_glue: Path) -> None:
    for overrides, needle in ((["trainer.device=cuda"], "trainer.device=auto"),
                              (["trainer.precision=fp16"], "trainer.precision=auto")):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            validate(compose_cfg(["model=tiny_roberta", f"task.data_dir={synthetic_glue}", *overrides]))


def test_wrong_type_is_rejected_by_the_schema() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["method.rank=eight"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["method.ranks=8"])
    # `+` force-adds past struct mode; validate() still rejects the unknown key, naming the near miss
    with pytest.raises(ConfigError, match=r"did you mean method\.rank"):
        validate(compose_cfg(["+method.ranks=8"]))


def test_unknown_group_option_lists_choices() -> None:
    with pytest.raises(Exception) as err:
        compose_cfg(["method=dora"])
    assert "lora_fa" in str(err.value)


def test_cli_prints_one_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "model=tiny_roberta", "method.rank=0",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: method.rank must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "result.json").exists()


def test_unreachable_hub_data_fails_before_model_load(monkeypatch, tmp_path: Path) -> None:
    """task.data_dir=null loads nyu-mll/glue from the Hub; offline that must be one clear error, no files."""
    import datasets

    import lorafa_repro.run as run_mod

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(run_mod, "build_model", lambda *a, **k: pytest.fail("model built before data"))
    cfg = compose_cfg(["model=tiny_roberta", "task.data_dir=null"])
    with pytest.raises(ConfigError, match="Fix: without internet access, set task.data_dir="):
        run_mod.run(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
