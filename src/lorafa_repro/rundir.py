"""A run directory's lifecycle: one run at a time, and an old run moved aside, never deleted.

:func:`locked` holds an exclusive ``flock`` on ``<run dir>/run.lock`` for the whole run; the file names the
holder (pid, host, start time). The kernel drops the lock when its holder exits in any way, SIGKILL included,
so the lock of a dead run is simply taken over (with a warning naming it). :func:`move_aside` moves a run's
files to ``<run dir>/replaced/<UTC time>/`` when another run takes the folder over."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from lorafa_repro.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
REPLACED_DIR = "replaced"
#: What a training run writes (and what moves aside when another run replaces it).
RUN_FILES = ("result.json", "metrics.jsonl", "predictions", "checkpoints")


# the fix every "holds a run of another config" refusal names (training and evaluation alike)
RERUN_FIX = "Fix: on_config_change=rerun (keeps the old run under <output_dir>/replaced/) or another output_dir"


class RunDirError(ConfigError):
    """The output folder's state stops the run (in use, or holding a run that must not be replaced); nothing
    was written. Unlike other ConfigErrors it is never recorded in that folder."""


def _holder_text(raw: str) -> str:
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet"


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block; another holder -> :class:`RunDirError` naming it. The lock
    file goes when the block ends, and so does a folder this call created if the run wrote nothing there."""
    created = not run_dir.exists()
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ConfigError(f"cannot create {path} ({e.strerror}). Fix: output_dir=<a writable folder>") from None
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another run ({_holder_text(f.read())}). Fix: wait for it "
                              f"to end, or pick another output_dir") from None
        except OSError as e:  # e.g. Lustre mounted without -o flock
            logger.warning("cannot lock %s (%s): runs into this folder are not kept apart", run_dir, e.strerror)
        if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:  # removed by a holder leaving
            raise RunDirError(f"{run_dir} was just released by another run. Fix: run the command again")
        stale = f.read().strip()
        if stale:  # the kernel released it, so its holder is gone
            logger.warning("took over the lock of a run that ended without releasing it (%s)", _holder_text(stale))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        f.flush()
        try:
            yield
        finally:  # released in order: the lock file removed while still held (a run waiting on its inode
            # sees it gone and refuses, see above), then the folder if this run made it and wrote nothing
            f.seek(0)
            f.truncate()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something, or another run is there
                    run_dir.rmdir()


def held_by(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock now (a live run, in any process on this host or one sharing a flock-capable
    file system), or None: no lock file, or its holder has gone. Probes with a shared lock released at once, so
    it never blocks a holder; call it only on a folder whose run has started, as a run starting in the same
    instant would find the folder in use."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(f.read())
        except OSError:  # no flock here: nothing can be said
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def move_aside(run_dir: Path) -> Path | None:
    """Move the run's files (:data:`RUN_FILES`) to ``run_dir/replaced/<UTC time>/``; that folder, or None
    when there was nothing to move."""
    present = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    dest, n = run_dir / REPLACED_DIR / stamp, 1
    while dest.exists():
        dest, n = run_dir / REPLACED_DIR / f"{stamp}_{n}", n + 1
    dest.mkdir(parents=True)
    for p in present:
        os.replace(p, dest / p.name)
    return dest


def refuse_other_config(run_dir: Path, held: str, diff_text: str) -> RunDirError:
    """The error for ``run_dir`` holding ``held`` (e.g. "a finished run (success)") of another config, whose
    differences are ``diff_text``, under ``on_config_change=error``."""
    return RunDirError(f"{run_dir} holds {held} of another config: {diff_text}. {RERUN_FIX}")
