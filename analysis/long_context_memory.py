"""Long-context memory table (issue 10): simulated peak of one training step of LLaMA-7B at 8k and 16k tokens.

Rows: LoRA, LoRA-FA, LongLoRA (LoRA + S2-Attn + trainable embeddings and norms), LongLoRA-FA (the same with
LoRA-FA), QLoRA-FA + S2-Attn, Houlsby adapters. Columns: sequence length x attention kernel (eager, SDPA)
x gradient checkpointing (off, on). Batch 1, bf16 weights / compute / optimizer states, AdamW, every linear of
the blocks adapted (rank 8, LongLoRA's), adapters with bottleneck 8. Backend: ``simulate`` (fake tensors, no
memory allocated; depth extrapolated from 2-3 blocks, 3-4 with checkpointing), see memory/simulate.py.

    python analysis/long_context_memory.py --out results/long_context            # run missing cells + render
    python analysis/long_context_memory.py --out results/long_context --no-run   # render only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafa_repro.memory.probe import ProbeConfig, run_probe
from lorafa_repro.methods import LEGACY_OPTIONS
from lorafa_repro.results import write_json_atomic

GIB = 2**30
EMBED_NORM = ("embed", "norm")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    method: str
    s2_attn: bool = False
    trainable_extra: tuple[str, ...] = ()


ROWS = (
    Row("lora", "LoRA", "lora"),
    Row("lora_fa", "LoRA-FA", "lora_fa"),
    Row("longlora", "LongLoRA (LoRA + S2 + embed/norm)", "lora", True, EMBED_NORM),
    Row("longlora_fa", "LongLoRA-FA (LoRA-FA + S2 + embed/norm)", "lora_fa", True, EMBED_NORM),
    Row("qlora_fa_s2", "QLoRA-FA + S2", "qlora_fa", True),
    Row("adapter", "Adapters (Houlsby)", "adapter"),
)
ATTNS = ("eager", "sdpa")


def cells(model: str, seqs: list[int], rank: int, budget_gb: float) -> list[tuple[Row, ProbeConfig]]:
    out = []
    for seq in seqs:
        for attn in ATTNS:
            for ckpt in (False, True):
                for row in ROWS:
                    out.append((row, ProbeConfig(
                        model=model, method=row.method, rank=rank, batch_size=1, seq_len=seq, target_len=0,
                        dtype="bf16", attn=attn, gradient_checkpointing=ckpt, budget_gb=budget_gb,
                        s2_attn=row.s2_attn, trainable_extra=row.trainable_extra)))
    return out


def cell_dir(out: Path, row: Row, cfg: ProbeConfig) -> Path:
    ckpt = "ckpt" if cfg.gradient_checkpointing else "keep"
    return out / f"{cfg.model}__s{cfg.seq_len}__{cfg.attn}__{ckpt}__{row.key}"


def is_stored(path: Path, cfg: ProbeConfig) -> bool:
    """True if ``path`` holds this cell. Keys added to ProbeConfig since the cell ran take the value it was
    computed with (methods.LEGACY_OPTIONS, else the default), so an unchanged cell compares equal and is not
    recomputed, and a cell computed another way (S2-Attn's roll) is."""
    if not path.exists():
        return False
    probe = json.loads(path.read_text())["config"].get("probe")
    if not isinstance(probe, dict):
        return False
    fields = {f.name for f in dataclasses.fields(ProbeConfig)}
    legacy = {k: v for k, v in LEGACY_OPTIONS.items() if k in fields}  # what a cell stored without them ran
    try:
        stored = ProbeConfig(**{**legacy, **probe}).to_dict()
    except TypeError:  # a key ProbeConfig no longer has
        return False
    return json.loads(json.dumps(stored)) == json.loads(json.dumps(cfg.to_dict()))  # tuples and lists alike


def run_cells(todo: list[tuple[Row, ProbeConfig]], out: Path, *, force: bool = False) -> None:
    for row, cfg in todo:
        path = cell_dir(out, row, cfg) / "result.json"
        if not force and is_stored(path, cfg):
            continue
        t0 = time.perf_counter()
        result = run_probe(cfg, "simulate", extra_config={"table": "long_context", "row": row.key,
                                                          "probe": cfg.to_dict()})
        result.setdefault("timing", {})["simulate_s"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(path, result)
        peak = result["memory"].get("peak_bytes")
        print(f"{path.parent.name}: {peak / GIB if peak else result.get('error')} GiB "
              f"({result['timing']['simulate_s']} s)", flush=True)


def load(out: Path) -> dict[tuple[str, int, str, bool], dict[str, Any]]:
    table = {}
    for path in sorted(out.glob("*/result.json")):
        r = json.loads(path.read_text())
        p = r["config"]["probe"]
        table[(r["config"]["row"], p["seq_len"], p["attn"], p["gradient_checkpointing"])] = r
    return table


def _gib(r: dict[str, Any] | None, key: str | None = None) -> str:
    if r is None or r.get("status") == "failed":
        return "-"
    mem = r["memory"]
    v = mem.get("peak_bytes") if key is None else mem.get("breakdown", {}).get(key)
    oom = " (OOM)" if key is None and r.get("status") == "oom" else ""
    return "-" if v is None else f"{v / GIB:,.1f}{oom}"


def render(out: Path, model: str = "llama-7b") -> str:
    table = load(out)
    seqs = sorted({k[1] for k in table})
    cols = [(s, a, c) for s in seqs for a in ATTNS for c in (False, True)]
    head = "| method | " + " | ".join(f"{s // 1024}k {a}{' +ckpt' if c else ''}" for s, a, c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = [f"# Long-context memory: {model}, batch 1, simulated peak of one training step (GiB)", "",
             "Peak (GiB, `max_memory_allocated`-like; (OOM) = above the --budget-gb of the run):", "", head, sep]
    for row in ROWS:
        lines.append(f"| {row.label} | " + " | ".join(_gib(table.get((row.key, *c))) for c in cols) + " |")
    lines += ["", "Activations at the peak (GiB):", "", head, sep]
    for row in ROWS:
        lines.append(f"| {row.label} | "
                     + " | ".join(_gib(table.get((row.key, *c)), "activations") for c in cols) + " |")
    lines += ["", "LoRA minus LoRA-FA, and LongLoRA minus LongLoRA-FA (GiB): what freezing A saves", "", head, sep]
    for a, b, label in (("lora", "lora_fa", "LoRA - LoRA-FA"), ("longlora", "longlora_fa", "LongLoRA - LongLoRA-FA")):
        vals = []
        for c in cols:
            ra, rb = table.get((a, *c)), table.get((b, *c))
            ok = ra and rb and ra["memory"].get("peak_bytes") and rb["memory"].get("peak_bytes")
            vals.append(f"{(ra['memory']['peak_bytes'] - rb['memory']['peak_bytes']) / GIB:,.1f}" if ok else "-")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    times = [r.get("timing", {}).get("simulate_s") for r in table.values()]
    times = [t for t in times if t is not None]
    if times:
        lines += ["", f"Simulation time: {len(times)} cells, {sum(times) / 60:.1f} min in all, "
                      f"{min(times):.0f}-{max(times):.0f} s per cell (fake tensors: nothing is allocated, so the 16k "
                      "eager score matrices cost no time or memory here)."]
    text = "\n".join(lines) + "\n"
    (out / "long_context.md").write_text(text)
    rows = ["row,seq_len,attn,gradient_checkpointing,peak_bytes,activations_bytes"]
    for (key, s, a, c), r in sorted(table.items()):
        m = r["memory"]
        rows.append(f"{key},{s},{a},{c},{m.get('peak_bytes', '')},{m.get('breakdown', {}).get('activations', '')}")
    (out / "long_context.csv").write_text("\n".join(rows) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/long_context")
    p.add_argument("--model", default="llama-7b")
    p.add_argument("--seq", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--budget-gb", type=float, default=80.0)
    p.add_argument("--force", action="store_true", help="recompute cells that are already stored")
    p.add_argument("--no-run", action="store_true", help="render the stored cells only")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not a.no_run:
        run_cells(cells(a.model, a.seq, a.rank, a.budget_gb), out, force=a.force)
    sys.stdout.write(render(out, a.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
