"""Weights & Biases: one W&B run per training run, grouped by sweep; ``mode: offline`` (the default) needs no
network and no account and writes ``<run dir>/wandb/offline-run-*`` (``wandb sync`` uploads it later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorafa_repro.loggers.base import RunIdentity


class WandbTracker:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id: Optional[str] = run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, float], status: str) -> None:
        self.run.summary.update({**summary, "status": status})
        self.run.finish(exit_code=0 if status == "success" else 1)


def open_tracker(cfg: Any, *, out_dir: Path, identity: RunIdentity, config: dict[str, Any], resume_step: int,
                 resume_id: Optional[str]) -> WandbTracker:
    import wandb

    directory = Path(cfg.dir) if cfg.dir is not None else out_dir
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(directory),
        group=cfg.group or identity.sweep, job_type="train", name=identity.name, tags=list(cfg.tags) or None,
        config={**config, "run": {"name": identity.name, "output_dir": identity.output_dir,
                                  "sweep": identity.sweep, "job_num": identity.job_num}},
        id=resume_id, resume="allow" if resume_id else None,
        settings=wandb.Settings(silent=True, console="off"),
    )
    return WandbTracker(run)
