"""CPU demo table: Houlsby adapters vs LoRA vs LoRA-FA vs FT on all-MiniLM-L6-v2, real SST-2 and MRPC.

Reads every ``result.json`` under ``--results`` (one run per method and task, `make cpu-demo-adapters`) and writes
``--out/cpu_demo_adapters.md``: dev score, trainable parameters, the process memory high-water mark of the run
(CPU RSS: Python, libraries, data and model included), training time, and two per-method memory terms measured on
the real model at the demo's batch (32 x 128 tokens, fp32): bytes autograd saves for backward in one forward
(``memory.saved.measure_saved_bytes``) and gradient + AdamW state bytes of the trainable parameters (12 B each).

    python analysis/cpu_demo_adapters.py --results results/cpu_demo_adapters/raw --out results/cpu_demo_adapters
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lorafa_repro.methods import method_options

MIB = 2**20
METHOD_ORDER = ("ft", "lora", "lora_fa", "adapter")
LABEL = {"ft": "FT", "lora": "LoRA", "lora_fa": "LoRA-FA", "adapter": "Adapters (Houlsby)"}



def load_runs(results: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results.glob("*/*/result.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "success":
            continue
        c = r["config"]
        main = r["metrics"]["main_metric"]
        rank = None if c["method"]["name"] == "ft" else c["method"]["rank"]
        runs.append({"task": c["task"]["name"], "method": c["method"]["name"], "lr": c["optim"]["lr"],
                     "rank": rank, "metric": main, "score": r["metrics"]["final"][main],
                     "trainable": r["params"]["trainable"], "total": r["params"]["total"],
                     "peak_rss": r["memory"].get("peak_rss_bytes"), "train_s": r["timing"].get("train_s"),
                     "steps": r["timing"].get("steps"), "sha": r.get("env", {}).get("git_sha", "")[:10],
                     "options": method_options(c["method"])})
    return runs


def saved_bytes_per_method(model_dir: str, options: dict[str, dict[str, Any]], rank: int = 8, batch: int = 32,
                           seq: int = 128) -> dict[str, tuple[int, int]]:
    """``(activation bytes saved for backward, trainable parameters)`` of one forward of the real MiniLM at the
    demo's batch, per method, with the method options its runs trained with (``options``: method ->
    :func:`method_options`) and the current code (the trainable count shows whether that code trains what the
    runs trained)."""
    import torch
    from types import SimpleNamespace

    from lorafa_repro.memory.saved import measure_saved_bytes
    from lorafa_repro.methods import apply_method
    from lorafa_repro.models import build_model

    cfg = SimpleNamespace(source="pretrained", path=model_dir, tokenizer=None, arch="encoder", gguf_file=None,
                          name="all-minilm-l6-v2", default_target_modules=["query", "key", "value", "dense"])
    out = {}
    for method in METHOD_ORDER:
        torch.manual_seed(0)
        model = build_model(cfg, task_kind="classification", num_labels=2)
        targets = None if method in ("ft", "adapter") else ["query", "key", "value", "dense"]
        model = apply_method(model, method, rank=None if method == "ft" else rank, alpha=16, target_modules=targets,
                             **options.get(method, {}))
        model.train()
        g = torch.Generator().manual_seed(0)
        b = {"input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
             "attention_mask": torch.ones(batch, seq, dtype=torch.long), "labels": torch.zeros(batch, dtype=torch.long)}
        out[method] = (measure_saved_bytes(model, b).activation_bytes,
                       sum(p.numel() for p in model.parameters() if p.requires_grad))
    return out


def render(runs: list[dict[str, Any]], saved: dict[str, tuple[int, int]] | None) -> str:
    lines = ["# Adapters vs LoRA vs LoRA-FA vs FT: all-MiniLM-L6-v2 on real SST-2 and MRPC (CPU scale)", ""]
    for task in sorted({r["task"] for r in runs}):
        rows = sorted((r for r in runs if r["task"] == task),
                      key=lambda r: (METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99, r["lr"]))
        metric = rows[0]["metric"]
        lines += [f"## {task.upper()} (dev {metric}, first 400 dev examples)", "",
                  "| method | lr | rank / bottleneck | dev score | trainable params | grads + AdamW states (MiB) "
                  "| saved for backward, batch 32x128 (MiB) | process peak RSS (MiB) | train time (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            sv = f"{saved[r['method']][0] / MIB:,.0f}" if saved and r["method"] in saved else "-"
            rss = f"{r['peak_rss'] / MIB:,.0f}" if r["peak_rss"] else "-"
            lines.append(f"| {LABEL.get(r['method'], r['method'])} | {r['lr']:g} | {r['rank'] or '-'} | "
                         f"{100 * r['score']:.1f} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
                         f"{12 * r['trainable'] / MIB:,.1f} | {sv} | {rss} | {r['train_s']:.0f} |")
        lines.append("")
    steps = sorted({r["steps"] for r in runs})
    shas = sorted({r["sha"] for r in runs})
    lines += [f"Steps per run: {', '.join(map(str, steps))}; batch 32; one seed; git {', '.join(shas)}."]
    differ = sorted({(r["method"], r["trainable"], saved[r["method"]][1]) for r in runs
                     if saved and r["method"] in saved and saved[r["method"]][1] != r["trainable"]},
                    key=lambda t: METHOD_ORDER.index(t[0]) if t[0] in METHOD_ORDER else 99)
    if differ:
        lines += ["", "The saved-for-backward column is measured when this page is rendered, with the current code, "
                  "which trains another parameter set than the runs did: "
                  + "; ".join(f"{LABEL.get(m, m)} {now:,} trainable now, {then:,} in its runs"
                              for m, then, now in differ)
                  + " (why: results/cpu_demo_adapters/README.md). The other columns are the runs' own."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results/cpu_demo_adapters/raw"))
    p.add_argument("--out", type=Path, default=Path("results/cpu_demo_adapters"))
    p.add_argument("--minilm-dir", default=os.environ.get("LORAFA_MINILM_DIR"),
                   help="local all-MiniLM-L6-v2 for the saved-for-backward column (skipped without it)")
    a = p.parse_args(argv)
    runs = load_runs(a.results)
    if not runs:
        print(f"no successful runs under {a.results}", file=sys.stderr)
        return 1
    options = {r["method"]: r["options"] for r in runs}
    saved = saved_bytes_per_method(a.minilm_dir, options) if a.minilm_dir else None
    text = render(runs, saved)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cpu_demo_adapters.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
