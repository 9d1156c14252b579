"""Render Table 2 (WMT16 En->Ro: BLEU and ROUGE-L) from training results next to the paper's numbers.

    python analysis/table2.py [--results results/raw/table2_wmt16] [--out results/table2] [--no-paper]

Reads only result.json files (kind "train", status "success", task family wmt16) under --results.
A run of a shipped architecture trained from random init is listed as "<model> (random init)", apart from the
paper's pretrained rows (so it never gets a difference to the paper); models the paper does not have (SmolLM2,
say) get rows of their own.
Per model x method the reported row is the best learning-rate x rank configuration that was run, each
configuration scored by the median over its seeds of the final BLEU (sacreBLEU, 13a). ROUGE-L is the F1 x 100 of
the same runs (rouge-score, Unicode word tokens, see tasks/wmt16.py); ``rougeL_ascii`` (the library's default
tokenizer, which splits Romanian words at diacritics) is in the CSV. Writes <out>/table2.md, table2.csv and
table2.tex. --no-paper leaves the paper's rows out (for CPU demos of other models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.results import load_results

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "analysis" / "paper_tables" / "table2_wmt16.csv"
METHOD_ORDER = {"ft": 0, "lora": 1, "lora_fa": 2, "qlora": 3, "qlora_fa": 4, "lora_fa_v2": 5}
COLUMNS = ["model", "method", "lr", "rank", "bleu", "rougeL", "rougeL_ascii", "chrf", "seeds", "trainable",
           "configs", "steps", "batch", "eval_split", "eval_sentences", "num_beams", "train_s", "bleu_signature"]


def ours(results: Path) -> pd.DataFrame:
    df = load_results(results, kind="train") if results.exists() else pd.DataFrame()
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = df[(df["status"] == "success") & (df["config.task.family"] == "wmt16")]
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    f = "metrics.final."
    df = df.assign(model=df["model_label"], method=df["config.method.name"], lr=df["config.optim.lr"],
                   rank=df["config.method.rank"].fillna(0).astype(int), bleu=df[f + "bleu"],
                   rougeL=df[f + "rougeL"], rougeL_ascii=df[f + "rougeL_ascii"], chrf=df[f + "chrf"],
                   steps=df["timing.steps"], batch=df["config.trainer.batch_size"],
                   eval_split=df["config.task.eval_split"], eval_sentences=df[f + "eval_sentences"],
                   num_beams=df["config.task.num_beams"], train_s=df["timing.train_s"],
                   bleu_signature=df[f + "bleu_signature"])
    keys = ["model", "method", "lr", "rank"]
    per_config = (df.groupby(keys)
                    .agg(bleu=("bleu", "median"), rougeL=("rougeL", "median"), rougeL_ascii=("rougeL_ascii", "median"),
                         chrf=("chrf", "median"), seeds=("bleu", "size"), trainable=("params.trainable", "first"),
                         steps=("steps", "first"), batch=("batch", "first"), eval_split=("eval_split", "first"),
                         eval_sentences=("eval_sentences", "first"), num_beams=("num_beams", "first"),
                         train_s=("train_s", "median"), bleu_signature=("bleu_signature", "first"))
                    .reset_index())
    best = per_config.loc[per_config.groupby(["model", "method"])["bleu"].idxmax()]
    configs = per_config.groupby(["model", "method"]).size().rename("configs").reset_index()
    return best.merge(configs, on=["model", "method"]).reset_index(drop=True)[COLUMNS]


def _num(v: object, digits: int = 1) -> str:
    return "-" if v is None or pd.isna(v) else f"{float(v):.{digits}f}"


def _beams(n: object) -> str:
    return "greedy" if int(n) == 1 else f"{int(n)} beams"


def _diff(ours_v: object, paper_v: object) -> float | None:
    if ours_v is None or paper_v is None or pd.isna(ours_v) or pd.isna(paper_v):
        return None
    return round(float(ours_v) - float(paper_v), 2)


def render(results: Path, out: Path, *, with_paper: bool = True) -> pd.DataFrame:
    paper = pd.read_csv(PAPER_CSV, comment="#") if with_paper else pd.DataFrame(columns=["model", "method"])
    mine = ours(results)
    keys = set(zip(mine["model"], mine["method"])) | set(zip(paper["model"], paper["method"]))
    rows = []
    for model, method in sorted(keys, key=lambda k: (k[0], METHOD_ORDER.get(k[1], 9), k[1])):
        p = paper[(paper["model"] == model) & (paper["method"] == method)]
        m = mine[(mine["model"] == model) & (mine["method"] == method)]
        pv = lambda c: p[c].iloc[0] if len(p) else None  # noqa: E731
        mv = lambda c: m[c].iloc[0] if len(m) else None  # noqa: E731
        trainable = mv("trainable")
        rows.append({"model": model, "method": method,
                     "paper_params_M": pv("trainable_params_M"),
                     "ours_params_M": round(trainable / 1e6, 3) if trainable is not None else None,
                     "bleu_paper": pv("bleu"), "bleu_ours": mv("bleu"), "bleu_diff": _diff(mv("bleu"), pv("bleu")),
                     "rougeL_paper": pv("rougeL"), "rougeL_ours": mv("rougeL"),
                     "rougeL_diff": _diff(mv("rougeL"), pv("rougeL")),
                     **{c: mv(c) for c in ("rougeL_ascii", "chrf", "lr", "rank", "seeds", "configs", "steps", "batch",
                                           "eval_split", "eval_sentences", "num_beams", "train_s",
                                           "bleu_signature")}})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table2.csv", index=False)
    (out / "table2.md").write_text(_markdown(rows, results, with_paper))
    (out / "table2.tex").write_text(_latex(rows))
    return table


def _markdown(rows: list[dict], results: Path, with_paper: bool) -> str:
    head = ["Model", "Method", "Trainable M (paper / ours)", "BLEU paper", "BLEU ours", "diff", "ROUGE-L paper",
            "ROUGE-L ours", "diff", "chrF ours", "lr", "rank", "steps x batch", "eval"]
    lines = ["# Table 2: WMT16 En->Ro" + (", paper / ours" if with_paper else " (ours)"), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ran = r["bleu_ours"] is not None
        lines.append("| " + " | ".join([
            r["model"], r["method"],
            f"{_num(r['paper_params_M'], 2)} / {_num(r['ours_params_M'], 3)}",
            _num(r["bleu_paper"]), _num(r["bleu_ours"], 2), _num(r["bleu_diff"], 2),
            _num(r["rougeL_paper"]), _num(r["rougeL_ours"], 2), _num(r["rougeL_diff"], 2), _num(r["chrf"], 2),
            f"{r['lr']:g}" if ran else "-", str(r["rank"]) if ran and r["rank"] and r["method"] != "ft" else "-",
            f"{int(r['steps'])} x {int(r['batch'])}" if ran else "-",
            f"{r['eval_split']} ({int(r['eval_sentences'])}, {_beams(r['num_beams'])})" if ran else "-",
        ]) + " |")
    sigs = sorted({r["bleu_signature"] for r in rows if r["bleu_signature"]})
    lines += ["", f"Ours: from result.json files under `{results}`; per model x method the best learning-rate x rank "
              "configuration run, each scored by the median over its seeds of the final BLEU (configurations, seeds "
              "and timings are in table2.csv). BLEU: sacreBLEU corpus BLEU, signature "
              + (", ".join(f"`{s}`" for s in sigs) or "-") + ". ROUGE-L: rouge-score F1 x 100, mean over sentences, "
              "Unicode word tokens (lower-cased, Romanian diacritics kept, no stemming); `rougeL_ascii` in the CSV "
              "uses rouge-score's default tokenizer. diff = ours - paper. A \"(random init)\" model is a shipped "
              "architecture trained from scratch, never compared with the paper's pretrained rows."]
    if with_paper:
        lines.append("Paper: arXiv 2308.03303v1 Table 2 (T5 fine-tuned on WMT16 En->Ro; best over its lr x rank "
                     "search).")
    return "\n".join(lines) + "\n"


def _latex(rows: list[dict]) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_")

    lines = [r"\begin{tabular}{llrrrrrrr}", r"\toprule",
             r"Model & Method & Params (M) & \multicolumn{3}{c}{BLEU} & \multicolumn{3}{c}{ROUGE-L} \\",
             r" & & paper / ours & paper & ours & $\Delta$ & paper & ours & $\Delta$ \\", r"\midrule"]
    for r in rows:
        lines.append(" & ".join([esc(r["model"]), esc(r["method"]),
                                 f"{_num(r['paper_params_M'], 2)} / {_num(r['ours_params_M'], 3)}",
                                 _num(r["bleu_paper"]), _num(r["bleu_ours"]), _num(r["bleu_diff"]),
                                 _num(r["rougeL_paper"]), _num(r["rougeL_ours"]), _num(r["rougeL_diff"])]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="analysis/table2.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "table2_wmt16")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "table2")
    ap.add_argument("--no-paper", action="store_true", help="only our rows (CPU demos of other models)")
    args = ap.parse_args(argv)
    check_renderer(ap.prog, args.out, not ours(args.results).empty,
                   f"no successful WMT16 training runs under {args.results}. Fix: run the sweep first (python -m "
                   "lorafa_repro.train --config-dir sweeps --config-name table2_wmt16, or make cpu-demo-wmt16 on a "
                   "CPU) or pass --results <its folder>")
    render(args.results, args.out, with_paper=not args.no_paper)
    print((args.out / "table2.md").read_text())
    print_written(*(args.out / f"table2.{ext}" for ext in ("md", "csv", "tex")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
