"""What every tracker gets: the run identity, the hyperparameters, numeric rows of the metrics stream."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from lorafa_repro.results import flatten


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: ``name`` (the sweep cell's override string, or the run directory's name), ``sweep`` (the
    multirun's sweep directory; runs of one sweep share it and are grouped by it), ``job_num`` (its index)."""

    name: str
    output_dir: str
    sweep: Optional[str] = None
    job_num: Optional[int] = None

    @property
    def sweep_name(self) -> Optional[str]:
        return Path(self.sweep).name if self.sweep else None


def identity_from_hydra(output_dir: str | Path) -> RunIdentity:
    """The identity Hydra gives the current job (a multirun cell: its sweep dir, override string and number);
    outside Hydra, or in a single run, the run directory alone."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    out = Path(output_dir)
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return RunIdentity(name=out.name, output_dir=str(out))
    hc = HydraConfig.get()
    return RunIdentity(name=hc.job.override_dirname or str(hc.job.num), output_dir=str(out),
                       sweep=str(hc.sweep.dir), job_num=int(hc.job.num))


def hyperparameters(config: dict[str, Any], identity: RunIdentity) -> dict[str, Any]:
    """The resolved config as dotted keys plus the run identity under ``run.*`` (lists as strings)."""
    run = {"name": identity.name, "output_dir": identity.output_dir, "sweep": identity.sweep,
           "job_num": identity.job_num}
    flat = flatten({**config, "run": run})
    return {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in flat.items()}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (``step`` apart; strings such as a predictions file left out)."""
    return {k: float(v) for k, v in flatten(row).items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_summary(result: dict[str, Any]) -> dict[str, float]:
    """What a tracker keeps for the whole run, from result.json: final/best metrics, peak memory, timing."""
    metrics = result.get("metrics", {})
    return scalars({"final": metrics.get("final", {}), "best": metrics.get("best", {}),
                    "best_step": metrics.get("best_step"), "memory": result.get("memory", {}),
                    "timing": result.get("timing", {}), "params": result.get("params", {})})


class Tracker(Protocol):
    """One tracker run. ``log`` gets each metrics.jsonl row's numbers (:func:`scalars`) and its step;
    ``finish`` the run summary (:func:`run_summary`) and the result's status, once."""

    run_id: Optional[str]

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, float], status: str) -> None: ...
