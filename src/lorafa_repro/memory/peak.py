"""Peak memory of a training run, logged per step and for the whole run.

CUDA: ``torch.cuda.max_memory_allocated`` (bytes held by tensors) and ``max_memory_reserved``
(bytes the caching allocator took from the driver), both reset at run start. Loading (build the model,
apply the method, move it to the device) is its own interval: :meth:`PeakMemory.end_loading` stores its
peak as ``load_peak_*`` and resets the counters, so the training steps' peak (``peak_allocated_bytes``, the
number to compare with a paper's) holds only what training holds - e.g. a QLoRA run's NF4 weights, never
the fp32 weights it was quantized from. Per log line we report the peak since the previous line, then
reset the counters; the run peak is the max over lines.
CPU: the process's resident set size (RSS). The per-line value is the current RSS sampled at the
line (psutil); the run value is the OS high-water mark (``ru_maxrss``), which includes everything the
process has loaded (Python, libraries, data) and cannot be reset.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field

import torch


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _max_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


@dataclass
class PeakMemory:
    device: torch.device
    run_peak_allocated: int = 0
    run_peak_reserved: int = 0
    load_peak: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset(self) -> None:
        """Call at run start, before the model is loaded."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def interval(self) -> dict[str, int]:
        """Peak since the last call (CUDA) or current RSS (CPU), as a dict for metrics.jsonl."""
        if self.is_cuda:
            alloc = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            self.run_peak_allocated = max(self.run_peak_allocated, alloc)
            self.run_peak_reserved = max(self.run_peak_reserved, reserved)
            torch.cuda.reset_peak_memory_stats(self.device)
            return {"peak_allocated_bytes": alloc, "peak_reserved_bytes": reserved}
        rss = _rss_bytes()
        # ru_maxrss is synced lazily by the kernel and can trail /proc's current RSS by a few pages
        return {"rss_bytes": rss, "peak_rss_bytes": max(rss, _max_rss_bytes())}

    def end_loading(self) -> None:
        """Call once the model is on the device and adapted: the loading peak is stored apart, and the
        training steps' peak starts from here (CUDA; on CPU the RSS high-water mark cannot be reset)."""
        self.mark("weights_loaded")
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            self.load_peak = {"load_peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
                              "load_peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.load_peak = {"load_peak_rss_bytes": _max_rss_bytes()}

    def mark(self, name: str) -> None:
        """Record memory at a phase boundary (e.g. ``weights_loaded``)."""
        self.marks[name] = torch.cuda.memory_allocated(self.device) if self.is_cuda else _rss_bytes()

    def summary(self) -> dict[str, object]:
        if self.is_cuda:
            self.interval()
            return {
                "backend": "cuda",
                "device": torch.cuda.get_device_name(self.device),
                "peak_allocated_bytes": self.run_peak_allocated,
                "peak_reserved_bytes": self.run_peak_reserved,
                **self.load_peak,
                "marks_allocated_bytes": dict(self.marks),
            }
        return {"backend": "cpu_rss", "device": "cpu", "peak_rss_bytes": _max_rss_bytes(), **self.load_peak,
                "marks_rss_bytes": dict(self.marks)}
