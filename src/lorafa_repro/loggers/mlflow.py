"""MLflow: one MLflow run per training run, one experiment per sweep. The default store is a local folder
(``file:<sweep dir>/mlruns``, or ``<run dir>/mlruns`` for a single run); mlflow-skinny has no database backend,
so the file store is allowed explicitly (MLflow 3 otherwise refuses it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from lorafa_repro.loggers.base import RunIdentity, hyperparameters

#: MLflow takes at most this many params (and metrics) per log_batch call
_BATCH = 100


class MlflowTracker:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id: Optional[str] = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        rows = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(rows), _BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + _BATCH])

    def finish(self, summary: dict[str, float], status: str) -> None:
        self.log({f"summary.{k}": v for k, v in summary.items()}, 0)
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def tracking_uri(cfg: Any, out_dir: Path, identity: RunIdentity) -> str:
    if cfg.tracking_uri is not None:
        return str(cfg.tracking_uri)
    return (Path(identity.sweep) if identity.sweep else out_dir).resolve().joinpath("mlruns").as_uri()


def open_tracker(cfg: Any, *, out_dir: Path, identity: RunIdentity, config: dict[str, Any], resume_step: int,
                 resume_id: Optional[str]) -> MlflowTracker:
    uri = tracking_uri(cfg, out_dir, identity)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if resume_id is not None:
        return MlflowTracker(client, resume_id)
    name = cfg.experiment or identity.sweep_name or "lorafa-repro"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:  # another cell of the sweep created it meanwhile
            experiment_id = client.get_experiment_by_name(name).experiment_id
    tags = {"sweep": identity.sweep or "", "output_dir": identity.output_dir}
    run = client.create_run(experiment_id, run_name=identity.name, tags=tags)
    params = [Param(k, "null" if v is None else str(v)) for k, v in hyperparameters(config, identity).items()]
    for i in range(0, len(params), _BATCH):
        client.log_batch(run.info.run_id, params=params[i : i + _BATCH])
    return MlflowTracker(client, run.info.run_id)
