"""Figure 3: peak memory vs LoRA rank for LoRA and LoRA-FA, RoBERTa-large and LLaMA-7B.

    python analysis/fig3_memory_vs_rank.py [--backend auto|cuda|simulate|analytic] [--out results]
        [--budget-gb 40] [--force] [--plot-only]

Points: ranks 1, 2, 4, ..., 128 x {LoRA, LoRA-FA} x {RoBERTa-large, batch 64, 128 tokens;
LLaMA-7B, batch 32, 128 source + 128 target tokens}, fp32 as in Table 4 (results/table4/table4.md).
One result per point in <out>/fig3/<model>__<method>__r<rank>.json (the memory_probe result schema;
a point already there with the same configuration and backend is not recomputed unless --force), then
<out>/fig3_memory_vs_rank.pdf and .png. ``--plot-only`` draws from the stored points alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = ("lora", "lora_fa")
#: (model, batch, seq_len, target_len, panel title)
PANELS = (
    ("roberta-large", 64, 128, None, "RoBERTa-large (batch 64, seq 128)"),
    ("llama-7b", 32, 128, 128, "LLaMA-7B (batch 32, source/target 128)"),
)
DTYPE = "fp32"
GIB = 2**30


def point_path(out: Path, model: str, method: str, rank: int) -> Path:
    return out / "fig3" / f"{model}__{method}__r{rank}.json"


def compute_points(out: Path, backend: str, budget_gb: float, force: bool = False) -> None:
    """Probe every point not stored yet, one progress line each."""
    from lorafa_repro.memory.probe import ProbeConfig, resolve_backend, run_probe
    from lorafa_repro.results import write_json_atomic

    backend = resolve_backend(backend)
    todo = [(p, m, r) for p in PANELS for m in METHODS for r in RANKS]
    t_start = time.perf_counter()
    for i, ((model, batch, seq, target, _), method, rank) in enumerate(todo, 1):
        cfg = ProbeConfig(model=model, method=method, rank=rank, batch_size=batch, seq_len=seq, target_len=target,
                          dtype=DTYPE, budget_gb=budget_gb)
        path = point_path(out, model, method, rank)
        head = f"[{i:2d}/{len(todo)}] {model} {method} r={rank}"
        if not force and path.exists():
            old = json.loads(path.read_text())
            same = all(old["config"].get(k) == v for k, v in cfg.to_dict().items())
            if same and old["memory"].get("backend") == backend and "peak_bytes" in old["memory"]:
                print(f"{head}: done already", flush=True)
                continue
        t0 = time.perf_counter()
        result = run_probe(cfg, backend, extra_config={"figure": "fig3"})
        write_json_atomic(path, result)
        peak = result["memory"].get("peak_bytes")
        print(f"{head}: {result['status']} {peak / GIB if peak else float('nan'):.2f} GiB "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"fig3: {len(todo)} points in {time.perf_counter() - t_start:.0f}s", flush=True)


def load_points(out: Path) -> list[dict[str, Any]]:
    points = []
    for p in sorted((out / "fig3").glob("*.json")):
        d = json.loads(p.read_text())
        if "peak_bytes" in d["memory"]:
            points.append({"model": d["config"]["model"], "method": d["config"]["method"], "rank": d["config"]["rank"],
                           "gib": d["memory"]["peak_bytes"] / GIB, "backend": d["memory"].get("backend"),
                           "device": d["memory"].get("device")})
    return points


def plot(out: Path, budget_gb: float) -> list[Path]:
    """Two panels, peak GiB vs rank (log2 axis), LoRA vs LoRA-FA, the device budget as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = load_points(out)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(9, 3.4))
    styles = {"lora": dict(marker="o", color="tab:blue", label="LoRA"),
              "lora_fa": dict(marker="s", color="tab:red", label="LoRA-FA")}
    for ax, (model, *_, title) in zip(axes, PANELS):
        for method in METHODS:
            pts = sorted((p["rank"], p["gib"]) for p in points if p["model"] == model and p["method"] == method)
            if pts:
                ax.plot([r for r, _ in pts], [g for _, g in pts], **styles[method])
        ax.axhline(budget_gb, color="gray", ls="--", lw=1, label=f"{budget_gb:g} GiB budget")
        ax.set_xscale("log", base=2)
        ax.set_xticks(RANKS, [str(r) for r in RANKS])
        ax.set_xlabel("rank")
        ax.set_ylabel("peak memory (GiB)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    backends = sorted({p["backend"] for p in points})
    fig.suptitle(f"Figure 3: peak memory vs rank ({', '.join(backends)}, {DTYPE})", fontsize=10)
    fig.tight_layout()
    paths = [out / "fig3_memory_vs_rank.pdf", out / "fig3_memory_vs_rank.png"]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto", choices=("auto", "cuda", "simulate", "analytic"))
    p.add_argument("--out", type=Path, default=REPO / "results")
    p.add_argument("--budget-gb", type=float, default=40.0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--plot-only", action="store_true")
    a = p.parse_args(argv)
    if not a.plot_only:
        compute_points(a.out, a.backend, a.budget_gb, a.force)
    for path in plot(a.out, a.budget_gb):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
