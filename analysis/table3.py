"""Render Table 3 (instruction tuning, MMLU 5-shot) from training results next to the paper's numbers.

    python analysis/table3.py [--results results/raw/table3] [--base <results>/base] [--out results/table3]

Reads result.json files (kind "train", status "success", task family instruct) under --results and the untuned
models' evaluations (``python -m lorafa_repro.mmlu --name <model.name> --out <base>/<name>.json``, kind
"mmlu_eval") under --base. A run of a shipped architecture trained from random init is listed as
"<model> (random init)", apart from the paper's pretrained rows.

Per model x dataset x method the reported number is the final MMLU score (``task.mmlu_average``: macro over
subjects by default, the QLoRA repository's average; micro is in the csv), in percent; with several learning-rate x
rank configurations the best one, each scored by the median over its seeds (as Table 1). Gain = ours - the
untuned model's score with the same average on the same questions (a cell whose question set differs from the
base's gets no gain). When both sides stored per-question predictions, the gain's standard error is the paired
one: sqrt(b + c - (b - c)^2 / n) / n over the n questions, b (c) = questions only the tuned (untuned) model gets
right. Writes <out>/table3.md and table3.csv.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.results import load_results

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "analysis" / "paper_tables" / "table3_mmlu.csv"


def load_base(base: Path) -> dict[str, dict[str, Any]]:
    """{model name: the untuned model's mmlu_eval JSON}."""
    out = {}
    for p in sorted(base.glob("*.json")) if base.is_dir() else []:
        d = json.loads(p.read_text())
        if d.get("kind") == "mmlu_eval":
            out[d.get("name") or p.stem] = d
    return out


def _questions(preds: list[dict[str, Any]]) -> dict[tuple[str, int], bool]:
    return {(r["subject"], int(r["index"])): bool(r["correct"]) for r in preds}


def paired_se(tuned: dict[tuple[str, int], bool], base: dict[tuple[str, int], bool]) -> float | None:
    """Standard error of accuracy(tuned) - accuracy(base) on the same questions (paired, per question)."""
    if not tuned or set(tuned) != set(base):
        return None
    n = len(tuned)
    b = sum(tuned[k] and not base[k] for k in tuned)
    c = sum(base[k] and not tuned[k] for k in tuned)
    return math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def ours(results: Path) -> pd.DataFrame:
    cols = ["model", "dataset", "method", "lr", "rank", "score", "micro", "n_questions", "seeds", "trainable",
            "configs", "average", "path", "predictions_file"]
    df = load_results(results, kind="train") if results.is_dir() else pd.DataFrame()
    if df.empty or "config.task.family" not in df:
        return pd.DataFrame(columns=cols)
    df = df[(df["status"] == "success") & (df["config.task.family"] == "instruct")]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.assign(model=df["model_label"], dataset=df["config.task.name"], method=df["config.method.name"],
                   lr=df["config.optim.lr"], rank=df["config.method.rank"].fillna(0),
                   score=100 * df["metrics.final.score"], micro=100 * df["metrics.final.mmlu_micro"],
                   n_questions=df["metrics.final.mmlu_questions"], average=df["config.task.mmlu_average"],
                   predictions_file=df.get("metrics.final.predictions_file"))
    keys = ["model", "dataset", "method", "lr", "rank"]
    per_config = (df.groupby(keys).agg(score=("score", "median"), micro=("micro", "median"),
                                       seeds=("score", "size"), trainable=("params.trainable", "first"),
                                       n_questions=("n_questions", "first"), average=("average", "first"),
                                       path=("path", "first"), predictions_file=("predictions_file", "first"))
                  .reset_index())
    best = per_config.loc[per_config.groupby(keys[:3])["score"].idxmax()]
    configs = per_config.groupby(keys[:3]).size().rename("configs")
    return best.merge(configs.reset_index(), on=keys[:3]).reset_index(drop=True)[cols]


def render(results: Path, base_dir: Path, out: Path) -> pd.DataFrame:
    paper = pd.read_csv(PAPER_CSV, comment="#")
    mine = ours(results)
    bases = load_base(base_dir)
    rows = []
    keys = sorted(set(zip(paper["model"], paper["dataset"], paper["method"]))
                  | set(zip(mine["model"], mine["dataset"], mine["method"])))
    for model, dataset, method in keys:
        p = paper[(paper["model"] == model) & (paper["dataset"] == dataset) & (paper["method"] == method)]
        m = mine[(mine["model"] == model) & (mine["dataset"] == dataset) & (mine["method"] == method)]
        row: dict[str, Any] = {"model": model, "dataset": dataset, "method": method,
                               "paper_params_M": p["trainable_params_M"].iloc[0] if len(p) else None,
                               "paper_mmlu": p["mmlu_5shot"].iloc[0] if len(p) else None,
                               "paper_gain": p["gain_over_base"].iloc[0] if len(p) else None}
        if len(m):
            r = m.iloc[0]
            row.update(ours_params_M=round(r["trainable"] / 1e6, 2), ours_mmlu=round(r["score"], 1),
                       ours_micro=round(r["micro"], 1), average=r["average"], n_questions=int(r["n_questions"]),
                       lr=r["lr"], rank=r["rank"], seeds=r["seeds"], configs=r["configs"])
            b = bases.get(model)
            if b is not None and int(b["n_questions"]) == int(r["n_questions"]):
                base_score = 100 * b[r["average"]]
                row.update(base_mmlu=round(base_score, 1), ours_gain=round(r["score"] - base_score, 1))
                if isinstance(r["predictions_file"], str) and b.get("predictions"):
                    tuned = [json.loads(x) for x in
                             (Path(r["path"]) / r["predictions_file"]).read_text().splitlines() if x.strip()]
                    se = paired_se(_questions(tuned), _questions(b["predictions"]))
                    row["gain_se"] = round(100 * se, 1) if se is not None else None
        rows.append(row)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table3.csv", index=False)
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:g}"  # noqa: E731
    header = ["Model", "Dataset", "Method", "Trainable M (paper / ours)", "MMLU 5-shot (paper / ours)",
              "Gain over base (paper / ours ± SE)", "Base (ours)", "Questions"]
    lines = ["# Table 3: instruction tuning, MMLU 5-shot, paper / ours", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in rows:
        gain = fmt(r.get("ours_gain")) + (f" ± {r['gain_se']:g}" if r.get("gain_se") is not None else "")
        lines.append("| " + " | ".join([
            r["model"], r["dataset"], r["method"], f"{fmt(r['paper_params_M'])} / {fmt(r.get('ours_params_M'))}",
            f"{fmt(r['paper_mmlu'])} / {fmt(r.get('ours_mmlu'))}", f"{fmt(r['paper_gain'])} / {gain}",
            fmt(r.get("base_mmlu")), fmt(r.get("n_questions"))]) + " |")
    lines += ["", f"Ours: result.json files under `{results}` (final evaluation; best lr x rank configuration, "
              "median over seeds), untuned models from `" + str(base_dir) + "`. Our MMLU column is the average "
              "named in table3.csv (`average`: macro = mean over subjects, QLoRA's callback; the micro average, "
              "lm-eval's, is `ours_micro`). Gain = ours - base on the same questions; ± = its paired standard error.",
              "Paper: arXiv 2308.03303v1 Table 3 (LLaMA-7B; 5-shot MMLU, average not stated; its base 35.1 = "
              "37.6 - 2.5 is the LLaMA paper's MMLU for LLaMA-7B)."]
    (out / "table3.md").write_text("\n".join(lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="analysis/table3.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "table3")
    p.add_argument("--base", type=Path, default=None, help="default: <results>/base")
    p.add_argument("--out", type=Path, default=REPO / "results" / "table3")
    a = p.parse_args(argv)
    check_renderer(p.prog, a.out, not ours(a.results).empty,
                   f"no successful instruction-tuning runs under {a.results}. Fix: run the sweep first (make "
                   "table3-sweep on a GPU, make cpu-demo-mmlu on a CPU) or pass --results <its folder>")
    render(a.results, a.base if a.base is not None else a.results / "base", a.out)
    print((a.out / "table3.md").read_text())
    print_written(a.out / "table3.md", a.out / "table3.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
