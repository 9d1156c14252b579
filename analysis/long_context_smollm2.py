"""CPU demo table: LongLoRA's context extension of SmolLM2-135M (`make cpu-demo-long-context`).

Reads the ``result.json`` of every run under ``--results`` (``lorafa_repro.evaluate`` runs = the untrained model,
``lorafa_repro.train`` runs = LongLoRA / LongLoRA-FA) and writes ``--out/long_context_smollm2.md`` and ``.csv``:
held-out perplexity at the demo's context under full attention (and at the extra lengths of
``task.eval_seq_lens`` when a run has them), with the settings, trainable parameters, losses, time and memory.

    python analysis/long_context_smollm2.py --results results/long_context_smollm2/raw --out results/long_context_smollm2
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

GIB = 2**30
LABEL = {"lora": "LongLoRA (LoRA + S2-Attn {shift} + embed/norm)",
         "lora_fa": "LongLoRA-FA (LoRA-FA + S2-Attn {shift} + embed/norm)"}


def s2_shift(method: dict[str, Any]) -> str | None:
    """The run's S2-Attn partition; runs stored before ``method.s2_shift`` existed ran ``roll``."""
    return method.get("s2_shift", "roll") if method.get("s2_attn") else None


def row(r: dict[str, Any], run: str) -> dict[str, Any]:
    c, m = r["config"], r["metrics"]
    final = m["final"]
    trained = r["kind"] == "train"
    method = c["method"]
    factor = c["model"].get("rope_scaling_factor")
    out = {
        "run": run,
        "model": "SmolLM2-135M-Instruct " + (LABEL.get(method["name"], method["name"]).format(shift=s2_shift(method))
                                             if trained else "(pretrained)"),
        "s2_shift": s2_shift(method) if trained else None,
        "context": c["task"]["max_seq_len"],
        "rope_scaling": f"linear x{factor:g}" if factor else "none",
        "steps": r["timing"].get("steps", 0) if trained else 0,
        "lr": c["optim"]["lr"] if trained else None,
        "trainable": r["params"].get("trainable") if trained else 0,
        "eval_chunks": final.get("eval_chunks"),
        "eval_tokens": final.get("eval_tokens"),
        "eval_loss": final["eval_loss"],
        "perplexity": final["perplexity"],
        "first_loss": m.get("first_loss"),
        "last_loss": m.get("last_loss"),
        "train_s": r["timing"].get("train_s"),
        "wall_s": r["timing"].get("total_s", r["timing"].get("wall_s")),  # total_s; wall_s before it
        "peak_rss_gib": (r["memory"].get("peak_rss_bytes") or 0) / GIB or None,
        "git_sha": r.get("env", {}).get("git_sha", "")[:10],
    }
    for k, v in final.items():
        if k.startswith("perplexity_"):
            out[k] = v
    return out


def load(results: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(results.glob("*/result.json")):
        r = json.loads(path.read_text())
        if r.get("status") == "success":
            rows.append(row(r, path.parent.name))
    rows.sort(key=lambda x: (x["steps"] > 0, x["rope_scaling"] != "none", x["s2_shift"] or "", x["model"]))
    return rows


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    extra = sorted({k for r in rows for k in r if k.startswith("perplexity_")}, key=lambda k: int(k.split("_")[1]))
    head = ["model", "context", "RoPE", "steps", "trainable", f"ppl @ {rows[0]['context']:,} (full attn.)", "eval loss",
            *[f"ppl @ {int(k.split('_')[1]):,}" for k in extra], "train loss first -> last", "train s", "peak RSS GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        losses = f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}" if r["first_loss"] is not None else "-"
        cells = [r["model"], fmt(r["context"]), r["rope_scaling"], fmt(r["steps"]), fmt(r["trainable"]),
                 fmt(r["perplexity"]), fmt(r["eval_loss"], 4), *[fmt(r.get(k)) for k in extra], losses,
                 fmt(r["train_s"], 0), fmt(r["peak_rss_gib"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = load(args.results)
    if not rows:
        raise SystemExit(f"no successful result.json under {args.results}. Fix: make cpu-demo-long-context")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_context_smollm2.md").write_text(markdown(rows))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "long_context_smollm2.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(markdown(rows))


if __name__ == "__main__":
    main()
