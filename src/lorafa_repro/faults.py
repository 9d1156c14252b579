"""Fault injection for testing sweeps (the fault-injection suite, tests/test_faults.py).

A spec ``kind@step`` (several joined by ``,``) comes from ``trainer.fault`` or, when that is null, the
environment variable ``LORAFA_FAULT``. Kinds: ``nan`` (the loss becomes NaN), ``oom`` (a CUDA out-of-memory
error), ``error`` (a RuntimeError), ``sigterm`` (the process sends itself SIGTERM), ``kill`` (SIGKILL: no
handler runs). A fault fires once per run directory (a marker file records it), so a restarted run goes on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

ENV = "LORAFA_FAULT"
KINDS = ("nan", "oom", "error", "sigterm", "kill")
MARKER = ".fault_fired"


def parse(spec: str | None) -> dict[int, str]:
    """``"nan@3,kill@5"`` -> ``{3: "nan", 5: "kill"}``; raises ValueError naming the fix on a bad spec."""
    faults: dict[int, str] = {}
    for part in filter(None, (spec or "").split(",")):
        kind, _, step = part.strip().partition("@")
        if kind not in KINDS or not step.isdigit() or int(step) < 1:
            raise ValueError(f"bad fault spec {part!r}. Fix: trainer.fault=<{'|'.join(KINDS)}>@<step >= 1>")
        faults[int(step)] = kind
    return faults


class FaultInjector:
    def __init__(self, spec: str | None, run_dir: Path | None) -> None:
        self.faults = parse(spec if spec is not None else os.environ.get(ENV))
        self.marker = run_dir / MARKER if run_dir is not None else None

    def __call__(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        kind = self.faults.get(step)
        if kind is None or (self.marker is not None and self.marker.exists()):
            return loss
        if self.marker is not None:
            self.marker.write_text(f"{kind}@{step}\n")
        if kind == "nan":
            return loss * float("nan")
        if kind == "oom":
            raise torch.cuda.OutOfMemoryError(f"injected fault: CUDA out of memory at step {step}")
        if kind == "error":
            raise RuntimeError(f"injected fault at step {step}")
        os.kill(os.getpid(), signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
        return loss
