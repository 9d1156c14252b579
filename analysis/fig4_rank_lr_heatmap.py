"""Figure 4: MRPC score over rank x learning rate for LoRA and LoRA-FA (RoBERTa-base, batch 64, seq 128).

    python -m lorafa_repro.train --config-dir sweeps --config-name rank_lr_mrpc task.data_dir=<glue_data>
    python analysis/fig4_rank_lr_heatmap.py [--results results/raw/rank_lr_mrpc] [--out results]
        [--model roberta-base] [--task mrpc]

Reads only result.json files (kind train, status success) under --results. A cell is the median over
seeds of the final score (accuracy for MRPC, in percent), as in Table 1; a grid point with no run is
left blank. Writes <out>/fig4_rank_lr_heatmap.{pdf,png} and <out>/fig4_rank_lr_heatmap.md with both
grids and the paper's claim checked on them: the best learning rate falls as the rank grows (a negative
correlation between rank and learning rate, §4.3), reported as the Spearman correlation between each
rank and its best learning rate.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lora", "lora_fa")
LABELS = {"lora": "LoRA", "lora_fa": "LoRA-FA"}


def load_grid(results: Path, model: str, task: str) -> pd.DataFrame:
    """Columns method, rank, lr, score (median over seeds, percent), seeds."""
    from lorafa_repro.results import load_results

    df = load_results(results, kind="train", status="success")
    cols = ["method", "rank", "lr", "score", "seeds"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df[(df["model_label"] == model) & (df["config.task.name"] == task)
            & df["config.method.name"].isin(METHODS)]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.assign(method=df["config.method.name"], rank=df["config.method.rank"].astype(int),
                   lr=df["config.optim.lr"].astype(float), score=100 * df["metrics.final.score"])
    return (df.groupby(["method", "rank", "lr"]).agg(score=("score", "median"), seeds=("score", "size"))
              .reset_index()[cols])


def pivot(grid: pd.DataFrame, method: str) -> pd.DataFrame:
    """rank (rows) x lr (columns) of one method's scores."""
    return grid[grid["method"] == method].pivot(index="rank", columns="lr", values="score").sort_index()


def best_lr_per_rank(table: pd.DataFrame) -> dict[int, float]:
    """rank -> the learning rate with the best score (ranks with at least one run; ties go to the smaller
    learning rate)."""
    return {int(r): float(row.idxmax()) for r, row in table.iterrows() if row.notna().any()}


def rank_lr_correlation(table: pd.DataFrame) -> float | None:
    """Spearman correlation between rank and its best learning rate; None below 3 ranks or if constant."""
    from scipy.stats import spearmanr

    best = best_lr_per_rank(table)
    if len(best) < 3 or len(set(best.values())) < 2:
        return None
    rho = spearmanr(list(best), list(best.values())).statistic
    return None if math.isnan(rho) else float(rho)


def plot(grid: pd.DataFrame, model: str, task: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {m: pivot(grid, m) for m in METHODS}
    present = [t for t in tables.values() if not t.empty]
    vmin = min((t.min().min() for t in present), default=0.0)
    vmax = max((t.max().max() for t in present), default=100.0)
    fig, axes = plt.subplots(1, len(METHODS), figsize=(5.2 * len(METHODS), 4.0), squeeze=False)
    image = None
    for ax, method in zip(axes[0], METHODS):
        table = tables[method]
        ax.set_title(f"{LABELS[method]} (star: best lr per rank)", fontsize=9)
        if table.empty:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_axis_off()
            continue
        image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto",
                          origin="lower")
        ax.set_xticks(range(table.shape[1]), [f"{lr:g}" for lr in table.columns], rotation=60, fontsize=7)
        ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=8)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("rank")
        bright = vmin + 0.6 * (vmax - vmin)
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                v = table.iat[i, j]
                if pd.notna(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color="k" if v > bright else "w")
        best = best_lr_per_rank(table)
        cols = list(table.columns)
        ax.plot([cols.index(lr) + 0.32 for lr in best.values()], [list(table.index).index(r) + 0.3 for r in best],
                "r*", ms=7)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="score (%)")
    fig.suptitle(f"Figure 4: {task.upper()} score over rank x learning rate, {model}", fontsize=10)
    paths = [out / "fig4_rank_lr_heatmap.pdf", out / "fig4_rank_lr_heatmap.png"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def to_markdown(grid: pd.DataFrame, results: Path, model: str, task: str) -> str:
    lines = ["# Figure 4: score over rank x learning rate", "",
             f"Runs: result.json files under `{results}`, {model} on {task.upper()}; a cell is the median over seeds "
             "of the final score (%), blank = no run.", ""]
    for method in METHODS:
        table = pivot(grid, method)
        lines.append(f"## {LABELS[method]}")
        lines.append("")
        if table.empty:
            lines += ["No runs.", ""]
            continue
        lines.append("| Rank \\ lr | " + " | ".join(f"{lr:g}" for lr in table.columns) + " | Best lr |")
        lines.append("|---|" + "---|" * (table.shape[1] + 1))
        best = best_lr_per_rank(table)
        for r, row in table.iterrows():
            cells = ["" if pd.isna(v) else f"{v:.1f}" for v in row]
            lines.append(f"| {r} | " + " | ".join(cells) + f" | {best.get(int(r), float('nan')):g} |")
        rho = rank_lr_correlation(table)
        lines += ["", "Spearman correlation between rank and its best learning rate: "
                  + ("- (fewer than 3 ranks, or one best learning rate for all)" if rho is None else f"{rho:+.2f}"),
                  ""]
    lines.append("Paper (§4.3, Figure 4; RoBERTa-base on MRPC, batch 64, sequence 128, ranks 1-128, learning rates "
                 "5e-5 to 5e-3): LoRA and LoRA-FA show a similar landscape, and both a negative correlation between "
                 "rank and learning rate (a larger rank wants a smaller learning rate). It gives no numbers for "
                 "the grid.")
    return "\n".join(lines) + "\n"


def render(results: Path, out: Path, model: str = "roberta-base", task: str = "mrpc") -> list[Path]:
    grid = load_grid(results, model, task)
    out.mkdir(parents=True, exist_ok=True)
    paths = plot(grid, model, task, out)
    md = out / "fig4_rank_lr_heatmap.md"
    md.write_text(to_markdown(grid, results, model, task))
    return paths + [md]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="analysis/fig4_rank_lr_heatmap.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "rank_lr_mrpc")
    p.add_argument("--out", type=Path, default=REPO / "results")
    p.add_argument("--model", default="roberta-base",
                   help='model name of pretrained runs; "<name> (random init)" for shipped architectures')
    p.add_argument("--task", default="mrpc")
    a = p.parse_args(argv)
    check_renderer(p.prog, a.out, not load_grid(a.results, a.model, a.task).empty,
                   f"no successful LoRA / LoRA-FA {a.model} runs on {a.task} under {a.results}. Fix: run the "
                   "sweep first, e.g. python -m lorafa_repro.train --config-dir sweeps --config-name rank_lr_mrpc "
                   "task.data_dir=<glue_data>")
    print_written(*render(a.results, a.out, a.model, a.task))
    return 0


if __name__ == "__main__":
    sys.exit(main())
