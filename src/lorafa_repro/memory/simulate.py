"""Simulated peak memory of one training step: fake tensors + PyTorch's ``MemTracker``, any machine.

How a cell is simulated:
1. The model is built on the ``meta`` device and adapted with the suite's own ``apply_method``
   (PEFT's injection works on meta; under ``FakeTensorMode`` it does not, because it moves adapters
   between devices). Every meta parameter/buffer is then replaced by a fake CPU tensor of the same
   shape, dtype and ``requires_grad`` (tied weights stay tied).
2. Inside ``FakeTensorMode`` the optimizer is built and warmed up (its states exist, as in every step
   after the first), a batch is drawn, and one step runs under :class:`StepMemTracker`.
3. Memory is tracked per tensor storage: parameters, buffers, gradients, optimizer states,
   activations (tensors created in forward), temporaries (created in backward / the optimizer step),
   other (the batch). No allocator caching, fragmentation, CUDA context or cuBLAS workspace, i.e.
   the quantity ``torch.cuda.max_memory_allocated`` reports (not ``max_memory_reserved``).

CUDA behaviour the simulation copies: AdamW's ``foreach`` path (the CUDA default, it allocates a
temporary the size of all trainable parameters). CUDA's 512-byte allocation rounding is ignored
(< 1 MiB on every Table 4 cell).

Depth extrapolation. Transformer blocks are identical except block 0 (its input needs no gradient
under adapters, T5's block 0 holds the relative-position bias). The tracker keeps one peak per
*region* of the step: (phase, inside block 0 / inside another block / between blocks / before or after
a block stack). Each region's peak is an affine function of the depth L for L >= 2 (memory changes by
the same amount per block, so a region's maximum sits at one end of it), so two simulations at L=2
and L=3 give every region's peak at the real depth exactly, and the step's peak is the largest of
them. With gradient checkpointing the depths are 3 and 4 (``EXTRAPOLATION_DEPTHS_CKPT``).
``tests/test_memory_probe.py`` checks this against a full-depth simulation.

4-bit methods (qlora, qlora_fa) cannot run on fake tensors (bitsandbytes kernels): they are simulated
as their unquantized sibling with the block linears held at the compute dtype, then the parameter
bytes of those linears are replaced by NF4 bytes (:func:`nf4_bytes`: 0.5 byte/weight, 1 byte of
absmax per 64 weights, ~1.1 KiB of codes per weight), and one dequantized weight (the largest) is
added to the temporaries of forward and backward (W is dequantized for the matmul and for dX).
Checked against a real bitsandbytes step on CPU in the tests (within 1%).

Gradient checkpointing (``ProbeConfig.gradient_checkpointing``) runs as is: the recomputation in
backward is tracked like any other backward work (its tensors count as temporaries). Two differences
to a real step, both checked in the tests: (1) checkpointing saves the RNG state per block (5 KB of CPU
memory each, host memory on CUDA too), which fake mode does not allocate - right for
``max_memory_allocated``; (2) PyTorch's ``ModTracker`` (under ``MemTracker``) keeps the recomputed input
of a stack's first block, and its gradient, alive after backward when that input needs no gradient
(adapter methods): up to two hidden-state tensors per stack over-counted at the ``after_backward`` and
``after_optimizer_step`` marks, after the backward peak.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

#: the private parts of MemTracker this module relies on (torch 2.5 - 2.13)
MEMTRACKER_API = ("_update_and_maybe_create_winfos", "_track", "_curr_mem_snap", "_mod_tracker",
                  "_param_to_grad_hook_handles", "track_external")


def memtracker_error(detail: str) -> str:
    return (f"the simulate backend needs torch's private MemTracker API (torch.distributed._tools.mem_tracker: "
            f"{', '.join(MEMTRACKER_API)}), which torch {torch.__version__} does not provide ({detail}). "
            "Fix: use torch 2.5-2.13 for --backend simulate, or measure with --backend cuda / analytic")


try:
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType
except ImportError as e:  # pragma: no cover - depends on the torch build
    raise ImportError(memtracker_error(str(e))) from e


def check_memtracker() -> None:
    """Raise a clear RuntimeError if the installed MemTracker lacks a private member used here."""
    tracker = MemTracker()
    missing = [name for name in MEMTRACKER_API if not hasattr(tracker, name)]
    if missing:
        raise RuntimeError(memtracker_error(f"missing {', '.join(missing)}"))

from lorafa_repro.memory.step import (
    BOUNDARIES,
    INTERVALS,
    ProbeConfig,
    apply_probe_method,
    build_base_model,
    compute_dtype,
    fake_from_meta,
    make_batch,
    make_optimizer,
    model_depth,
    param_counts,
    uniform_depth,
    quantized_weight_numels,
    train_step,
    transformer_blocks,
)
from lorafa_repro.methods.quantize import nf4_bytes

#: MemTracker categories -> our breakdown keys
CATEGORY = {
    _MemRefType.PARAM: "parameters",
    _MemRefType.BUFFER: "buffers",
    _MemRefType.GRAD: "gradients",
    _MemRefType.OPT: "optimizer_states",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OTH: "other",
}
BREAKDOWN_KEYS = tuple(CATEGORY.values())
#: simulate at these depths and extrapolate when the real depth is larger
EXTRAPOLATION_DEPTHS = (2, 3)
#: with gradient checkpointing: the last block of a stack (recomputed first in backward) peaks above the
#: middle ones, so the region "another block" is affine in depth only from 3 blocks on (T5's decoder)
EXTRAPOLATION_DEPTHS_CKPT = (3, 4)

Snapshot = dict[str, int]  # breakdown key -> bytes, plus "total"


def block_index(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """:func:`transformer_blocks` keyed by ModTracker's FQNs (prefixed with the root module's class name)."""
    root = type(model).__name__
    return {f"{root}.{name}": v for name, v in transformer_blocks(model).items()}


class StepMemTracker(MemTracker):
    """``MemTracker`` for one training step, with per-phase and per-region peaks.

    Changes to the parent: (1) gradient hooks only on parameters that require grad (torch 2.13's
    MemTracker registers them on every parameter and raises on frozen ones); (2) no per-module
    snapshots (they cost a deep copy per module call and we need only the step's peak): new tensors
    are activations in the forward phase and temporaries in backward/optimizer, and the peak is kept
    per (phase, region) - see the module docstring; (3) phase boundaries come from ``mark``.
    """

    def __init__(self, blocks: dict[str, tuple[str, int, int]] | None = None) -> None:
        super().__init__()
        self.blocks = blocks or {}
        self.phase = "setup"
        self.marks: dict[str, Snapshot] = {}
        self.region_peaks: dict[tuple[str, str], Snapshot] = {}
        self._active: list[str] = []  # blocks in ModTracker.parents, oldest first
        self._last_block: tuple[str, int, int] | None = None

    # -- (1) frozen parameters ------------------------------------------------------------------
    def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True) -> tuple[int, int]:
        def grad_hook(grad: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        param_mem = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_mem += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            if install_grad_hooks and param.requires_grad and param not in self._param_to_grad_hook_handles:
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(grad_hook),
                    param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                )
        buffer_mem = 0
        for buf in module.buffers():
            buffer_mem += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(buf, _MemRefType.BUFFER))
        return param_mem, buffer_mem

    def track_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
        """Register what exists before the step: weights (with gradient hooks), optimizer states, batch."""
        self._track_module_params_and_buffers(model, install_grad_hooks=True)
        self.track_external(optimizer, *batch.values())

    # -- (2) no per-module snapshots ---------------------------------------------------------------
    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        pass

    def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        pass

    def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        res = func(*args, **(kwargs or {}))
        reftype = _MemRefType.ACT if self.phase == "forward" else _MemRefType.TEMP
        tree_map_only(torch.Tensor, partial(self._track, reftype), res)
        self._update_region_peak()
        return res

    def _region(self) -> str:
        """Where in the step we are: inside block 0 / another block of a stack, between blocks, or
        outside the stacks (labelled by the last stack left in this phase)."""
        current = [n for n in self._mod_tracker.parents if n in self.blocks]
        self._active = [n for n in self._active if n in current] + [n for n in current if n not in self._active]
        if self._active:
            stack, idx, n = self._last_block = self.blocks[self._active[-1]]
            return f"in:{stack}:{'0' if idx == 0 else 'k'}"
        if self._last_block is None:
            return "out:start"
        stack, idx, n = self._last_block
        done = idx == (n - 1 if self.phase == "forward" else 0)
        return f"out:{stack}:{'done' if done else 'between'}"

    def _snapshot(self) -> Snapshot:
        snap: Snapshot = dict.fromkeys(BREAKDOWN_KEYS, 0)
        snap["total"] = 0
        for dev_snap in self._curr_mem_snap.values():
            for k, v in dev_snap.items():
                if k == _TOTAL_KEY:
                    snap["total"] += v
                else:
                    snap[CATEGORY[k]] += v
        return snap

    def _update_region_peak(self) -> None:
        total = sum(d[_TOTAL_KEY] for d in self._curr_mem_snap.values())
        key = (self.phase, self._region())
        best = self.region_peaks.get(key)
        if best is None or total > best["total"]:
            self.region_peaks[key] = self._snapshot()

    # -- (3) phases --------------------------------------------------------------------------------
    def mark(self, boundary: str) -> None:
        """Called by ``train_step`` at each boundary; the next interval is the phase that follows it."""
        self.marks[boundary] = self._snapshot()
        following = {b: INTERVALS[a] for b, a in zip(BOUNDARIES, BOUNDARIES[1:])}
        self.phase = following.get(boundary, "done")
        self._active, self._last_block = [], None
        if self.phase != "done":
            self.region_peaks.setdefault((self.phase, "out:start"), dict(self.marks[boundary]))


def simulate_module(model: nn.Module, make_inputs: Callable[[], dict[str, torch.Tensor]],
                    make_optim: Callable[[nn.Module], torch.optim.Optimizer], *,
                    autocast_dtype: torch.dtype | None = None, max_grad_norm: float | None = 1.0,
                    semantics: str = "cuda") -> dict[str, Any]:
    """One fake-tensor training step of any meta-device ``model`` (method already applied).

    ``make_inputs`` and ``make_optim`` run inside the fake mode (their tensors are fake);
    ``make_optim`` must return the optimizer with its states already created; ``semantics``: whose saved
    tensors the ops keep (memory/semantics.py). Returns the region
    peaks and the phase marks (snapshots: breakdown key -> bytes, plus ``total``).
    """
    check_memtracker()
    mode = FakeTensorMode()
    model.train()
    fake_from_meta(model, mode)
    with mode:
        optimizer = make_optim(model)
        batch = make_inputs()
        tracker = StepMemTracker(block_index(model))
        tracker.track_step(model, optimizer, batch)
        with tracker:
            train_step(model, batch, optimizer, autocast_dtype=autocast_dtype, max_grad_norm=max_grad_norm,
                       on_boundary=tracker.mark, semantics=semantics)
    return {"regions": tracker.region_peaks, "marks": tracker.marks}


def simulate_once(cfg: ProbeConfig) -> dict[str, Any]:
    """One fake-tensor step of ``cfg`` at its (possibly overridden) depth: region peaks and marks."""
    with torch.device("meta"):
        model = build_base_model(cfg)
    model = apply_probe_method(model, cfg, simulate_4bit=True)
    vocab = model.config.vocab_size
    return simulate_module(model, lambda: make_batch(cfg, vocab, "cpu"),
                           lambda m: make_optimizer(m, cfg, foreach=True),
                           autocast_dtype=torch.bfloat16 if cfg.dtype == "mixed" else None,
                           max_grad_norm=cfg.max_grad_norm, semantics=cfg.semantics)


def _lerp(a: Snapshot, b: Snapshot, f: float) -> Snapshot:
    return {k: int(round(a[k] + (b[k] - a[k]) * f)) for k in a}


def extrapolate(run_a: dict[str, Any], run_b: dict[str, Any], depth_a: int, depth_b: int, depth: int) -> dict[str, Any]:
    """Every region peak and phase mark, linear in depth through the two runs, evaluated at ``depth``."""
    f = (depth - depth_a) / (depth_b - depth_a)
    common = run_a["regions"].keys() & run_b["regions"].keys()
    regions = {k: _lerp(run_a["regions"][k], run_b["regions"][k], f) for k in common}
    marks = {k: _lerp(run_a["marks"][k], run_b["marks"][k], f) for k in run_a["marks"]}
    return {"regions": regions, "marks": marks}


def correct_4bit(result: dict[str, Any], cfg: ProbeConfig) -> dict[str, Any]:
    """Swap the stand-in bytes of the quantized linears for NF4 bytes; add one dequantized weight to
    the forward and backward phases' temporaries (bitsandbytes, and qlora_fa's fused node, dequantize
    W to a compute-dtype temporary for the matmul in forward and for dX in backward)."""
    numels = quantized_weight_numels(cfg)
    itemsize = torch.empty((), dtype=compute_dtype(cfg.dtype)).element_size()
    delta = sum(nf4_bytes(n) for n in numels) - itemsize * sum(numels)
    dequant = itemsize * max(numels)

    def fix(snap: Snapshot, extra_temp: int) -> Snapshot:
        snap = dict(snap)
        snap["parameters"] += delta
        snap["temporaries"] += extra_temp
        snap["total"] += delta + extra_temp
        return snap

    regions = {k: fix(v, dequant if k[0] in ("forward", "backward") else 0) for k, v in result["regions"].items()}
    marks = {k: fix(v, 0) for k, v in result["marks"].items()}
    return {"regions": regions, "marks": marks,
            "nf4_correction": {"quantized_weights": sum(numels), "param_bytes_delta": delta,
                               "dequant_temp_bytes": dequant}}


def simulate(cfg: ProbeConfig, *, extrapolate_depth: bool = True) -> dict[str, Any]:
    """The simulate backend: peak bytes, breakdown at the peak, phase marks, parameter counts.

    ``extrapolate_depth``: above depth 3, simulate at depths 2 and 3 and extrapolate (see module doc;
    3 and 4 with gradient checkpointing); otherwise (or if False) simulate the real depth.
    """
    from lorafa_repro.methods import get_method

    depth = cfg.layers or model_depth(cfg.model)
    lo, hi = EXTRAPOLATION_DEPTHS_CKPT if cfg.gradient_checkpointing else EXTRAPOLATION_DEPTHS
    if extrapolate_depth and depth > hi and (cfg.layers is not None or uniform_depth(cfg.model)):
        runs = [simulate_once(replace(cfg, layers=d)) for d in (lo, hi)]
        res = extrapolate(runs[0], runs[1], lo, hi, depth)
        how = {"method": "linear in depth", "depths": [lo, hi], "to_depth": depth}
    else:
        res = simulate_once(cfg)
        how = None
    if get_method(cfg.method).quantize_4bit:
        res = correct_4bit(res, cfg)
    (phase, region), peak = max(res["regions"].items(), key=lambda kv: kv[1]["total"])
    phases: dict[str, dict[str, int]] = {k: {"allocated": v["total"]} for k, v in res["marks"].items()}
    for (ph, _), snap in res["regions"].items():
        boundary = next(b for b, i in INTERVALS.items() if i == ph)
        entry = phases.setdefault(boundary, {"allocated": 0})
        entry["peak_allocated"] = max(entry.get("peak_allocated", 0), snap["total"])
    out: dict[str, Any] = {
        "backend": "simulate",
        "device": "fake tensors (FakeTensorMode + MemTracker), CUDA defaults (AdamW foreach)",
        "counter": "simulated bytes held by tensors (comparable to torch.cuda.max_memory_allocated)",
        "peak_bytes": peak["total"],
        "peak_phase": phase,
        "peak_region": region,
        "breakdown": {k: peak[k] for k in BREAKDOWN_KEYS},
        "breakdown_gib": {k: round(peak[k] / 2**30, 3) for k in BREAKDOWN_KEYS},
        "phases": {b: phases[b] for b in BOUNDARIES if b in phases},
        "phase_breakdown": {b: {k: res["marks"][b][k] for k in BREAKDOWN_KEYS}
                            for b in BOUNDARIES if b in res["marks"]},
        "extrapolation": how,
        "params": param_counts(cfg),
    }
    if "nf4_correction" in res:
        out["nf4_correction"] = res["nf4_correction"]
    return out
