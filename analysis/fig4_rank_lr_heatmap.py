"""Figure 4: score over rank x learning rate for LoRA and LoRA-FA, per LoRA scaling (alpha / r or rsLoRA's
alpha / sqrt(r)), with seeds (paper: RoBERTa-base on MRPC, batch 64, seq 128).

    python -m lorafa_repro.train --config-dir sweeps --config-name rank_lr_mrpc task.data_dir=<glue_data>
    python analysis/fig4_rank_lr_heatmap.py [--results results/raw/rank_lr_mrpc] [--out results]
        [--model roberta-base] [--task mrpc] [--n-boot 2000]

Reads only result.json files (kind train, status success) under --results; a run without
``method.alpha_scaling`` in its config (before issue #20) is a ``standard`` run. A cell is the **mean over seeds**
of the final score (percent) with its sample sd; a grid point with no run is left blank. Per (method, scaling,
rank): the best learning rate of the seed-mean row, the best learning rate of each seed (its spread), and whether
it lies on the edge of the grid run (then the grid is too narrow to place the optimum). Per (method, scaling): the
Spearman correlation between rank and best learning rate (the paper's claim, §4.3: negative, a larger rank wants a
smaller learning rate) with a 95% percentile interval from a seeded bootstrap over seeds
(``lorafa_repro.stats.spearman_seed_bootstrap``). Writes <out>/fig4_rank_lr_heatmap.{pdf,png} (one heatmap per
method and scaling, side by side, one colour scale) and <out>/fig4_rank_lr_heatmap.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.stats import (SeedGrid, argmax_lr, best_lr_spearman, mean_rows, mean_sd, spearman,
                                spearman_seed_bootstrap)

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lora", "lora_fa")
LABELS = {"lora": "LoRA", "lora_fa": "LoRA-FA"}
SCALINGS = ("standard", "rslora")
SCALING_LABELS = {"standard": "alpha / r", "rslora": "rsLoRA, alpha / sqrt(r)"}


def load_runs(results: Path, model: str, task: str) -> pd.DataFrame:
    """One row per successful run: method, scaling, rank, lr, seed, score (final, percent)."""
    from lorafa_repro.results import load_results

    cols = ["method", "scaling", "rank", "lr", "seed", "score"]
    df = load_results(results, kind="train", status="success")
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df[(df["model_label"] == model) & (df["config.task.name"] == task)
            & df["config.method.name"].isin(METHODS)]
    if df.empty:
        return pd.DataFrame(columns=cols)
    scaling = (df["config.method.alpha_scaling"].fillna("standard") if "config.method.alpha_scaling" in df
               else "standard")
    return df.assign(method=df["config.method.name"], scaling=scaling, rank=df["config.method.rank"].astype(int),
                     lr=df["config.optim.lr"].astype(float), seed=df["config.seed"].astype(int),
                     score=100 * df["metrics.final.score"])[cols].reset_index(drop=True)


def load_grid(results: Path, model: str, task: str) -> pd.DataFrame:
    """Columns method, scaling, rank, lr, score (mean over seeds, percent), sd (sample sd), seeds."""
    runs = load_runs(results, model, task)
    cols = ["method", "scaling", "rank", "lr", "score", "sd", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    grid = (runs.groupby(["method", "scaling", "rank", "lr"])["score"]
                .agg(score="mean", sd=lambda x: mean_sd(list(x))[1], seeds="size").reset_index())
    return grid[cols]


def pivot(grid: pd.DataFrame, method: str, scaling: str = "standard", value: str = "score") -> pd.DataFrame:
    """rank (rows) x lr (columns) of one method's and scaling's seed-mean scores (or ``value``)."""
    sel = grid[(grid["method"] == method) & (grid["scaling"] == scaling)]
    return sel.pivot(index="rank", columns="lr", values=value).sort_index()


def best_lr_per_rank(table: pd.DataFrame) -> dict[int, float]:
    """rank -> the learning rate with the best score (ranks with at least one run; ties go to the smaller
    learning rate)."""
    return {int(r): argmax_lr(row.dropna().to_dict()) for r, row in table.iterrows() if row.notna().any()}


def rank_lr_correlation(table: pd.DataFrame) -> float | None:
    """Spearman correlation between rank and its best learning rate; None below 3 ranks or if constant."""
    best = best_lr_per_rank(table)
    return spearman(list(best), list(best.values()))


def seed_grid(runs: pd.DataFrame, method: str, scaling: str) -> SeedGrid:
    """rank -> seed -> lr -> score of one method and scaling."""
    out: dict[int, dict[int, dict[float, float]]] = {}
    sel = runs[(runs["method"] == method) & (runs["scaling"] == scaling)]
    for r in sel.itertuples():
        out.setdefault(int(r.rank), {}).setdefault(int(r.seed), {})[float(r.lr)] = float(r.score)
    return out


def summarize(runs: pd.DataFrame, n_boot: int = 2000) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-rank rows, per-(method, scaling) correlation rows).

    Per rank: ``best_lr`` of the seed-mean row, ``seed_best`` (each seed's best lr, by seed), ``edge`` (the best
    lr is the smallest or largest lr run at that rank). Per method and scaling: ``rho`` (Spearman, rank vs best lr
    of the seed-mean rows), its bootstrap interval ``low`` / ``high`` and the number of seeds per cell.
    """
    per_rank, per_pair = [], []
    for method in METHODS:
        for scaling in SCALINGS:
            grid = seed_grid(runs, method, scaling)
            if not grid:
                continue
            rows = mean_rows(grid)
            for rank in sorted(grid):
                lrs, best = sorted(rows[rank]), argmax_lr(rows[rank])
                seed_best = {s: argmax_lr({lr: v[lr] for lr in lrs}) for s, v in sorted(grid[rank].items())}
                per_rank.append({"method": method, "scaling": scaling, "rank": rank, "best_lr": best,
                                 "seed_best": seed_best, "edge": best in (lrs[0], lrs[-1]),
                                 "score": rows[rank][best]})
            rho = best_lr_spearman(grid)
            interval = spearman_seed_bootstrap(grid, n_boot=n_boot) if rho is not None else None
            per_pair.append({"method": method, "scaling": scaling, "rho": rho,
                             "low": interval[0] if interval else None, "high": interval[1] if interval else None,
                             "seeds": sorted({len(v) for v in grid.values()})})
    return per_rank, per_pair


def panels(grid: pd.DataFrame) -> list[tuple[str, str]]:
    """(method, scaling) pairs to draw: every method, for each scaling with at least one run."""
    scalings = [s for s in SCALINGS if (grid["scaling"] == s).any()] or ["standard"]
    return [(m, s) for s in scalings for m in METHODS]


def plot(grid: pd.DataFrame, model: str, task: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = panels(grid)
    tables = {pair: pivot(grid, *pair) for pair in pairs}
    present = [t for t in tables.values() if not t.empty]
    vmin = min((t.min().min() for t in present), default=0.0)
    vmax = max((t.max().max() for t in present), default=100.0)
    n_rows = len(pairs) // len(METHODS)
    fig, axes = plt.subplots(n_rows, len(METHODS), figsize=(5.2 * len(METHODS), 4.0 * n_rows), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    image = None
    for ax, (method, scaling) in zip(axes.ravel(), pairs):
        table = tables[(method, scaling)]
        ax.set_title(f"{LABELS[method]}, {SCALING_LABELS[scaling]} (star: best lr per rank)", fontsize=9)
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
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="score (%), mean over seeds")
    fig.suptitle(f"Figure 4: {task.upper()} score over rank x learning rate, {model}", fontsize=10)
    paths = [out / "fig4_rank_lr_heatmap.pdf", out / "fig4_rank_lr_heatmap.png"]
    from lorafa_repro.results import save_figure

    for p in paths:
        save_figure(fig, p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _interval(row: dict[str, Any]) -> str:
    if row["rho"] is None:
        return "- | - (fewer than 3 ranks, or one best learning rate for all)"
    if row["low"] is None:
        return f"{row['rho']:+.2f} | -"
    return f"{row['rho']:+.2f} | [{row['low']:+.2f}, {row['high']:+.2f}]"


def to_markdown(grid: pd.DataFrame, runs: pd.DataFrame, results: Path, model: str, task: str,
                n_boot: int = 2000) -> str:
    lines = ["# Figure 4: score over rank x learning rate", "",
             f"Runs: result.json files under `{results}`, {model} on {task.upper()}; a cell is the mean over seeds "
             "of the final score (%) ± its sample sd (over seeds), blank = no run.", ""]
    per_rank, per_pair = summarize(runs, n_boot)
    for method, scaling in panels(grid):
        table, sd = pivot(grid, method, scaling), pivot(grid, method, scaling, "sd")
        lines += [f"## {LABELS[method]}, {SCALING_LABELS[scaling]}", ""]
        if table.empty:
            lines += ["No runs.", ""]
            continue
        lines.append("| Rank \\ lr | " + " | ".join(f"{lr:g}" for lr in table.columns) + " | Best lr |")
        lines.append("|---|" + "---|" * (table.shape[1] + 1))
        best = best_lr_per_rank(table)
        for r, row in table.iterrows():
            cells = ["" if pd.isna(v) else f"{v:.1f}" + ("" if pd.isna(e) else f" ± {e:.1f}")
                     for v, e in zip(row, sd.loc[r])]
            lines.append(f"| {r} | " + " | ".join(cells) + f" | {best.get(int(r), float('nan')):g} |")
        lines += ["", "Spearman correlation between rank and its best learning rate: "
                  + ("- (fewer than 3 ranks, or one best learning rate for all)" if rank_lr_correlation(table) is None
                     else f"{rank_lr_correlation(table):+.2f}"), ""]
    lines += ["## Best learning rate per rank, across seeds", "",
              "| Method | Scaling | Rank | Best lr (seed mean) | Score (%) | Best lr per seed | On the grid's edge |",
              "|---|---|---|---|---|---|---|"]
    for r in per_rank:
        seeds = ", ".join(f"s{s}: {lr:g}" for s, lr in r["seed_best"].items())
        lines.append(f"| {LABELS[r['method']]} | {SCALING_LABELS[r['scaling']]} | {r['rank']} | {r['best_lr']:g} | "
                     f"{r['score']:.1f} | {seeds} | {'yes' if r['edge'] else 'no'} |")
    lines += ["", "## Rank vs best learning rate", "",
              "| Method | Scaling | Spearman | 95% bootstrap interval | Seeds per cell |", "|---|---|---|---|---|"]
    for r in per_pair:
        lines.append(f"| {LABELS[r['method']]} | {SCALING_LABELS[r['scaling']]} | {_interval(r)} | "
                     f"{', '.join(map(str, r['seeds']))} |")
    lines += ["", f"Spearman over the ranks of each rank's best learning rate (seed-mean row). Interval: 2.5 and "
              f"97.5 percentiles of {n_boot} seeded bootstrap draws that resample each rank's seeds with replacement "
              "(`lorafa_repro.stats.spearman_seed_bootstrap`); a draw in which every rank picks the same learning "
              "rate counts as 0. With 2 seeds a rank has 3 distinct resamples, so the interval shows how much the "
              "best learning rates move with the seed, not a population interval.", "",
              "Paper (§4.3, Figure 4; RoBERTa-base on MRPC, batch 64, sequence 128, ranks 1-128, learning rates "
              "5e-5 to 5e-3, PEFT's alpha / r scaling): LoRA and LoRA-FA show a similar landscape, and both a "
              "negative correlation between rank and learning rate (a larger rank wants a smaller learning rate). "
              "It gives no numbers for the grid."]
    return "\n".join(lines) + "\n"


def render(results: Path, out: Path, model: str = "roberta-base", task: str = "mrpc",
           n_boot: int = 2000) -> list[Path]:
    grid = load_grid(results, model, task)
    out.mkdir(parents=True, exist_ok=True)
    paths = plot(grid, model, task, out)
    md = out / "fig4_rank_lr_heatmap.md"
    md.write_text(to_markdown(grid, load_runs(results, model, task), results, model, task, n_boot))
    return paths + [md]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="analysis/fig4_rank_lr_heatmap.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "rank_lr_mrpc")
    p.add_argument("--out", type=Path, default=REPO / "results")
    p.add_argument("--model", default="roberta-base",
                   help='model name of pretrained runs; "<name> (random init)" for shipped architectures')
    p.add_argument("--task", default="mrpc")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws for the Spearman interval")
    a = p.parse_args(argv)
    check_renderer(p.prog, a.out, not load_grid(a.results, a.model, a.task).empty,
                   f"no successful LoRA / LoRA-FA {a.model} runs on {a.task} under {a.results}. Fix: run the "
                   "sweep first, e.g. python -m lorafa_repro.train --config-dir sweeps --config-name rank_lr_mrpc "
                   "task.data_dir=<glue_data>")
    print_written(*render(a.results, a.out, a.model, a.task, a.n_boot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
