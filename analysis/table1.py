"""Render Table 1 (GLUE) from training results next to the paper's numbers.

    python analysis/table1.py [--results results/raw/glue_methods] [--out results/table1]

Reads only result.json files (kind "train", status "success", task family glue) under --results.
A run of a shipped architecture trained from random init is listed as "<model> (random init)", apart
from the paper's pretrained rows.
Per model x method x task the reported number is, as in the paper, the best over the learning-rate x
rank configurations that were run, each configuration scored by the median over its seeds of the final
score (the paper's metric: MCC for CoLA, Pearson for STS-B, mean m/mm accuracy for MNLI, accuracy
otherwise), in percent. Writes <out>/table1.md and table1.csv (with the chosen lr and rank per cell and
the number of configurations searched). Cells with no run are left empty.

Below the paper-style table, the seeds of each chosen configuration: how many, mean ± sample sd, the median (the
number in the table), and per model and task the paired difference LoRA-FA - LoRA over the seeds both ran (same
seed = same data order, head and A initialisation) with its 95% t interval (``lorafa_repro.stats``).
``--grid <folder>`` adds the learning-rate search run there: each lr's score, the chosen one, and whether it lies on
the grid's edge. ``--chosen`` prints the chosen ``task method lr`` per cell instead (a sweep picks learning rates on a grid with it,
then runs more seeds at each).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.results import load_results
from lorafa_repro.stats import mean_sd, paired_t_interval

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "analysis" / "paper_tables" / "table1_glue.csv"
TASKS = ("mrpc", "cola", "qnli", "rte", "sst2", "stsb", "mnli", "qqp")


COLUMNS = ["model", "method", "task", "lr", "rank", "alpha_scaling", "score", "mean", "sd", "seeds", "trainable",
           "configs", "seed_scores"]


def per_config(results: Path) -> pd.DataFrame:
    """One row per (model, method, task, lr, rank, alpha_scaling) run: ``score`` the median over its seeds,
    ``mean``, ``sd``, ``seeds`` and ``seed_scores`` (score per seed)."""
    df = load_results(results, kind="train", status="success")
    if df.empty:
        return pd.DataFrame(columns=[c for c in COLUMNS if c != "configs"])
    df = df[df["config.task.family"] == "glue"]
    scaling = (df["config.method.alpha_scaling"].fillna("standard") if "config.method.alpha_scaling" in df
               else "standard")
    df = df.assign(model=df["model_label"], method=df["config.method.name"], task=df["config.task.name"],
                   lr=df["config.optim.lr"], rank=df["config.method.rank"], alpha_scaling=scaling,
                   seed=df["config.seed"], score=100 * df["metrics.final.score"])
    keys = ["model", "method", "task", "lr", "rank", "alpha_scaling"]
    rows = []
    for key, runs in df.groupby(keys, dropna=False):
        mean, sd = mean_sd(list(runs["score"]))
        rows.append({**dict(zip(keys, key)), "score": runs["score"].median(), "mean": mean, "sd": sd,
                     "seeds": len(runs), "trainable": runs["params.trainable"].iloc[0],
                     "seed_scores": dict(zip(runs["seed"].astype(int), runs["score"]))})
    return pd.DataFrame(rows)


def ours(results: Path) -> pd.DataFrame:
    """Per (model, method, task) the best configuration (lr, rank, alpha_scaling) by the median over its seeds;
    ``seed_scores`` holds its score per seed."""
    return best_configs(per_config(results))


def best_configs(configs_run: pd.DataFrame) -> pd.DataFrame:
    """:func:`ours` of the rows of :func:`per_config`."""
    if configs_run.empty:
        return pd.DataFrame(columns=COLUMNS)
    best = configs_run.loc[configs_run.groupby(["model", "method", "task"])["score"].idxmax()]
    configs = configs_run.groupby(["model", "method", "task"]).size().rename("configs")
    return best.merge(configs.reset_index(), on=["model", "method", "task"]).reset_index(drop=True)[COLUMNS]


def grid_rows(configs_run: pd.DataFrame) -> list[dict]:
    """Per (model, task, method, rank, alpha_scaling) of a learning-rate search: the score at each lr
    (ascending), the chosen lr (best score) and where it lies: "low" / "high" on the grid's edge (the optimum may
    lie outside: widen the grid), "inside", or "one lr". A search over several ranks gives one row per rank."""
    out = []
    keys = ["model", "task", "method", "rank", "alpha_scaling"]
    for (model, task, method, rank, scaling), cells in configs_run.groupby(keys, dropna=False):
        cells = cells.sort_values("lr")
        lrs, scores = list(cells["lr"]), list(cells["score"])
        best = max(range(len(lrs)), key=lambda i: scores[i])
        where = ("one lr" if len(lrs) == 1 else "low" if best == 0 else "high" if best == len(lrs) - 1
                 else "inside")
        out.append({"model": model, "task": task, "method": method, "rank": rank, "alpha_scaling": scaling,
                    "scores": dict(zip(lrs, scores)), "chosen": lrs[best], "where": where})
    return out


def _grid_lines(rows: list[dict], grid: Path) -> list[str]:
    lines = ["## Learning-rate search (ours)", "",
             f"From `{grid}`: each lr's final score (median over its seeds), the chosen one in bold; \"edge\" marks "
             "a choice at the smallest or largest lr searched (the optimum may lie outside the grid).", "",
             "| Model | Task | Method | Score (%) per lr | Chosen lr | Where |", "|---|---|---|---|---|---|"]
    several = len({(r["rank"], r["alpha_scaling"]) for r in rows}) > 1  # name the rank when the search had several
    for r in rows:
        scores = ", ".join((f"**{lr:g}: {v:.1f}**" if lr == r["chosen"] else f"{lr:g}: {v:.1f}")
                           for lr, v in r["scores"].items())
        where = {"low": "edge (smallest)", "high": "edge (largest)"}.get(r["where"], r["where"])
        method = f"{r['method']} (r={r['rank']:g}, {r['alpha_scaling']})" if several else r["method"]
        lines.append(f"| {r['model']} | {r['task']} | {method} | {scores} | {r['chosen']:g} | {where} |")
    return lines + [""]


def seed_rows(mine: pd.DataFrame) -> list[dict]:
    """Per model and task: each method's seeds (n, mean, sd, median, lr) and the paired LoRA-FA - LoRA row."""
    out = []
    for (model, task), cells in mine.groupby(["model", "task"]):
        by_method = {r["method"]: r for _, r in cells.iterrows()}
        for method, r in sorted(by_method.items()):
            out.append({"model": model, "task": task, "method": method, "lr": r["lr"], "seeds": r["seeds"],
                        "mean": r["mean"], "sd": r["sd"], "median": r["score"]})
        if "lora" in by_method and "lora_fa" in by_method:
            d = paired_t_interval(by_method["lora_fa"]["seed_scores"], by_method["lora"]["seed_scores"])
            out.append({"model": model, "task": task, "method": "lora_fa - lora", "pairs": d.n, "diff": d.mean,
                        "low": d.low, "high": d.high})
    return out


def chosen(configs_run: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(task, method, lr) of every cell's chosen configuration, from the rows of :func:`per_config`."""
    mine = best_configs(configs_run)
    return [(r["task"], r["method"], float(r["lr"])) for _, r in mine.sort_values(["task", "method"]).iterrows()]


def _seed_lines(rows: list[dict]) -> list[str]:
    num = lambda v, nd=1: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"  # noqa: E731
    lines = ["## Seeds of each chosen configuration (ours)", "",
             "| Model | Task | Method | lr | Seeds | Mean ± sd | Median | LoRA-FA - LoRA, paired [95% t interval] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "diff" in r:
            lines.append(f"| {r['model']} | {r['task']} | LoRA-FA - LoRA | | {r['pairs']} pairs | | | "
                         f"{num(r['diff'], 2)} [{num(r['low'], 2)}, {num(r['high'], 2)}] |")
        else:
            lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['lr']:g} | {r['seeds']} | "
                         f"{num(r['mean'])} ± {num(r['sd'])} | {num(r['median'])} | |")
    lines += ["", "sd: the sample standard deviation over seeds (ddof 1), not the standard error. The paired "
              "difference is over the seeds both methods ran at their chosen configurations: mean ± t(n-1, 0.975) "
              "· sd(differences) / sqrt(n); an interval that excludes 0 is a difference at that level."]
    return lines


def render(results: Path, out: Path, grid: Path | None = None, configs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write table1.md / table1.csv; ``configs``: :func:`per_config` of ``results`` when the caller has read it."""
    paper = pd.read_csv(PAPER_CSV, comment="#")
    configs = per_config(results) if configs is None else configs
    mine = best_configs(configs)
    rows = []
    keys = sorted(set(zip(paper["model"], paper["method"])) | set(zip(mine["model"], mine["method"])))
    for model, method in keys:
        p = paper[(paper["model"] == model) & (paper["method"] == method)]
        row = {"model": model, "method": method,
               "paper_params_M": p["trainable_params_M"].iloc[0] if len(p) else None}
        m = mine[(mine["model"] == model) & (mine["method"] == method)]
        row["ours_params_M"] = round(m["trainable"].iloc[0] / 1e6, 2) if len(m) else None
        for task in TASKS:
            row[f"{task}_paper"] = p[task].iloc[0] if len(p) else None
            hit = m[m["task"] == task]
            row[f"{task}_ours"] = round(hit["score"].iloc[0], 1) if len(hit) else None
            for col in ("lr", "rank", "alpha_scaling", "seeds", "configs", "mean", "sd"):
                row[f"{task}_{col}"] = hit[col].iloc[0] if len(hit) else None
        rows.append(row)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table1.csv", index=False)
    header = ["Model", "Method", "Trainable M (paper / ours)"] + [t.upper() for t in TASKS]
    lines = ["# Table 1: GLUE, paper / ours", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    fmt = lambda v: "-" if v is None or pd.isna(v) else f"{v:g}"  # noqa: E731
    for r in rows:
        cells = [r["model"], r["method"], f"{fmt(r['paper_params_M'])} / {fmt(r['ours_params_M'])}"]
        cells += [f"{fmt(r[f'{t}_paper'])} / {fmt(r[f'{t}_ours'])}" for t in TASKS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Ours: from result.json files under `{results}`: per cell the best learning-rate x rank "
              "configuration run, each scored by the median over its seeds of the final score (the chosen lr, "
              "rank, seeds and number of configurations are in table1.csv).",
              "Paper: arXiv 2308.03303v1 Table 1 (best value over its lr x rank search).", ""]
    if grid is not None:
        lines += _grid_lines(grid_rows(configs if grid == results else per_config(grid)), grid)
    if len(mine):
        lines += _seed_lines(seed_rows(mine))
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="analysis/table1.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "glue_methods")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "table1")
    ap.add_argument("--grid", type=Path, default=None,
                    help="the learning-rate search's results (e.g. a sweep's seed-0 grid), shown per lr with its edges")
    ap.add_argument("--chosen", action="store_true", help="print each cell's chosen 'task method lr' and stop")
    args = ap.parse_args(argv)
    configs = per_config(args.results)
    if args.chosen:
        for task, method, lr in chosen(configs):
            print(task, method, f"{lr:g}")
        for r in grid_rows(configs):
            if r["where"] in ("low", "high"):
                print(f"note: {r['task']} {r['method']}: the chosen lr {r['chosen']:g} is the grid's "
                      f"{'smallest' if r['where'] == 'low' else 'largest'}; the optimum may lie outside it",
                      file=sys.stderr)
        return
    check_renderer(ap.prog, args.out, not best_configs(configs).empty,
                   f"no successful GLUE training runs under {args.results}. Fix: run the sweep first (python -m "
                   "lorafa_repro.train --config-dir sweeps --config-name glue_methods task.data_dir=<glue_data>) "
                   "or pass --results <its folder>")
    render(args.results, args.out, args.grid, configs)
    print((args.out / "table1.md").read_text())
    print_written(args.out / "table1.md", args.out / "table1.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
