"""TensorBoard: one event-file folder per run (default ``<run dir>/tensorboard``), scalars under the
metrics.jsonl keys, the config as text and as HParams (with the run summary as the HParams metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorafa_repro.loggers.base import RunIdentity, hyperparameters


class TensorBoardTracker:
    run_id: Optional[str] = None

    def __init__(self, logdir: Path, hparams: dict[str, Any], resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        # a resumed run drops what the previous attempt logged after its checkpoint
        self.writer = SummaryWriter(str(logdir), purge_step=resume_step + 1 if resume_step else None)
        self.hparams = {k: ("null" if v is None else v) for k, v in hparams.items()}
        if not resume_step:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.hparams.items()), 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary: dict[str, float], status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        # into this run's own event file (SummaryWriter.add_hparams would open a sub-run)
        for event in hparams({**self.hparams, "run.status": status}, {f"hparam/{k}": v for k, v in summary.items()}):
            self.writer.file_writer.add_summary(event)
        for key, value in summary.items():
            self.writer.add_scalar(f"hparam/{key}", value, 0)
        self.writer.close()


def open_tracker(cfg: Any, *, out_dir: Path, identity: RunIdentity, config: dict[str, Any], resume_step: int,
                 resume_id: Optional[str]) -> TensorBoardTracker:
    if cfg.dir is None:
        logdir = out_dir / "tensorboard"
    else:
        logdir = Path(cfg.dir) / (identity.sweep_name or "") / identity.name
    return TensorBoardTracker(logdir, hyperparameters(config, identity), resume_step)
