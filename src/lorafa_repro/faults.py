"""Fault injection for testing sweeps (the fault-injection suite, tests/test_faults.py).

A spec ``kind@step`` (several joined by ``,``) comes from ``trainer.fault`` or, when that is null, the
environment variable ``LORAFA_FAULT``. Kinds: ``nan`` (the loss becomes NaN), ``oom`` (a CUDA out-of-memory
error), ``error`` (a RuntimeError), ``sigterm`` (the process sends itself SIGTERM), ``kill`` (SIGKILL: no
handler runs). ``kind@step:rank<k>`` fires on rank k only (multi-process runs; without it, on every rank),
e.g. ``error@3:rank1``: one rank fails while the others wait in a collective.
A fault fires once per run directory (a marker file records it, read when the run starts), so a restarted
run goes on.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

ENV = "LORAFA_FAULT"
KINDS = ("nan", "oom", "error", "sigterm", "kill")
MARKER = ".fault_fired"
_SPEC = re.compile(r"(?P<kind>\w+)@(?P<step>\d+)(?::rank(?P<rank>\d+))?")


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int | None = None  # None: every rank


def parse(spec: str | None) -> dict[int, Fault]:
    """``"nan@3,error@5:rank1"`` -> ``{3: Fault("nan"), 5: Fault("error", 1)}``; raises ValueError naming
    the fix on a bad spec."""
    faults: dict[int, Fault] = {}
    for part in filter(None, (spec or "").split(",")):
        m = _SPEC.fullmatch(part.strip())
        if m is None or m["kind"] not in KINDS or int(m["step"]) < 1:
            raise ValueError(f"bad fault spec {part!r}. Fix: trainer.fault=<{'|'.join(KINDS)}>@<step >= 1>"
                             f"[:rank<k>]")
        faults[int(m["step"])] = Fault(m["kind"], int(m["rank"]) if m["rank"] is not None else None)
    return faults


class FaultInjector:
    def __init__(self, spec: str | None, run_dir: Path | None, rank: int = 0) -> None:
        self.faults = parse(spec if spec is not None else os.environ.get(ENV))
        self.marker = run_dir / MARKER if run_dir is not None else None
        self.rank = rank
        # read once at the start: every rank of a run sees the same answer, whichever rank fires first
        self.fired = self.marker is not None and self.marker.exists()

    def __call__(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        fault = self.faults.get(step)
        if fault is None or self.fired or fault.rank not in (None, self.rank):
            return loss
        self.fired = True
        if self.marker is not None:
            self.marker.write_text(f"{fault.kind}@{step}" + (f":rank{fault.rank}" if fault.rank is not None else "")
                                   + "\n")
        if fault.kind == "nan":
            return loss * float("nan")
        if fault.kind == "oom":
            raise torch.cuda.OutOfMemoryError(f"injected fault: CUDA out of memory at step {step}")
        if fault.kind == "error":
            raise RuntimeError(f"injected fault at step {step}" + (f" on rank {self.rank}" if fault.rank is not None
                                                                   else ""))
        os.kill(os.getpid(), signal.SIGTERM if fault.kind == "sigterm" else signal.SIGKILL)
        return loss
