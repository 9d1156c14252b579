"""One ``result.json`` per run plus a per-step ``metrics.jsonl``; analysis reads only these files.

``result.json`` keys (schema_version 1):
  schema_version, kind ("train" | "memory_probe" | "eval": an untrained model scored, lorafa_repro.evaluate),
  status ("success" | "failed" | "oom" | "diverged" | "interrupted" | "running"),
  error (null or a one-line reason; set for every status but success and running), config (resolved), metrics {final, best, best_step, main_metric},
  memory {...}, params {trainable, total}, timing {total_s, train_s, eval_s, load_s, steps, ...},
  env {git_sha, git_dirty, python, versions, device}, created_at.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

SCHEMA_VERSION = 1
# running: written when a run starts, so a run killed with SIGKILL never leaves a result that reads as success
STATUSES = ("success", "failed", "oom", "diverged", "interrupted", "running")
REQUIRED_KEYS = ("schema_version", "kind", "status", "config", "metrics", "memory", "params", "timing", "env")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path in ``path``'s folder to write to; renamed onto ``path`` when the block ends without an error
    (removed otherwise), so readers never see half a file. The file gets ``0666 & ~umask`` (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON through :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line through :func:`write_text_atomic`."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


class RowSink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...


class MetricsLog:
    """Appends one JSON line per logged step, flushed at once, and hands the same row to ``sink`` (the
    experiment trackers, :class:`lorafa_repro.loggers.Trackers`). ``keep_until_step``: a resumed run keeps
    the rows up to its checkpoint's step (rewritten through temp + rename) and appends after them;
    ``path=None`` logs nothing (the non-zero ranks of a distributed run)."""

    def __init__(self, path: str | Path | None, keep_until_step: int | None = None,
                 sink: RowSink | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.sink = sink
        self._f = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and self.path.exists():
            rows = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the half line a kill can leave
                    continue
                if row.get("step", 0) <= keep_until_step:
                    rows.append(row)
            write_jsonl_atomic(self.path, rows)
            self._f = open(self.path, "a")
        else:
            self._f = open(self.path, "w")

    def log(self, row: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row, default=float) + "\n")
            self._f.flush()
            if self.sink is not None:
                self.sink.log(row)

    def close(self) -> None:
        if self._f is not None:
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
            "versions": versions, "lock": lock_info(), "device": device, "cuda": torch.version.cuda}


LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements" / "lock.txt"


def lock_info(lock_file: Path = LOCK_FILE) -> dict[str, Any] | None:
    """The environment against the lock that `make install` installs from: the lock's sha256 and every locked
    package installed at another version (``{name: [locked, installed]}``; packages of extras that are not
    installed do not count, and torch is not locked). None when the suite runs from an install without the
    repository's requirements/lock.txt. Computed once per lock text (it reads every installed distribution)."""
    return _compare_with_lock(lock_file.read_text()) if lock_file.is_file() else None


@functools.lru_cache(maxsize=4)
def _compare_with_lock(text: str) -> dict[str, Any]:
    import hashlib
    from importlib.metadata import distributions

    installed = {_canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}
    differ = {}
    for line in text.splitlines():
        name, sep, locked = line.split("#")[0].strip().partition("==")
        have = installed.get(_canonical(name))
        if sep and have is not None and have != locked.strip():
            differ[name] = [locked.strip(), have]
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "matches": not differ, "differs": differ}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


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
    if data["status"] not in ("success", "running") and not data.get("error"):
        raise ValueError(f"a {data['status']} result must say why in 'error'")


def read_result(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    validate_result(data)
    return data


def try_read_result(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(result, None)`` for a readable, schema-valid result.json, else ``(None, why)`` (missing, truncated,
    not JSON, or not the schema): such a file counts as "not done" and analysis skips it."""
    path = Path(path)
    try:
        return read_result(path), None
    except FileNotFoundError:
        return None, "missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({type(e).__name__}: {e})"
    except (ValueError, KeyError, TypeError) as e:
        return None, f"does not follow the result schema ({e})"


def fingerprint_files(files: Iterable[Path]) -> str:
    """Short hash of the names and code of ``files``, in the given order (the code a stored number depends on;
    Table 4's ``code_fingerprint`` and the training runs' ``config.code`` both use it). A Python file counts by
    its syntax tree without docstrings, so an edit of comments or docs recomputes nothing."""
    import hashlib

    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0" + (_code_of(f.read_text()) if f.suffix == ".py" else f.read_bytes()))
    return h.hexdigest()[:12]


def _code_of(source: str) -> bytes:
    """The syntax tree of ``source`` without its docstrings (comments are never in it), as bytes."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def save_figure(fig: Any, path: Path, **kwargs: Any) -> Path:
    """``fig.savefig`` with no time stamp in the file (a PDF's CreationDate), so that rendering the same inputs
    again writes the same bytes and leaves a checkout clean."""
    metadata = {"CreationDate": None} if Path(path).suffix == ".pdf" else {}
    fig.savefig(path, metadata=metadata, **kwargs)
    return Path(path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Keys (dotted) whose values differ between two configs, as ``{key: (old, new)}``; keys in ``ignore``
    (or under an ignored prefix) do not count."""
    a, b = flatten(old), flatten(new)
    skip = tuple(ignore)

    def ignored(k: str) -> bool:
        return any(k == i or k.startswith(i + ".") for i in skip)

    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not ignored(k) and a.get(k) != b.get(k)}


def format_diff(diff: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    """``key: stored -> now`` for the first ``limit`` keys of a :func:`config_diff`, on one line."""
    text = ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(diff.items())[:limit])
    return text + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def is_done(run_dir: str | Path, config: dict[str, Any] | None = None, *, ignore: Iterable[str] = ()) -> bool:
    """True if ``run_dir/result.json`` is a valid, successful result of the same run: when ``config`` is
    given, every key but those in ``ignore`` must match the stored config (a ``code`` key in it compares
    the code fingerprint). A truncated or invalid file is "not done"."""
    data, _ = try_read_result(Path(run_dir) / "result.json")
    if data is None or data["status"] != "success":
        return False
    return config is None or not config_diff(data["config"], config, ignore)


def find_results(root: str | Path) -> Iterable[Path]:
    return sorted(Path(root).rglob("result.json"))


def model_label(name: str, source: str | None) -> str:
    """How the analysis names a training run's model: its name, marked "(random init)" for a shipped
    architecture trained from scratch (``model.source=shipped``), so such runs never stand in for the
    paper's pretrained rows."""
    return f"{name} (random init)" if source == "shipped" else name


def read_results(root: str | Path, kind: str | None = None, status: str | Iterable[str] | None = None, *,
                 pattern: str = "**/result.json", quiet: bool = False) -> list[dict[str, Any]]:
    """Every valid result file under ``root`` matching ``pattern`` (of ``kind``, with ``status`` or one of
    those statuses), each with its ``_path``; unreadable ones are listed on stderr (unless ``quiet``) and
    skipped, never a crash."""
    import sys

    wanted = None if status is None else ({status} if isinstance(status, str) else set(status))
    out, skipped = [], []
    for p in sorted(Path(root).glob(pattern)):
        d, why = try_read_result(p)
        if d is None:
            skipped.append((str(p), why))
        elif (not kind or d["kind"] == kind) and (wanted is None or d["status"] in wanted):
            out.append({**d, "_path": str(p)})
    if skipped and not quiet:
        print(f"skipped {len(skipped)} unreadable result file(s):", file=sys.stderr)
        for path, why in skipped:
            print(f"  {path}: {why}", file=sys.stderr)
    return out


def load_results(root: str | Path, kind: str | None = None, status: str | Iterable[str] | None = None, *,
                 quiet: bool = False):
    """All result.json files under ``root`` as a flat pandas DataFrame (one row per run); training runs
    also get ``model_label`` (:func:`model_label`). ``status`` keeps only runs with that status (or one of
    those statuses). A truncated or invalid file is skipped and listed in ``df.attrs["skipped"]`` as
    ``(path, why)`` (and on stderr unless ``quiet``), never a crash."""
    import sys

    import pandas as pd

    wanted = None if status is None else ({status} if isinstance(status, str) else set(status))
    rows, skipped = [], []
    for p in find_results(root):
        d, why = try_read_result(p)
        if d is None:
            skipped.append((str(p), why))
            continue
        if (kind and d["kind"] != kind) or (wanted is not None and d["status"] not in wanted):
            continue
        row = {"path": str(p.parent), "status": d["status"], "kind": d["kind"], "error": d.get("error")}
        model = d["config"].get("model")
        if isinstance(model, dict) and "name" in model:
            row["model_label"] = model_label(model["name"], model.get("source"))
        row.update(pd.json_normalize({k: d[k] for k in ("config", "metrics", "memory", "params", "timing")},
                                     sep=".").iloc[0].to_dict())
        rows.append(row)
    if skipped and not quiet:
        print(f"skipped {len(skipped)} unreadable result file(s):", file=sys.stderr)
        for path, why in skipped:
            print(f"  {path}: {why}", file=sys.stderr)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df
