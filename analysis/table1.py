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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.results import load_results

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "analysis" / "paper_tables" / "table1_glue.csv"
TASKS = ("mrpc", "cola", "qnli", "rte", "sst2", "stsb", "mnli", "qqp")


def ours(results: Path) -> pd.DataFrame:
    df = load_results(results, kind="train", status="success")
    if df.empty:
        return pd.DataFrame(columns=["model", "method", "task", "lr", "rank", "score", "seeds", "trainable", "configs"])
    df = df[df["config.task.family"] == "glue"]
    df = df.assign(model=df["model_label"], method=df["config.method.name"], task=df["config.task.name"],
                   lr=df["config.optim.lr"], rank=df["config.method.rank"], score=100 * df["metrics.final.score"])
    per_config = (df.groupby(["model", "method", "task", "lr", "rank"])
                    .agg(score=("score", "median"), seeds=("score", "size"), trainable=("params.trainable", "first"))
                    .reset_index())
    best = per_config.loc[per_config.groupby(["model", "method", "task"])["score"].idxmax()]
    configs = per_config.groupby(["model", "method", "task"]).size().rename("configs")
    return best.merge(configs.reset_index(), on=["model", "method", "task"]).reset_index(drop=True)


def render(results: Path, out: Path) -> pd.DataFrame:
    paper = pd.read_csv(PAPER_CSV, comment="#")
    mine = ours(results)
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
            for col in ("lr", "rank", "seeds", "configs"):
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
              "Paper: arXiv 2308.03303v1 Table 1 (best value over its lr x rank search)."]
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="analysis/table1.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "glue_methods")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "table1")
    args = ap.parse_args(argv)
    check_renderer(ap.prog, args.out, not ours(args.results).empty,
                   f"no successful GLUE training runs under {args.results}. Fix: run the sweep first (python -m "
                   "lorafa_repro.train --config-dir sweeps --config-name glue_methods task.data_dir=<glue_data>) "
                   "or pass --results <its folder>")
    render(args.results, args.out)
    print((args.out / "table1.md").read_text())
    print_written(args.out / "table1.md", args.out / "table1.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
