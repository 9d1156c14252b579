"""Will it fit? Peak memory of one training step of any Hugging Face model, for every method, on any machine.

For each method the simulator (memory/simulate.py: fake tensors, no memory allocated, CUDA's saved-tensor
semantics) runs one real training step of the model built from its config (memory/step.py: a shipped name,
a local directory, a config.json, a .gguf file or a Hub id - only config.json is fetched), at 2 and 3 blocks,
and extrapolates to the real depth (3 and 4 with gradient checkpointing). The peak is
``torch.cuda.max_memory_allocated``'s quantity: bytes held by tensors, no CUDA context (~0.3-0.5 GiB), no
allocator caching or fragmentation, no cuBLAS workspace - leave headroom for those.

Breakdown at the peak (what the simulator tracks per tensor): weights (parameters + buffers; NF4 bytes for
4-bit methods), gradients, optimizer states (AdamW m and v), activations (tensors made in forward and still
alive), temporaries (made in backward / the optimizer step: recomputation, dX buffers, AdamW foreach scratch,
a dequantized NF4 weight), other (the batch).

``--max-batch``: the largest batch size whose peak fits the budget, by bisection over simulated steps. It
assumes the peak never decreases when the batch grows (every activation is batch x something), checks that
on every batch it simulated, and checks the boundary: batch b fits and b + 1 does not, both simulated. The
bracket is seeded by a straight line through the peaks at batch 1 and 2 (the peak is close to affine in the
batch), then widened by doubling until it holds the boundary.

CLI::

    lorafa-plan --model meta-llama/Llama-2-7b-hf|DIR|config.json --methods ft,lora,lora_fa,qlora,qlora_fa \\
        --budget-gb 24 --seq-len 2048 [--batch-size B | --max-batch] [--dtype bf16|mixed|fp32] \\
        [--gradient-checkpointing] [--rank 16] [--attn sdpa|eager] [--out plan.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from lorafa_repro.errors import ConfigError
from lorafa_repro.memory.step import DTYPES, GIB, ProbeConfig, model_arch, model_config, model_depth, moe_experts

DEFAULT_METHODS = ("ft", "lora", "lora_fa", "qlora", "qlora_fa")
#: breakdown columns: planner name -> simulator keys summed into it
COLUMNS = {"weights": ("parameters", "buffers"), "gradients": ("gradients",),
           "optimizer_states": ("optimizer_states",), "activations": ("activations",),
           "temporaries": ("temporaries",), "other": ("other",)}
MAX_BATCH_CAP = 1 << 16


def breakdown(sim: dict[str, Any]) -> dict[str, int]:
    """The simulator's breakdown at the peak, in the planner's columns (bytes)."""
    b = sim["breakdown"]
    return {col: sum(int(b.get(k, 0)) for k in keys) for col, keys in COLUMNS.items()}


def simulate_peak(cfg: ProbeConfig) -> dict[str, Any]:
    from lorafa_repro.memory.simulate import simulate

    return simulate(cfg)


def find_max_batch(peak_of: Callable[[int], int], budget: int, cap: int = MAX_BATCH_CAP) -> dict[str, Any]:
    """Largest batch b with ``peak_of(b) <= budget`` (0 if batch 1 does not fit), by bisection.

    ``peak_of`` is assumed non-decreasing in the batch; every simulated point is kept and checked against
    that. Returns ``max_batch``, ``peaks`` (batch -> bytes, every one simulated), ``boundary`` (the
    simulated peaks at b and b + 1), ``monotone`` and ``capped`` (b reached ``cap`` still fitting)."""
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in peaks:
            peaks[b] = int(peak_of(b))
        return peaks[b] <= budget

    def bracket() -> tuple[int, int | None]:
        """(largest fitting batch simulated, smallest non-fitting batch simulated above it or None)."""
        lo = max([b for b, p in peaks.items() if p <= budget], default=0)
        over = [b for b, p in peaks.items() if p > budget and b > lo]
        return lo, min(over, default=None)

    if fits(1) and cap > 1:
        fits(2)
        slope = max(peaks[2] - peaks[1], 1)
        fits(max(1, min(cap, 1 + (budget - peaks[1]) // slope)))  # the straight-line guess
        lo, hi = bracket()
        step = 1
        while hi is None and lo < cap:  # widen upwards by doubling
            fits(min(cap, lo + step))
            lo, hi = bracket()
            step *= 2
    lo, hi = bracket()
    while hi is not None and hi - lo > 1:  # bisection
        fits((lo + hi) // 2)
        lo, hi = bracket()
    capped = hi is None  # b = cap still fits
    ordered = [peaks[b] for b in sorted(peaks)]
    monotone = all(a <= b for a, b in zip(ordered, ordered[1:]))
    boundary = {str(b): peaks[b] for b in (lo, lo + 1) if b in peaks}
    return {"max_batch": lo, "peaks": {str(b): peaks[b] for b in sorted(peaks)}, "boundary": boundary,
            "monotone": monotone, "capped": capped}


def plan_method(cfg: ProbeConfig, *, max_batch: bool) -> dict[str, Any]:
    """One method's row: peak, breakdown, fits (and the max batch)."""
    budget = int(cfg.budget_gb * GIB)
    sim = simulate_peak(cfg)
    row: dict[str, Any] = {
        "method": cfg.method, "rank": cfg.rank, "batch_size": cfg.batch_size, "peak_bytes": int(sim["peak_bytes"]),
        "peak_gib": round(sim["peak_bytes"] / GIB, 3), "breakdown": breakdown(sim), "peak_phase": sim["peak_phase"],
        "fits": sim["peak_bytes"] <= budget, "params": sim["params"], "extrapolation": sim["extrapolation"],
    }
    if "nf4_correction" in sim:
        row["nf4_correction"] = sim["nf4_correction"]
    if max_batch:
        cache = {cfg.batch_size: row["peak_bytes"]}

        def peak_of(b: int) -> int:
            if b not in cache:
                cache[b] = int(simulate_peak(replace(cfg, batch_size=b))["peak_bytes"])
            return cache[b]

        row["max_batch"] = find_max_batch(peak_of, budget)
    return row


def plan(model: str, methods: list[str], *, budget_gb: float, seq_len: int, batch_size: int = 1,
         max_batch: bool = False, dtype: str = "bf16", gradient_checkpointing: bool = False, rank: int = 16,
         attn: str = "sdpa", on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The plan: the model's description and one row per method (see the module doc)."""
    from lorafa_repro.methods import get_method

    hf = model_config(model)  # fails early, with a Fix, when there is no usable config
    for m in methods:
        get_method(m)
    arch = model_arch(model)
    rows = []
    t0 = time.perf_counter()
    for m in methods:
        t = time.perf_counter()
        cfg = ProbeConfig(model=model, method=m, rank=None if not get_method(m).uses_adapters else rank,
                          alpha=2.0 * rank, batch_size=batch_size, seq_len=seq_len, dtype=dtype, attn=attn,
                          gradient_checkpointing=gradient_checkpointing, budget_gb=budget_gb)
        row = plan_method(cfg, max_batch=max_batch)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        if on_row:
            on_row(row)
    return {
        "model": model, "model_type": hf.model_type, "family": arch, "depth": model_depth(model),
        "moe_experts": moe_experts(hf) or None, "budget_gb": budget_gb, "budget_bytes": int(budget_gb * GIB),
        "seq_len": seq_len, "batch_size": None if max_batch else batch_size, "dtype": dtype, "attn": attn,
        "gradient_checkpointing": gradient_checkpointing, "rank": rank,
        "tokens_per_example": ("seq_len source + seq_len target tokens" if arch == "encoder_decoder"
                               else "seq_len tokens"),
        "counter": "bytes held by tensors = torch.cuda.max_memory_allocated (no CUDA context, cache, fragmentation)",
        "methods": rows, "wall_s": round(time.perf_counter() - t0, 1),
    }


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "peak GiB", *[c.replace("_", " ") for c in COLUMNS], "fits"]
    max_batch = any("max_batch" in r for r in result["methods"])
    if max_batch:
        head.append("max batch")
    rows = []
    for r in result["methods"]:
        name = r["method"] + (f" r={r['rank']}" if r["rank"] else "")
        line = [name, _gib(r["peak_bytes"]), *[_gib(r["breakdown"][c]) for c in COLUMNS],
                "yes" if r["fits"] else "no"]
        if max_batch:
            mb = r["max_batch"]
            line.append(f">={mb['max_batch']}" if mb["capped"] else str(mb["max_batch"]))
        rows.append(line)
    return head, rows


def markdown(result: dict[str, Any]) -> str:
    head, rows = table_rows(result)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def title(result: dict[str, Any]) -> str:
    batch = "max batch" if result["batch_size"] is None else f"batch {result['batch_size']}"
    moe = f", MoE {result['moe_experts']} experts" if result["moe_experts"] else ""
    return (f"{result['model']} ({result['model_type']}, {result['family']}, {result['depth']} blocks{moe}) | "
            f"{batch} x {result['seq_len']} tokens | {result['dtype']} | attn {result['attn']} | "
            f"checkpointing {'on' if result['gradient_checkpointing'] else 'off'} | budget {result['budget_gb']:g} GiB")


def notes(result: dict[str, Any]) -> list[str]:
    out = ["peak = bytes held by tensors (torch.cuda.max_memory_allocated); add ~0.5-1 GiB for the CUDA context, "
           "cuBLAS workspace and allocator fragmentation.",
           "breakdown at the peak moment; weights = parameters + buffers (NF4 bytes for 4-bit methods); "
           "other = the batch."]
    if any("max_batch" in r for r in result["methods"]):
        out.append("max batch: bisection over simulated steps, assuming the peak never falls as the batch grows; "
                   "the boundary b (fits) and b+1 (does not) are both simulated.")
        for r in result["methods"]:
            if not r["max_batch"]["monotone"]:
                out.append(f"WARNING {r['method']}: simulated peaks not monotone in the batch: "
                           f"{r['max_batch']['peaks']}")
    if result["moe_experts"]:
        out.append("MoE: every expert is resident; per-step expert buffers are sized tokens x top_k, so they do "
                   "not depend on which experts the router picks. Adapters go on nn.Linear only (not on the "
                   "fused 3-D expert weights), and 4-bit methods quantize nn.Linear only.")
    return out


def print_table(result: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # noqa: N806
    if Console is None or not sys.stdout.isatty():  # Markdown when piped (logs, README files) or without rich
        print(title(result))
        print(markdown(result))
    else:
        head, rows = table_rows(result)
        table = Table(title=title(result))
        for h in head:
            table.add_column(h, justify="left" if h == "method" else "right")
        for r in rows:
            table.add_row(*r)
        Console(width=160).print(table)
    for n in notes(result):
        print(f"- {n}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lorafa-plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hub id (config.json only), local directory, config.json, .gguf file or shipped name")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated (methods.METHODS)")
    p.add_argument("--budget-gb", type=float, default=24.0, help="device memory budget in GiB")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per example (encoder-decoder: per side)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--max-batch", action="store_true", help="find the largest batch that fits (bisection)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16",
                   help="bf16 (weights, grads, states, compute; default) | mixed (fp32 weights + bf16 autocast) | fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--rank", type=int, default=16, help="adapter rank (alpha = 2 x rank)")
    p.add_argument("--attn", default="sdpa", help="attention implementation: sdpa (default) | eager")
    p.add_argument("--out", type=Path, default=None, help="write the plan as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.results import quiet_known_warnings, write_json_atomic

    quiet_known_warnings()
    a = _parse_args(argv)
    if a.batch_size < 1 or a.seq_len < 1 or a.budget_gb <= 0 or a.rank < 1:
        print("error: --batch-size, --seq-len, --rank must be >= 1 and --budget-gb > 0. Fix: pass positive values",
              file=sys.stderr)
        return 2
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    try:
        result = plan(a.model, methods, budget_gb=a.budget_gb, seq_len=a.seq_len, batch_size=a.batch_size,
                      max_batch=a.max_batch, dtype=a.dtype, gradient_checkpointing=a.gradient_checkpointing,
                      rank=a.rank, attn=a.attn,
                      on_row=lambda r: print(f"  {r['method']}: {r['peak_gib']:.2f} GiB ({r['wall_s']}s)",
                                             file=sys.stderr, flush=True))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(result)
    print(f"- planned in {result['wall_s']} s")
    if a.out:
        write_json_atomic(a.out, result)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
