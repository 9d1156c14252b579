"""Experiment trackers (the ``logger`` config group, conf/logger/): TensorBoard, Weights & Biases, MLflow.

``metrics.jsonl`` (:class:`~lorafa_repro.results.MetricsLog`) is the run's one metrics stream and is always
written; every row it writes (loss, lr, step time, tokens/s, memory, eval metrics) goes unchanged, under the same
keys, to each selected tracker (:class:`~lorafa_repro.loggers.base.Tracker`), which also gets the resolved config
and the run identity as hyperparameters at the start and the run's summary (final and best metrics, peak memory,
throughput, status) at the end. One module per tracker; add one with a module and a line in :data:`TRACKERS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

from lorafa_repro.errors import ConfigError
from lorafa_repro.loggers.base import RunIdentity, Tracker, identity_from_hydra, run_summary, scalars

#: logger name -> (module with ``open_tracker``, the package it needs)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("lorafa_repro.loggers.tensorboard", "tensorboard"),
    "wandb": ("lorafa_repro.loggers.wandb", "wandb"),
    "mlflow": ("lorafa_repro.loggers.mlflow", "mlflow"),
}
#: the trackers' run ids, kept in the run directory so that a resumed run logs into the same tracker run
RUN_IDS_FILE = "tracker_runs.json"


def selected(logger_cfg: Any) -> list[str]:
    """The trackers a ``logger`` config turns on (a section that is set)."""
    return [name for name in TRACKERS if logger_cfg is not None and logger_cfg.get(name) is not None]


def check_installed(logger_cfg: Any) -> None:
    """ConfigError (one line with the fix) for a selected tracker whose package is missing; imports nothing."""
    for name in selected(logger_cfg):
        package = TRACKERS[name][1]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package, which is not installed. "
                              f'Fix: pip install -e ".[trackers]" (or drop {name} from logger=[...])')


class Trackers:
    """The selected trackers as one sink of the metrics stream (:class:`~lorafa_repro.results.MetricsLog` calls
    :meth:`log` with each row it writes). A tracker that raises is reported once on stderr and dropped: the
    run goes on, metrics.jsonl stays the record."""

    def __init__(self) -> None:
        self.trackers: dict[str, Tracker] = {}

    def open(self, logger_cfg: Any, out_dir: Path, identity: RunIdentity, config: dict[str, Any],
             resume_step: int = 0) -> None:
        """Start one tracker run per selected tracker; ``resume_step`` > 0 continues the runs stored in
        ``out_dir/tracker_runs.json``."""
        from lorafa_repro.results import write_json_atomic

        ids_path = out_dir / RUN_IDS_FILE
        stored = json.loads(ids_path.read_text()) if resume_step and ids_path.exists() else {}
        for name in selected(logger_cfg):
            module = importlib.import_module(TRACKERS[name][0])
            self.trackers[name] = module.open_tracker(logger_cfg[name], out_dir=out_dir, identity=identity,
                                                      config=config, resume_step=resume_step,
                                                      resume_id=stored.get(name))
        ids = {name: t.run_id for name, t in self.trackers.items() if t.run_id}
        if ids:
            write_json_atomic(ids_path, ids)

    def log(self, row: dict[str, Any]) -> None:
        if self.trackers and "step" in row:
            metrics = scalars(row)
            self._each(lambda t: t.log(metrics, int(row["step"])))

    def finish(self, summary: dict[str, float], status: str) -> None:
        self._each(lambda t: t.finish(summary, status))
        self.trackers.clear()

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker's failure must not end the training run
                print(f"lorafa-train: logger={name} failed and is switched off ({type(e).__name__}: {e}); "
                      f"metrics.jsonl has every row", file=sys.stderr)
                del self.trackers[name]


__all__ = ["RUN_IDS_FILE", "TRACKERS", "RunIdentity", "Tracker", "Trackers", "check_installed",
           "identity_from_hydra", "run_summary", "selected"]
