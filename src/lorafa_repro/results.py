"""One ``result.json`` per run plus a per-step ``metrics.jsonl``; analysis reads only these files.

``result.json`` keys (schema_version 1):
  schema_version, kind ("train" | "memory_probe"), status ("success" | "failed" | "oom"),
  error (null or message), config (resolved), metrics {final, best, best_step, main_metric},
  memory {...}, params {trainable, total}, timing {wall_s, train_s, steps, ...},
  env {git_sha, git_dirty, python, versions, device}, created_at.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
STATUSES = ("success", "failed", "oom")
REQUIRED_KEYS = ("schema_version", "kind", "status", "config", "metrics", "memory", "params", "timing", "env")


def quiet_known_warnings() -> None:
    """Silence library warnings that repeat on every model build and say nothing about the run (CLIs only)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON via a temp file in the same folder + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line via a temp file + rename (see :func:`write_json_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class MetricsLog:
    """Appends one JSON line per logged step, flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")

    def log(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, default=float) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
        # dirty = the code differs from the sha; result files rewritten by the run itself do not count
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                     ":(exclude,top)results"], cwd=cwd,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


def env_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for pkg in ("lorafa-repro", "torch", "transformers", "peft", "bitsandbytes", "datasets", "hydra-core",
                "scikit-learn", "scipy", "numpy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {**git_info(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "device": device, "cuda": torch.version.cuda}


def new_result(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "kind": kind, "status": "failed", "error": None,
        "config": config, "metrics": {}, "memory": {}, "params": {}, "timing": {},
        "env": env_info(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def validate_result(data: dict[str, Any]) -> None:
    """Raise ValueError if ``data`` does not follow the result.json schema."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"result.json misses keys {missing}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {data['schema_version']} != {SCHEMA_VERSION}")
    if data["status"] not in STATUSES:
        raise ValueError(f"status {data['status']!r} not in {STATUSES}")
    if data["status"] == "success" and data["kind"] == "train":
        for k in ("final", "best"):
            if k not in data["metrics"]:
                raise ValueError(f"a successful train result needs metrics.{k}")
        for k in ("trainable", "total"):
            if not isinstance(data["params"].get(k), int):
                raise ValueError(f"params.{k} must be an int")
        if "backend" not in data["memory"]:
            raise ValueError("memory.backend missing")
    if data["status"] != "success" and not data.get("error"):
        raise ValueError("a failed/oom result must say why in 'error'")


def read_result(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    validate_result(data)
    return data


def is_done(run_dir: str | Path) -> bool:
    p = Path(run_dir) / "result.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "success"
    except json.JSONDecodeError:
        return False


def find_results(root: str | Path) -> Iterable[Path]:
    return sorted(Path(root).rglob("result.json"))


def model_label(name: str, source: str | None) -> str:
    """How the analysis names a training run's model: its name, marked "(random init)" for a shipped
    architecture trained from scratch (``model.source=shipped``), so such runs never stand in for the
    paper's pretrained rows."""
    return f"{name} (random init)" if source == "shipped" else name


def load_results(root: str | Path, kind: str | None = None):
    """All result.json files under ``root`` as a flat pandas DataFrame (one row per run); training runs
    also get ``model_label`` (:func:`model_label`)."""
    import pandas as pd

    rows = []
    for p in find_results(root):
        d = read_result(p)
        if kind and d["kind"] != kind:
            continue
        row = {"path": str(p.parent), "status": d["status"], "kind": d["kind"]}
        model = d["config"].get("model")
        if isinstance(model, dict) and "name" in model:
            row["model_label"] = model_label(model["name"], model.get("source"))
        row.update(pd.json_normalize({k: d[k] for k in ("config", "metrics", "memory", "params", "timing")},
                                     sep=".").iloc[0].to_dict())
        rows.append(row)
    return pd.DataFrame(rows)
