"""Render Table 4 (peak memory) from the committed results: results/table4/*/result.json + the paper's numbers.

    python analysis/table4.py [--results results/table4] [--budget-gb 40]

Writes <results>/table4.md, table4.csv and table4.tex. Nothing is recomputed: only result.json files
(written by ``python -m lorafa_repro.memory.table4``) and the paper's numbers are read. The paper's
numbers come from analysis/paper_tables/table4_memory.csv (a copy of ../shared/paper/tables/table4_memory.csv). ``--budget-gb`` re-judges OOM against another device budget
(default: the budget each cell was run with).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from lorafa_repro.cli import ArgumentParser, fail, print_written

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV_SHARED = REPO.parent / "shared" / "paper" / "tables" / "table4_memory.csv"
PAPER_CSV_LOCAL = REPO / "analysis" / "paper_tables" / "table4_memory.csv"
GIB = 2**30
MODEL_ORDER = ("roberta-base", "roberta-large", "t5-small", "t5-base", "t5-large", "llama-7b")
METHOD_ORDER = ("ft", "lora", "lora_fa", "qlora", "qlora_fa", "adapter")
METHOD_LABEL = {"ft": "FT", "lora": "LoRA", "lora_fa": "LoRA-FA", "qlora": "QLoRA", "qlora_fa": "QLoRA-FA",
                "adapter": "Adapters (Houlsby)"}
BREAKDOWN = (("parameters", "Params"), ("gradients", "Grads"), ("optimizer_states", "Opt. states"),
             ("activations", "Activations"), ("temporaries", "Temps"))


def paper_csv_path() -> Path:
    """The committed copy, always: the table must not depend on what lies beside the checkout (a test compares
    it with ../shared/paper/tables/table4_memory.csv where that exists)."""
    return PAPER_CSV_LOCAL


def load_paper(path: Path | None = None) -> pd.DataFrame:
    """The paper's 18 numbers: model, method, rank, batch_size, seq_len, peak_mem_GB ("OOM" kept as NaN + flag)."""
    df = pd.read_csv(path or paper_csv_path(), comment="#")
    df["paper_oom"] = df["peak_mem_GB"].astype(str).str.upper().eq("OOM")
    df["paper_gb"] = pd.to_numeric(df["peak_mem_GB"], errors="coerce")
    return df[["model", "method", "paper_gb", "paper_oom"]]


def load_cells(results_dir: Path) -> list[dict[str, Any]]:
    """Every cell's result.json under ``results_dir`` (checked against the result schema)."""
    from lorafa_repro.results import read_results

    cells = read_results(results_dir, kind="memory_probe", status=("success", "oom", "failed"),
                         pattern="*/result.json")
    return [{k: v for k, v in c.items() if k != "_path"} for c in cells]


def _gib(x: float | None) -> float | None:
    return None if x is None else round(x / GIB, 3)


def _partner(method: str) -> str | None:
    """The method a *_fa method is compared with: lora_fa -> lora, qlora_fa -> qlora."""
    return method[: -len("_fa")] if method.endswith("_fa") else None


def build_table(cells: list[dict[str, Any]], paper: pd.DataFrame, budget_gb: float | None = None) -> pd.DataFrame:
    """One row per cell, in the paper's order, with the paper's number, ours, analytic, breakdown, ratio, OOM."""
    rows = []
    for r in cells:
        cfg, mem = r["config"], r["memory"]
        peak = mem.get("peak_bytes")
        budget = budget_gb if budget_gb is not None else cfg.get("budget_gb", 40.0)
        oom = (r["status"] == "oom" and peak is None) or (peak is not None and peak > budget * GIB)
        row = {"model": cfg["model"], "method": cfg["method"], "rank": cfg.get("rank"), "batch_size": cfg["batch_size"],
               "seq_len": cfg["seq_len"], "target_len": cfg.get("target_len"), "dtype": cfg["dtype"],
               "backend": mem.get("backend"), "device": mem.get("device"), "status": r["status"],
               "ours_bytes": peak, "ours_gib": _gib(peak),
               "analytic_gib": _gib(mem.get("analytic", {}).get("peak_bytes")),
               "simulated_gib": _gib(mem.get("simulated", {}).get("peak_bytes")),
               "reserved_gib": _gib(mem.get("peak_reserved_bytes")),
               "peak_phase": mem.get("peak_phase"), "budget_gib": budget, "oom": bool(oom)}
        for key, _ in BREAKDOWN:
            row[f"{key}_gib"] = _gib(mem.get("breakdown", {}).get(key))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.merge(paper, on=["model", "method"], how="left")
    df["paper_oom"] = df["paper_oom"].astype("boolean").fillna(False).astype(bool)  # rows the paper lacks
    ours = {(m, meth): v for m, meth, v in zip(df["model"], df["method"], df["ours_bytes"])}
    pap = {(m, meth): v for m, meth, v in zip(df["model"], df["method"], df["paper_gb"])}

    def ratio(table: dict[tuple[str, str], float | None], model: str, method: str) -> float | None:
        base = _partner(method)
        a, b = table.get((model, base)) if base else None, table.get((model, method))
        if a is None or b is None or any(isinstance(x, float) and math.isnan(x) for x in (a, b)) or not b:
            return None
        return round(a / b, 3)

    df["ratio_ours"] = [ratio(ours, m, meth) for m, meth in zip(df["model"], df["method"])]
    df["ratio_paper"] = [ratio(pap, m, meth) for m, meth in zip(df["model"], df["method"])]
    if df["simulated_gib"].notna().any():
        df["sim_vs_measured_pct"] = ((df["simulated_gib"] / df["ours_gib"] - 1) * 100).round(1)
    morder = {m: i for i, m in enumerate(MODEL_ORDER)}
    korder = {m: i for i, m in enumerate(METHOD_ORDER)}
    df["_m"] = df["model"].map(lambda m: morder.get(m, len(morder)))
    df["_k"] = df["method"].map(lambda m: korder.get(m, len(korder)))
    return df.sort_values(["_m", "model", "_k", "method"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the Markdown and LaTeX tables."""
    compare = "sim_vs_measured_pct" in df
    reserved = df["reserved_gib"].notna().any()
    header = ["Model", "Method", "r", "Batch", "Paper (GB)", "Ours (GiB)", "Analytic (GiB)"]
    if reserved:
        header += ["Reserved (GiB)"]
    if compare:
        header += ["Simulated (GiB)", "Sim vs meas."]
    header += [label for _, label in BREAKDOWN] + ["Ratio ours", "Ratio paper", "Peak in", "Backend"]
    body = []
    for _, r in df.iterrows():
        paper = "OOM" if r.get("paper_oom") is True else _fmt(r.get("paper_gb"), 1)
        ours = _fmt(r["ours_gib"])
        if r["oom"]:
            ours = f"OOM ({ours})" if r["ours_gib"] is not None and not math.isnan(r["ours_gib"]) else "OOM"
        rank = _int(r["rank"]) if pd.notna(r["rank"]) else None
        cells = [r["model"], METHOD_LABEL.get(r["method"], r["method"]), _fmt(rank),
                 str(r["batch_size"]), paper, ours, _fmt(r["analytic_gib"])]
        if reserved:
            cells += [_fmt(r["reserved_gib"])]
        if compare:
            pct = r.get("sim_vs_measured_pct")
            cells += [_fmt(r["simulated_gib"]), "-" if pd.isna(pct) else f"{pct:+.1f}%"]
        cells += [_fmt(r[f"{k}_gib"]) for k, _ in BREAKDOWN]
        cells += [_fmt(r["ratio_ours"]), _fmt(r["ratio_paper"]), _fmt(r["peak_phase"]), _fmt(r["backend"])]
        body.append(cells)
    return header, body


def _int(x: Any) -> Any:
    return int(x) if isinstance(x, float) and not math.isnan(x) else x


def notes(cells: list[dict[str, Any]], df: pd.DataFrame, results_dir: Path, paper_path: Path,
          budget_gb: float | None) -> list[str]:
    """The settings and conventions behind the numbers, read from the results themselves."""
    out = []
    backends = sorted({c["memory"].get("backend", "?") for c in cells})
    devices = sorted({str(c["memory"].get("device")) for c in cells
                      if c["memory"].get("backend") in ("cuda", "simulate")})
    out.append(f"Ours = backend {', '.join(backends)}; device: {'; '.join(devices) or '-'}. "
               "Simulated = one training step on fake tensors (PyTorch FakeTensorMode + MemTracker), counting "
               "bytes held by tensors, i.e. what torch.cuda.max_memory_allocated reports (no allocator cache, "
               "fragmentation or CUDA context; the paper's tool is not stated and may include them).")
    semantics = sorted({str(c["config"].get("semantics", "cpu")) for c in cells
                        if c["memory"].get("backend") == "simulate"})
    if semantics == ["cuda"]:
        out.append("Saved tensors: CUDA's (memory/semantics.py lists every op of the step, what CUDA and the CPU "
                   "save, and how it was checked): dropout keeps a 1-byte bool mask, as CUDA's fused "
                   "native_dropout does, not the CPU path's 4-byte noise tensor; the other ops save the same on "
                   "both. Until issue #12 the simulator kept the CPU's noise, which put the rows with the models' "
                   "dropout 0.1 (RoBERTa, T5) 11-28% higher (e.g. RoBERTa-base FT 8.30, LoRA-FA 5.50 GiB; "
                   "LoRA/LoRA-FA 1.35x).")
    elif semantics:
        out.append(f"Saved tensors: simulated with {', '.join(semantics)} semantics (memory/semantics.py).")
    out.append("Units: ours and analytic in GiB (2^30 bytes); the paper prints \"GB\" without saying which.")
    out.append("Breakdown at the peak: activations = every tensor made in forward and still alive (saved for "
               "backward, or a forward transient when the peak is in forward); temps = tensors made in backward "
               "or the optimizer step (activation gradients, AdamW's foreach buffers); grads = parameter "
               "gradients held at that moment (none yet at the start of backward).")
    budget = budget_gb if budget_gb is not None else " / ".join(
        str(b) for b in sorted({c['config'].get('budget_gb', 40.0) for c in cells}))
    out.append(f"OOM = peak above the device budget of {budget} GiB (the paper's A100 40GB); the number in "
               "brackets is the peak the step would need.")
    settings = sorted({(c["config"]["model"], c["config"]["batch_size"], c["config"]["seq_len"],
                        c["config"].get("target_len"), c["config"]["dtype"], c["config"].get("attn", "eager"),
                        bool(c["config"].get("gradient_checkpointing")))
                       for c in cells}, key=lambda t: MODEL_ORDER.index(t[0]) if t[0] in MODEL_ORDER else 99)
    seen = []
    for m, b, s, t, d, attn, ckpt in settings:
        if (m, b) in [(x[0], x[1]) for x in seen]:
            continue
        seen.append((m, b))
        tokens = f"source {s} + target {t} tokens" if t else f"{s} tokens"
        recompute = "gradient checkpointing" if ckpt else "no recomputation"
        out.append(f"{m}: batch {b}, {tokens}, {d}, {attn} attention, {recompute}.")
    out.append("Precision: fp32 weights, activations, gradients and AdamW states for every row, the choice that "
               "matches the paper's FT rows best (results/table4/precision_study.json); sequence lengths: 128 as everywhere else in "
               "the paper, T5 with 128 source and 128 target tokens; LLaMA-7B with 128 source + 128 target "
               "tokens (Figure 3's lengths, the only ones the paper gives for LLaMA).")
    study = results_dir / "precision_study.json"
    if study.exists():
        rows = json.loads(study.read_text())["rows"]
        pap = load_paper(paper_path).set_index(["model", "method"])["paper_gb"]
        parts = []
        for dtype in ("fp32", "mixed", "bf16"):
            ratios = [r["simulated_gib"] / pap.get((r["model"], "ft")) for r in rows
                      if r["dtype"] == dtype and pd.notna(pap.get((r["model"], "ft"), float("nan")))]
            if ratios:
                parts.append(f"{dtype}: {min(ratios):.2f}-{max(ratios):.2f}")
        out.append("Precision study, simulated FT peak / paper FT number over RoBERTa-base/large and "
                   "T5-small/base/large: " + "; ".join(parts) + " (precision_study.json).")
    ckpt = {bool(c["config"].get("gradient_checkpointing")) for c in cells}
    if ckpt == {False}:
        recompute = ("every activation kept for backward (no gradient checkpointing: the paper's claim is memory "
                     "saved without recomputation; results/fig3_memory_vs_rank.md shows LLaMA-7B with it, and "
                     "results/table4_ckpt these cells)")
    elif ckpt == {True}:
        recompute = ("gradient checkpointing: each block keeps only its input and is recomputed in backward "
                     "(non-reentrant torch.utils.checkpoint), not the setting of the paper's Table 4 "
                     "(results/table4 keeps every activation)")
    else:
        recompute = "gradient checkpointing as stated per model above"
    out.append("Step: steady state (AdamW states already allocated, gradients None at the start), forward, "
               "backward, gradient clipping, AdamW foreach step (PyTorch's CUDA default), zero_grad. LoRA "
               "alpha 16, adapter dropout 0 (the models' own dropout 0.1 active), adapters on every linear "
               f"layer of the transformer blocks, RoBERTa's classification head trained, {recompute}. LoRA-FA = "
               "methods/lora_fa.py of the run's checkout (code fingerprint below).")
    extra = [c for c in cells if c["memory"].get("extrapolation")]
    if extra:
        d = extra[0]["memory"]["extrapolation"]["depths"]
        checked = ("0 bytes off a full-depth simulation for RoBERTa-base LoRA-FA and T5-base LoRA/LoRA-FA with "
                   "checkpointing" if True in ckpt else
                   "0 bytes off a full-depth simulation for FT/LoRA/LoRA-FA on RoBERTa-base/large and T5-base and "
                   "for FT/LoRA-FA on LLaMA-7B at these settings")
        out.append(f"Depth: the simulator runs each model at {d[0]} and {d[1]} blocks per stack and extrapolates "
                   f"each phase/region peak linearly to the real depth (exact for identical blocks: {checked}; "
                   "tests/test_memory_probe.py checks it on tiny models).")
    if any(c["memory"].get("nf4_correction") for c in cells):
        out.append("4-bit rows (not in the paper): simulated with the block linears at the compute dtype, then "
                   "their bytes replaced by NF4 with double quantization (0.5 byte/weight + 1 byte per 64 "
                   "weights + 4 bytes per 16384 + ~1.1 KiB of code books per weight, bitsandbytes 0.50's "
                   "layout) and one dequantized weight added to the forward/backward temporaries; "
                   "compute dtype fp32 like the other rows (QLoRA's own recipe uses bf16). T5's FFN output "
                   "projection wo stays unquantized in fp32 (with its adapter), as transformers' 4-bit loading "
                   "keeps T5's _keep_in_fp32_modules: T5 casts wo's input to wo's dtype, which a 4-bit (uint8) "
                   "weight cannot take (methods/quantize.py).")
    out.append("Analytic = the paper's formula terms over the real layer shapes and dtypes: weights, gradients, "
               "AdamW states, the inputs (X) and XA kept by the block linears (with checkpointing: every block's "
               "input plus one recomputed block's X / XA), plus one layer's backward gradients; attention "
               "scores, softmax, GELU, LayerNorm, dropout masks and the loss are left out, as in the paper.")
    out.append("Ratio = LoRA peak / LoRA-FA peak (QLoRA / QLoRA-FA); paper's ratio from its numbers.")
    fa = df[df["method"] == "lora_fa"]
    ours_r, pap_r = fa["ratio_ours"].dropna(), fa["ratio_paper"].dropna()
    if len(ours_r):
        out.append(f"LoRA-FA vs LoRA: ours {ours_r.min():.2f}-{ours_r.max():.2f}x "
                   f"({(ours_r >= 1.4).sum()} of {len(ours_r)} rows at >= 1.4x); paper "
                   f"{pap_r.min():.2f}-{pap_r.max():.2f}x ({(pap_r >= 1.4).sum()} of {len(pap_r)}).")
    shown = paper_path.relative_to(REPO) if paper_path.is_relative_to(REPO) else paper_path
    out.append(f"Paper numbers: {shown} (transcribed from the paper's Table 4).")
    shas = sorted({(c['env'].get('git_sha') or 'uncommitted') + (' (dirty)' if c['env'].get('git_dirty') else '')
                   for c in cells})
    prints = sorted({str(c["config"].get("code")) for c in cells})
    out.append(f"Code: git {', '.join(shas)}; code fingerprint (methods/*.py + memory step and backends) {', '.join(prints)}.")
    return out


def to_markdown(header: list[str], body: list[list[str]], note_lines: list[str]) -> str:
    lines = ["# Table 4: peak memory of one training step", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in note_lines]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(header: list[str], body: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{" + "ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render(results_dir: str | Path = "results/table4", budget_gb: float | None = None,
           paper_path: Path | None = None) -> dict[str, Path]:
    """Write table4.{md,csv,tex} into ``results_dir``; returns their paths."""
    results_dir = Path(results_dir)
    paper_path = paper_path or paper_csv_path()
    cells = load_cells(results_dir)
    if not cells:
        raise FileNotFoundError(f"no memory_probe result.json under {results_dir}")
    df = build_table(cells, load_paper(paper_path), budget_gb)
    header, body = display_rows(df)
    note_lines = notes(cells, df, results_dir, paper_path, budget_gb)
    paths = {"md": results_dir / "table4.md", "csv": results_dir / "table4.csv", "tex": results_dir / "table4.tex"}
    paths["md"].write_text(to_markdown(header, body, note_lines))
    csv = df.assign(rank=df["rank"].astype("Int64"), target_len=df["target_len"].astype("Int64"))
    csv.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(to_latex(header, body))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="analysis/table4.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results" / "table4")
    p.add_argument("--budget-gb", type=float, default=None, help="re-judge OOM against this budget (GiB)")
    a = p.parse_args(argv)
    if not load_cells(a.results):
        fail(p.prog, f"no memory_probe result.json under {a.results}. Fix: make reproduce-table4 (python -m "
                     "lorafa_repro.memory.table4 --out <folder>) or pass --results <its folder>")
    print_written(*render(a.results, a.budget_gb).values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
