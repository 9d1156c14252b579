"""The cpu backend (validation only): a real step on CPU tensors, peaks from the CPU allocator's events.

``torch.profiler`` with ``profile_memory`` reports every allocation and free with its size; their running
sum over the step, plus the bytes resident before it, is what the step holds. For tiny models (tests): the
exact reference for the simulator, under either saved-tensor semantics (``ProbeConfig.semantics``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from lorafa_repro.memory.step import (
    BOUNDARIES,
    INTERVALS,
    ProbeConfig,
    build_on_device,
    make_batch,
    make_optimizer,
    run_cell_step,
)
from lorafa_repro.models import count_parameters


class CpuAllocationLog:
    """The CPU allocator's own allocation events during a step (``torch.profiler``, ``profile_memory``).

    The profiler reports every allocation and free with its size; their running sum is the bytes held
    by tensors. Boundaries are profiler ranges, so the phase table is built after the step
    (``probe_cpu``), not live as with CUDA's counters.
    """

    def __init__(self) -> None:
        self._prof: Any = None

    @contextlib.contextmanager
    def recording(self) -> Iterator["CpuAllocationLog"]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self._prof = prof
            yield self

    def mark(self, name: str) -> None:
        with torch.profiler.record_function(f"probe_boundary::{name}"):
            pass

    def timeline(self) -> tuple[list[tuple[int, int]], dict[str, int]]:
        """(time_ns, alloc_delta) events, and the time of each boundary marker."""
        from torch._C._profiler import _EventType

        allocs: list[tuple[int, int]] = []
        marks: dict[str, int] = {}
        stack = list(self._prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.typed[0] == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                allocs.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
            elif node.name.startswith("probe_boundary::"):
                marks[node.name.split("::", 1)[1]] = node.start_time_ns
            stack.extend(node.children)
        allocs.sort()
        return allocs, marks


def probe_cpu(cfg: ProbeConfig) -> dict[str, Any]:
    """A real step on CPU tensors; bytes from the CPU allocator's events. For tiny models (tests)."""
    counters = CpuAllocationLog()
    model = build_on_device(cfg, torch.device("cpu"))
    optimizer = make_optimizer(model, cfg, foreach=True)
    batch = make_batch(cfg, model.config.vocab_size, "cpu")
    resident = _tensor_bytes(model, optimizer, batch)
    with counters.recording():
        run_cell_step(model, cfg, batch, optimizer, counters.mark)
    allocs, mark_times = counters.timeline()
    phases: dict[str, dict[str, int]] = {}
    current, peak, i = resident, resident, 0
    for name in BOUNDARIES:
        t = mark_times[name]
        while i < len(allocs) and allocs[i][0] <= t:
            current += allocs[i][1]
            peak = max(peak, current)
            i += 1
        entry = {"allocated": current}
        if name in INTERVALS:
            entry["peak_allocated"] = peak
        phases[name] = entry
        peak = current
    intervals = {INTERVALS[k]: v["peak_allocated"] for k, v in phases.items() if k in INTERVALS}
    return {"backend": "cpu", "device": "cpu", "peak_bytes": max(intervals.values()),
            "peak_phase": max(intervals, key=intervals.get), "phases": phases,
            "params": count_parameters(model),
            "semantics": cfg.semantics,
            "counter": "CPU allocator events (torch.profiler profile_memory) + bytes resident before the step"}


def _tensor_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of distinct storages held by the model, the optimizer states and the batch."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()

    for t in list(model.parameters()) + list(model.buffers()) + list(batch.values()):
        add(t)
        state = getattr(t, "quant_state", None)  # bitsandbytes NF4: absmax, codes, offset, nested state
        while state is not None:
            for v in vars(state).values():
                if isinstance(v, torch.Tensor):
                    add(v)
            state = getattr(state, "state2", None)
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                add(v)
    return sum(seen.values())
