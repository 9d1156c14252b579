"""What a multirun reports at its end: :class:`FailureSummary`, a Hydra callback (``hydra.callbacks`` in
conf/train.yaml) that reads every cell's result.json under the sweep directory, so it works with every
launcher (basic, joblib, submitit: the cells may have run in other processes or on other nodes). A cell another
live process is running now (two multiruns sharing one sweep directory, as ``make study-*`` runs them) is not
this multirun's and is listed apart, not as a failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lorafa_repro.results import try_read_result
from lorafa_repro.rundir import held_by


def sweep_cells(sweep_dir: str | Path) -> list[tuple[Path, str, str]]:
    """``(run dir, status, reason)`` of every cell under ``sweep_dir`` (a cell = a folder Hydra wrote its
    ``.hydra/`` into); a cell without a readable result.json is ``missing`` / ``unreadable``."""
    cells = []
    for hydra_dir in sorted(Path(sweep_dir).rglob(".hydra")):
        run_dir = hydra_dir.parent
        path = run_dir / "result.json"
        data, why = try_read_result(path)
        if data is not None:
            cells.append((run_dir, data["status"], data.get("error") or ""))
        else:
            cells.append((run_dir, "missing" if why == "missing" else "unreadable", why or ""))
    return cells


def in_progress_elsewhere(cells: list[tuple[Path, str, str]]) -> dict[Path, str]:
    """Run directory -> holder of the cells not finished (``running`` or ``missing``) that a live run holds now.
    At a multirun's end its own cells have all returned, so these belong to another process."""
    held = {run_dir: held_by(run_dir) for run_dir, status, _ in cells if status in ("running", "missing")}
    return {run_dir: holder for run_dir, holder in held.items() if holder is not None}


def failure_report(cells: list[tuple[Path, str, str]]) -> str | None:
    """A summary of the cells that did not succeed, or None when all did."""
    bad = [c for c in cells if c[1] != "success"]
    if not bad:
        return None
    lines = [f"{len(bad)} of {len(cells)} cells did not succeed:"]
    lines += [f"  {status:11s} {run_dir}  {reason}" for run_dir, status, reason in bad]
    lines.append("Rerun the same command with the same hydra.sweep.dir (and skip_if_done=true) to resume "
                 "interrupted and killed cells and keep the finished ones.")
    return "\n".join(lines)


class FailureSummary(Callback):
    """At the end of a multirun: print the failed cells (status, reason, run directory) and exit 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        cells = sweep_cells(config.hydra.sweep.dir)
        elsewhere = in_progress_elsewhere(cells)
        if elsewhere:
            print(f"sweep: {len(elsewhere)} cell(s) under {config.hydra.sweep.dir} are running in another process, "
                  "not counted here:", file=sys.stderr)
            for run_dir, holder in elsewhere.items():
                print(f"  running     {run_dir}  ({holder})", file=sys.stderr)
            cells = [c for c in cells if c[0] not in elsewhere]
        report = failure_report(cells)
        if report is None:
            print(f"sweep: all {len(cells)} cells succeeded ({config.hydra.sweep.dir})", file=sys.stderr)
            return
        print(report, file=sys.stderr)
        raise SystemExit(1)  # a BaseException: Hydra's callback runner only turns Exceptions into warnings
