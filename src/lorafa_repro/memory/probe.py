"""Peak memory of one training step (forward, backward, optimizer step), by three backends: dispatch + CLI.

  cuda      a real step on the GPU: ``max_memory_allocated`` / ``max_memory_reserved`` per phase
            (peaks reset at every phase boundary), current ``memory_allocated`` at each boundary (memory/cuda.py).
  simulate  the same step under fake tensors (no memory is allocated, any machine): PyTorch's
            ``MemTracker`` gives the peak and its breakdown (memory/simulate.py).
  analytic  the paper's formulas (§2.2, §3.1) over the real layer shapes and dtypes (memory/analytic.py).
  cpu       (validation only) a real step on CPU tensors, peaks read from the CPU allocator's events
            (torch.profiler ``profile_memory``): tiny models, tests (memory/cpu.py).

The step itself (model, method, batch, optimizer, forward/backward/step) is memory/step.py, which every
backend imports; this module imports the backends and nothing imports it back. ``--semantics`` picks whose
saved tensors the simulated and cpu steps keep: CUDA's (default, what a GPU measures) or the CPU's
(memory/semantics.py).

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
        [--dtype fp32|bf16|mixed] [--gradient-checkpointing] [--semantics cuda|cpu] [--budget-gb 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lorafa_repro.memory.analytic import analytic
from lorafa_repro.memory.cpu import CpuAllocationLog, probe_cpu
from lorafa_repro.memory.cuda import Counters, CudaCounters, PhaseRecorder, measure_step, probe_cuda
from lorafa_repro.memory.semantics import SEMANTICS
from lorafa_repro.memory.step import (
    BACKENDS,
    BOUNDARIES,
    DTYPES,
    GIB,
    INTERVALS,
    ProbeConfig,
    check_positions,
    model_arch,
    model_depth,
    warm_up,
)

# names other modules import from here (the step and the real-run backends live in step.py, cuda.py, cpu.py)
__all__ = ["BACKENDS", "BOUNDARIES", "DTYPES", "GIB", "INTERVALS", "Counters", "CpuAllocationLog", "CudaCounters",
           "PhaseRecorder", "ProbeConfig", "main", "measure_step", "model_arch", "model_depth", "probe", "probe_cpu",
           "probe_cuda", "resolve_backend", "run_probe", "to_result", "warm_up"]


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
    check_positions(cfg)
    t0 = time.perf_counter()
    if backend == "cuda":
        out = probe_cuda(cfg)
    elif backend == "simulate":
        from lorafa_repro.memory.simulate import simulate  # lazily: it needs torch's private MemTracker

        out = simulate(cfg)
    elif backend == "analytic":
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


PROG = "python -m lorafa_repro.memory.probe"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from lorafa_repro.cli import ArgumentParser


    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped architecture (roberta-base, t5-large, llama-7b, tiny-*), or any Hugging Face "
                   "config: a directory with config.json, a config.json path, a .gguf file, a Hub id")
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
    p.add_argument("--semantics", choices=SEMANTICS, default="cuda",
                   help="saved tensors of the simulated/cpu step: CUDA's kernels (default) or the CPU's")
    p.add_argument("--budget-gb", type=float, default=40.0, help="device budget in GiB (OOM above it)")
    p.add_argument("--out", default=None, help="write DIR/result.json")
    a = p.parse_args(argv)
    if min(a.batch_size, a.seq_len, a.layers or 1, a.target_len if a.target_len is not None else 1) < 1:
        p.error("--batch-size, --seq-len, --layers and --target-len must be >= 1")
    if a.budget_gb <= 0:
        p.error("--budget-gb must be > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.cli import check_output_path, user_errors
    from lorafa_repro.quiet import quiet_known_warnings

    quiet_known_warnings()
    a = _parse_args(argv)
    with user_errors(PROG, ValueError):  # the cell's values, its model's config and --out, before any step
        cfg = ProbeConfig(model=a.model, method=a.method, rank=a.rank, alpha=a.alpha, batch_size=a.batch_size,
                          seq_len=a.seq_len, target_len=a.target_len, dtype=a.dtype, attn=a.attn, layers=a.layers,
                          gradient_checkpointing=a.gradient_checkpointing, semantics=a.semantics,
                          budget_gb=a.budget_gb)
        check_positions(cfg)
        if a.out is not None:
            check_output_path(a.out, "--out", folder=True)
    result = run_probe(cfg, a.backend, a.out)
    mem = result["memory"]
    print(json.dumps({"status": result["status"], "error": result["error"], **{
        k: mem.get(k) for k in ("backend", "device", "peak_gib", "peak_phase", "breakdown_gib") if k in mem},
        "params": result["params"], "wall_s": result["timing"]["wall_s"]}, indent=2))
    return 0 if result["status"] in ("success", "oom") else 1


if __name__ == "__main__":
    sys.exit(main())
