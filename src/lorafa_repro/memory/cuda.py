"""The cuda backend: a real step on the GPU, read from the CUDA caching allocator's counters.

``max_memory_allocated`` / ``max_memory_reserved`` per phase (peaks reset at every phase boundary), current
``memory_allocated`` at each boundary. The counters sit behind :class:`Counters`, so the recording logic
runs in the tests on CPU with scripted counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lorafa_repro.memory.step import (
    INTERVALS,
    ProbeConfig,
    build_on_device,
    make_batch,
    make_optimizer,
    run_cell_step,
)
from lorafa_repro.models import count_parameters


class Counters(Protocol):
    """What a real-run phase recorder needs from a device."""

    def allocated(self) -> int: ...          # bytes held by tensors now
    def peak_allocated(self) -> int: ...     # max of allocated() since the last reset
    def peak_reserved(self) -> int: ...      # max bytes the allocator held since the last reset
    def reset_peaks(self) -> None: ...


class CudaCounters:
    """``torch.cuda`` allocator counters."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def peak_reserved(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)

    def reset_peaks(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)


@dataclass
class PhaseRecorder:
    """Reads ``counters`` at each phase boundary: the current bytes there, and the peak of the interval
    that ends there (peaks are reset at every boundary, so each interval's peak is its own)."""

    counters: Counters
    marks: dict[str, dict[str, int]] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        entry = {"allocated": self.counters.allocated()}
        if name in INTERVALS:
            entry["peak_allocated"] = self.counters.peak_allocated()
            entry["peak_reserved"] = self.counters.peak_reserved()
        self.marks[name] = entry
        self.counters.reset_peaks()

    def summary(self) -> dict[str, Any]:
        """Peak over the step (max of the interval peaks) and the phase table."""
        intervals = {INTERVALS[k]: v for k, v in self.marks.items() if k in INTERVALS}
        peak = max((v["peak_allocated"] for v in intervals.values()), default=0)
        reserved = max((v["peak_reserved"] for v in intervals.values()), default=0)
        peak_phase = max(intervals, key=lambda k: intervals[k]["peak_allocated"]) if intervals else None
        return {"peak_bytes": peak, "peak_reserved_bytes": reserved, "peak_phase": peak_phase,
                "phases": {k: dict(v) for k, v in self.marks.items()}}


def measure_step(cfg: ProbeConfig, device: torch.device, counters: Counters) -> dict[str, Any]:
    """Build the cell's model on ``device`` with the method applied, and measure one steady-state step."""
    recorder = PhaseRecorder(counters)
    counters.reset_peaks()
    model = build_on_device(cfg, device)
    recorder.mark("weights_loaded")
    optimizer = make_optimizer(model, cfg, foreach=True)
    batch = make_batch(cfg, model.config.vocab_size, device)
    counters.reset_peaks()
    run_cell_step(model, cfg, batch, optimizer, recorder.mark)
    out = recorder.summary()
    out["params"] = count_parameters(model)
    return out


def probe_cuda(cfg: ProbeConfig) -> dict[str, Any]:
    """Measure on the GPU. A real CUDA OOM becomes ``{"oom": True, "error": ...}``."""
    if not torch.cuda.is_available():
        raise RuntimeError("backend 'cuda' needs a GPU; use --backend simulate")
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    try:
        out = measure_step(cfg, device, CudaCounters(device))
    except torch.cuda.OutOfMemoryError as e:
        out = {"oom": True, "error": f"CUDA out of memory on {torch.cuda.get_device_name(device)}: "
                                     f"{str(e).splitlines()[0]}"}
    finally:
        torch.cuda.empty_cache()
    out["backend"] = "cuda"
    out["device"] = torch.cuda.get_device_name(device)
    out["device_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    out["counter"] = "torch.cuda.max_memory_allocated (reserved: max_memory_reserved)"
    return out
