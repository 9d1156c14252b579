"""Peak memory of one training step (forward, backward, optimizer step), by three backends.

  cuda      a real step on the GPU: ``max_memory_allocated`` / ``max_memory_reserved`` per phase
            (peaks reset at every phase boundary), current ``memory_allocated`` at each boundary.
  simulate  the same step under fake tensors (no memory is allocated, any machine): PyTorch's
            ``MemTracker`` gives the peak and its breakdown (memory/simulate.py).
  analytic  the paper's formulas (§2.2, §3.1) over the real layer shapes and dtypes (memory/analytic.py).
  cpu       (validation only) a real step on CPU tensors, peaks read from the CPU allocator's events
            (torch.profiler ``profile_memory``): tiny models, tests.

``auto`` = ``cuda`` when a GPU is present, else ``simulate``.

The step is the suite's training step in steady state: the optimizer's states already exist (one
warm-up ``step()`` on zero gradients before measuring), gradients are ``None`` at the start,
``model(**batch).loss`` under autocast for ``mixed``, ``backward()``, gradient clipping, ``step()``,
``zero_grad(set_to_none=True)``. AdamW runs with ``foreach=True``, PyTorch's default on CUDA.

Numbers are bytes; the *_gib fields divide by 2**30. ``--budget-gb`` is in the same unit (GiB): a
peak above it is reported with status ``oom`` (the numbers are kept), not as a crash.

CLI::

    python -m lorafa_repro.memory.probe --model roberta-base --method lora_fa --rank 8 \\
        --batch-size 64 --seq-len 128 [--backend auto|cuda|simulate|analytic|cpu] \\
        [--dtype fp32|bf16|mixed] [--gradient-checkpointing] [--budget-gb 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from lorafa_repro.models import count_parameters, enable_gradient_checkpointing

GIB = 2**30
DTYPES = ("fp32", "bf16", "mixed")
BACKENDS = ("auto", "cuda", "simulate", "analytic", "cpu")
#: phase boundaries of one step, in order; the interval that ends at a boundary is named in INTERVALS
BOUNDARIES = ("step_start", "after_forward", "after_backward", "after_optimizer_step")
INTERVALS = {"after_forward": "forward", "after_backward": "backward", "after_optimizer_step": "optimizer"}
#: model_type -> architecture family (picks the model head and the batch layout)
ARCH_OF_TYPE = {"roberta": "encoder", "bert": "encoder", "t5": "encoder_decoder", "llama": "decoder"}
#: config keys holding the number of transformer blocks
DEPTH_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers")


@dataclass(frozen=True)
class ProbeConfig:
    """One table cell: which model, method and step to measure.

    ``seq_len``: tokens per example for encoders, source tokens for T5 and LLaMA. ``target_len``:
    T5 target tokens (``None`` = ``seq_len``); for LLaMA the response tokens appended to the source
    (``None`` = 0), so a causal-LM example has ``seq_len + target_len`` tokens.
    ``dtype``: fp32 (weights and compute), bf16 (weights, grads, optimizer states and compute in
    bf16), mixed (fp32 weights + bf16 autocast, the suite's GPU default; the simulator's fake tensors
    are CPU tensors, so it applies CPU autocast's op lists, which differ a little from CUDA's).
    ``attn``: the attention implementation; ``eager`` is what 2023 transformers ran for all three
    families (and the only one T5 has).
    ``layers``: override the depth (used by the simulator's extrapolation); ``None`` = the real depth.
    ``gradient_checkpointing``: activation recomputation per transformer block (transformers'
    ``gradient_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``; the training runs'
    ``trainer.gradient_checkpointing``): forward keeps only each block's input, backward recomputes one
    block at a time. Off in Table 4 (the paper's LoRA-FA claim is "no recomputation").
    """

    model: str
    method: str
    rank: int | None = 8
    alpha: float = 16.0
    batch_size: int = 64
    seq_len: int = 128
    target_len: int | None = None
    dtype: str = "fp32"
    attn: str = "eager"
    target_modules: tuple[str, ...] | None = None
    lora_dropout: float = 0.0
    num_labels: int = 2
    layers: int | None = None
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = 1.0
    budget_gb: float = 40.0
    # method options (methods.apply_method): LongLoRA's S2-Attn in training (decoders; ``attn`` is the kernel
    # of its group attention) and extra trained modules (``embed``, ``norm``); Houlsby adapter settings
    s2_attn: bool = False
    s2_group_fraction: float = 0.25
    trainable_extra: tuple[str, ...] = ()
    adapter_nonlinearity: str = "gelu"
    adapter_train_norms: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        from lorafa_repro.methods import get_method

        spec = get_method(self.method)
        if spec.uses_adapters and (self.rank is None or self.rank <= 0):
            raise ValueError(f"{self.method} needs a rank > 0")
        if not spec.uses_adapters and self.rank is not None:
            object.__setattr__(self, "rank", None)  # FT has no rank; keep cells comparable

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules else None
        d["trainable_extra"] = list(self.trainable_extra)
        return d


# ----------------------------------------------------------------------------------------------
# Model, batch and step: shared by every backend that runs the step (cuda, simulate, cpu)
# ----------------------------------------------------------------------------------------------

def model_arch(model: str) -> str:
    """encoder | encoder_decoder | decoder for a shipped architecture name."""
    from lorafa_repro.models import shipped_config

    cfg = shipped_config(model)
    if cfg.model_type in ARCH_OF_TYPE:
        return ARCH_OF_TYPE[cfg.model_type]
    return "encoder_decoder" if getattr(cfg, "is_encoder_decoder", False) else "decoder"


def model_depth(model: str) -> int:
    """Number of transformer blocks per stack in a shipped config."""
    from lorafa_repro.models import shipped_config

    cfg = shipped_config(model)
    return int(next(getattr(cfg, k) for k in DEPTH_KEYS if getattr(cfg, k, None)))


def compute_dtype(dtype: str) -> torch.dtype:
    """dtype of matmuls: bf16 for ``bf16`` and ``mixed``, else fp32."""
    return torch.float32 if dtype == "fp32" else torch.bfloat16


def simulated_method(method: str) -> str:
    """The method whose graph a 4-bit method is simulated with: ``qlora`` -> ``lora``,
    ``qlora_fa`` -> ``lora_fa`` (same adapters; the base weights are held at the compute dtype and their
    bytes corrected to NF4 afterwards, see simulate.py)."""
    from lorafa_repro.methods import METHODS, get_method

    spec = get_method(method)
    if not spec.quantize_4bit:
        return method
    sibling = method[1:] if method.startswith("q") else None
    if sibling not in METHODS or METHODS[sibling].quantize_4bit:
        raise ValueError(f"4-bit method {method!r} has no unquantized sibling to simulate with")
    return sibling


def build_base_model(cfg: ProbeConfig) -> nn.Module:
    """The shipped architecture at ``cfg.layers`` depth, random init, on the current default device
    (call inside ``torch.device("meta")`` for a weightless model)."""
    from lorafa_repro.models import model_from_config, shipped_config

    arch = model_arch(cfg.model)
    overrides: dict[str, Any] = {}
    if cfg.layers is not None:
        base = shipped_config(cfg.model)
        overrides.update({k: cfg.layers for k in DEPTH_KEYS if getattr(base, k, None)})
    if arch == "encoder":
        overrides["num_labels"] = cfg.num_labels
    weight_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    model = model_from_config(shipped_config(cfg.model, **overrides), arch=arch,
                              task_kind="classification" if arch == "encoder" else "lm", dtype=weight_dtype,
                              attn_implementation=cfg.attn)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def apply_probe_method(model: nn.Module, cfg: ProbeConfig, *, simulate_4bit: bool) -> nn.Module:
    """``methods.apply_method`` with the cell's settings. ``simulate_4bit``: a 4-bit method is applied
    as its unquantized sibling, with the block linears cast to the compute dtype first (16-bit
    stand-ins for the NF4 weights; simulate.py corrects their bytes)."""
    from lorafa_repro.methods import apply_method, block_linears, get_method

    method = cfg.method
    if simulate_4bit and get_method(method).quantize_4bit:
        method = simulated_method(method)
        for name in block_linears(model):
            model.get_submodule(name).to(compute_dtype(cfg.dtype))
    targets = list(cfg.target_modules) if cfg.target_modules else None
    return apply_method(model, method, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                        target_modules=targets, compute_dtype=compute_dtype(cfg.dtype), s2_attn=cfg.s2_attn,
                        s2_group_fraction=cfg.s2_group_fraction, trainable_extra=list(cfg.trainable_extra),
                        adapter_nonlinearity=cfg.adapter_nonlinearity, adapter_train_norms=cfg.adapter_train_norms)


def make_batch(cfg: ProbeConfig, vocab_size: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Random token ids shaped like one training batch of the cell.

    Encoder inputs carry an attention mask with one padded position: real batches are padded, and
    transformers skips building the attention mask when it is all ones, a data-dependent branch that
    fake tensors cannot take - with one pad both the real and the simulated step build the mask.
    """
    b, s = cfg.batch_size, cfg.seq_len
    arch = model_arch(cfg.model)
    ids = torch.randint(5, vocab_size, (b, s), device=device)
    mask = torch.ones(b, s, dtype=torch.long, device=device)
    mask[0, -1] = 0
    if arch == "encoder":
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.randint(0, cfg.num_labels, (b,), device=device)}
    if arch == "encoder_decoder":
        t = cfg.target_len if cfg.target_len is not None else s
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(5, vocab_size, (b, t), device=device)}
    total = s + (cfg.target_len or 0)
    ids = torch.randint(5, vocab_size, (b, total), device=device)
    return {"input_ids": ids, "labels": ids.clone()}


def make_optimizer(model: nn.Module, cfg: ProbeConfig, *, foreach: bool = True) -> torch.optim.Optimizer:
    """The method's optimizer (``methods.build_optimizer``), in steady state: one ``step()`` on zero
    gradients creates its states, so the measured step starts with them allocated, as every step of
    a real run after the first does. ``foreach``: AdamW's multi-tensor path (the CUDA default)."""
    from lorafa_repro.methods import build_optimizer

    opt = build_optimizer(model, cfg.method, lr=1e-4, weight_decay=0.0, rank=cfg.rank, alpha=cfg.alpha)
    for group in opt.param_groups:
        if "foreach" in group:
            group["foreach"] = foreach
    return warm_up(opt)


def warm_up(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Allocate the optimizer's states with one step on zero gradients (steady state of a real run)."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               autocast_dtype: torch.dtype | None, max_grad_norm: float | None,
               on_boundary: Callable[[str], None]) -> None:
    """One training step as the suite's trainer runs it, calling ``on_boundary`` at each of BOUNDARIES."""
    device_type = next(iter(batch.values())).device.type
    autocast = (torch.autocast(device_type=device_type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    on_boundary("step_start")
    with autocast:
        loss = model(**batch).loss
    on_boundary("after_forward")
    loss.backward()
    del loss
    on_boundary("after_backward")
    if max_grad_norm:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    on_boundary("after_optimizer_step")


# ----------------------------------------------------------------------------------------------
# Phase recording for real runs (cuda, cpu): counters behind a small interface, testable on CPU
# ----------------------------------------------------------------------------------------------

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
    with torch.device(device):
        model = build_base_model(cfg)
    model = apply_probe_method(model, cfg, simulate_4bit=False)
    model.train()
    recorder.mark("weights_loaded")
    optimizer = make_optimizer(model, cfg, foreach=True)
    batch = make_batch(cfg, model.config.vocab_size, device)
    autocast_dtype = torch.bfloat16 if cfg.dtype == "mixed" else None
    counters.reset_peaks()
    train_step(model, batch, optimizer, autocast_dtype=autocast_dtype, max_grad_norm=cfg.max_grad_norm,
               on_boundary=recorder.mark)
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
    model = build_base_model(cfg)
    model = apply_probe_method(model, cfg, simulate_4bit=False)
    model.train()
    optimizer = make_optimizer(model, cfg, foreach=True)
    batch = make_batch(cfg, model.config.vocab_size, "cpu")
    resident = _tensor_bytes(model, optimizer, batch)
    autocast_dtype = torch.bfloat16 if cfg.dtype == "mixed" else None
    with counters.recording():
        train_step(model, batch, optimizer, autocast_dtype=autocast_dtype, max_grad_norm=cfg.max_grad_norm,
                   on_boundary=counters.mark)
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


# ----------------------------------------------------------------------------------------------
# Dispatch, result.json, CLI
# ----------------------------------------------------------------------------------------------

def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    if backend == "auto":
        return "cuda" if torch.cuda.is_available() else "simulate"
    return backend


def probe(cfg: ProbeConfig, backend: str = "auto") -> dict[str, Any]:
    """Peak memory of one step of ``cfg``: a dict with ``peak_bytes``, ``breakdown`` (where the backend
    gives one), ``phases``, ``params``, ``backend``, ``device``; ``oom`` True if the peak exceeds
    ``cfg.budget_gb`` (or the GPU ran out)."""
    backend = resolve_backend(backend)
    t0 = time.perf_counter()
    if backend == "cuda":
        out = probe_cuda(cfg)
    elif backend == "simulate":
        from lorafa_repro.memory.simulate import simulate

        out = simulate(cfg)
    elif backend == "analytic":
        from lorafa_repro.memory.analytic import analytic

        out = analytic(cfg)
    else:
        out = probe_cpu(cfg)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    budget = cfg.budget_gb * GIB
    out["budget_bytes"] = int(budget)
    if "peak_bytes" in out:
        out["peak_gib"] = round(out["peak_bytes"] / GIB, 3)
        out["oom"] = bool(out.get("oom")) or out["peak_bytes"] > budget
    return out


def to_result(cfg: ProbeConfig, out: dict[str, Any], *, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``memory_probe`` result.json: status success | oom | failed, numbers under memory/params."""
    from lorafa_repro.results import new_result

    result = new_result("memory_probe", {**cfg.to_dict(), **(extra_config or {})})
    result["memory"] = {k: v for k, v in out.items() if k not in ("params", "wall_s", "error", "oom")}
    result["params"] = out.get("params", {})
    result["timing"] = {"wall_s": out.get("wall_s")}
    if out.get("error") and "peak_bytes" not in out:
        result["status"] = "oom" if out.get("oom") else "failed"
        result["error"] = out["error"]
    elif out.get("oom"):
        result["status"] = "oom"
        result["error"] = (f"peak {out['peak_bytes'] / GIB:.2f} GiB ({out['backend']}) exceeds the "
                           f"{cfg.budget_gb:g} GiB budget")
    else:
        result["status"] = "success"
    return result


def run_probe(cfg: ProbeConfig, backend: str = "auto", out_dir: str | Path | None = None,
              *, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``probe`` + result.json (written under ``out_dir`` if given). Exceptions become status failed."""
    from lorafa_repro.results import write_json_atomic

    try:
        out = probe(cfg, backend)
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop a table
        out = {"backend": resolve_backend(backend), "error": f"{type(e).__name__}: {e}"}
    result = to_result(cfg, out, extra_config=extra_config)
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "result.json", result)
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lorafa_repro.memory.probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped architecture (roberta-base, t5-large, llama-7b, tiny-*)")
    p.add_argument("--method", required=True, help="ft | lora | lora_fa | qlora | ... (methods.METHODS)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--target-len", type=int, default=None,
                   help="T5 target tokens (default = seq-len); LLaMA response tokens appended (default 0)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--attn", default="eager", help="attention implementation (eager | sdpa)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--layers", type=int, default=None, help="override the depth (default: the real one)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each transformer block's activations in backward (default: off)")
    p.add_argument("--budget-gb", type=float, default=40.0, help="device budget in GiB (OOM above it)")
    p.add_argument("--out", default=None, help="write DIR/result.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.results import quiet_known_warnings

    quiet_known_warnings()
    a = _parse_args(argv)
    cfg = ProbeConfig(model=a.model, method=a.method, rank=a.rank, alpha=a.alpha, batch_size=a.batch_size,
                      seq_len=a.seq_len, target_len=a.target_len, dtype=a.dtype, attn=a.attn, layers=a.layers,
                      gradient_checkpointing=a.gradient_checkpointing, budget_gb=a.budget_gb)
    result = run_probe(cfg, a.backend, a.out)
    mem = result["memory"]
    print(json.dumps({"status": result["status"], "error": result["error"], **{
        k: mem.get(k) for k in ("backend", "device", "peak_gib", "peak_phase", "breakdown_gib") if k in mem},
        "params": result["params"], "wall_s": result["timing"]["wall_s"]}, indent=2))
    return 0 if result["status"] in ("success", "oom") else 1


if __name__ == "__main__":
    sys.exit(main())
