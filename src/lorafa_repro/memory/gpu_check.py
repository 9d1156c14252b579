"""The GPU check of Table 4 (``scripts/gpu_check_table4.sh``): every cell measured on a CUDA GPU next to the
simulator's number, with a verdict that cannot pass falsely.

    python3 -m lorafa_repro.memory.gpu_check [--out results/table4_cuda] [--probes results/table4_cuda_probes]
        [--models roberta-base,roberta-large,t5-small,t5-base,t5-large] [--probe-model roberta-base]
        [--ckpt-models roberta-base,t5-base] [--budget-gb 40] [--force]

Steps: (0) preflight: a CUDA GPU and the private ``MemTracker`` API the simulator needs, else one clear
message and exit 2 before anything is measured; (1) one cell phase by phase, written under ``--probes`` (never
into the table folder, whose every ``*/result.json`` is a table row); (2) every table cell measured and
simulated (``table4 --backend cuda --compare``): a failing cell is recorded and the next one runs; the table is
rendered; (3) gradient checkpointing: LoRA and LoRA-FA of each ``--ckpt-models`` with recomputation, measured
vs simulated, into ``--probes``/gradient_checkpointing.json; (4) the verdict, one line per compared cell:
``ok`` when |simulated / measured - 1| <= 5%, ``MISS`` when off by more or when either number is missing,
``FAIL`` when the cell did not run. Exit status 0 only when every line is ``ok``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorafa_repro.memory.probe import GIB, probe, run_probe
from lorafa_repro.memory.table4 import PAPER_CELLS, cell_name, render, run_table, table_cells

GOAL_PCT = 5.0
DEFAULT_MODELS = "roberta-base,roberta-large,t5-small,t5-base,t5-large"


@dataclass(frozen=True)
class Check:
    """One compared cell: measured and simulated peak bytes (None when missing) and the run's status."""

    name: str
    status: str
    measured: int | None
    simulated: int | None
    error: str | None = None

    @property
    def pct(self) -> float | None:
        if not self.measured or self.simulated is None:
            return None
        return 100.0 * (self.simulated / self.measured - 1.0)

    @property
    def verdict(self) -> str:
        if self.status not in ("success", "oom"):
            return "FAIL"
        pct = self.pct
        return "ok" if pct is not None and abs(pct) <= GOAL_PCT else "MISS"


def check_of(name: str, result: dict[str, Any]) -> Check:
    """A table cell's result.json (measured + ``memory.simulated``) as a :class:`Check`."""
    mem = result.get("memory", {})
    return Check(name, result.get("status", "failed"), mem.get("peak_bytes"),
                 mem.get("simulated", {}).get("peak_bytes"),
                 result.get("error") or mem.get("simulated", {}).get("error"))


def verdict_lines(checks: list[Check]) -> tuple[list[str], int]:
    """One line per check and the number of checks that are not ``ok``."""

    def gib(x: int | None) -> str:
        return f"{x / GIB:7.2f}" if x is not None else "      -"

    lines = []
    for c in checks:
        pct = f"{c.pct:+6.1f}%" if c.pct is not None else "      -"
        line = f"  {c.verdict:4s} {c.name:34s} measured {gib(c.measured)} GiB  simulated {gib(c.simulated)} GiB  {pct}"
        lines.append(line + (f"  ({c.error})" if c.error and c.verdict != "ok" else ""))
    bad = sum(c.verdict != "ok" for c in checks)
    lines.append(f"cells off by more than {GOAL_PCT:g}%, missing a number or failed: {bad} of {len(checks)}")
    return lines, bad


def preflight() -> str | None:
    """None when the check can run, else why not (one message ending in 'Fix: ...')."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible: this check measures on a GPU. Fix: run it on a machine with one CUDA GPU"
    try:
        from lorafa_repro.memory.simulate import check_memtracker

        check_memtracker()
    except (ImportError, RuntimeError) as e:
        return str(e)
    return None


def probe_one(model: str, probes: Path, budget_gb: float) -> Check:
    """Step 1: one LoRA-FA cell, phase by phase, under ``probes`` (outside the table folder). A smoke check
    with no simulated number of its own: ``ok`` when it ran."""
    cfg = next(c for c in table_cells([model], budget_gb=budget_gb) if c.method == "lora_fa")
    result = run_probe(cfg, "cuda", probes / f"probe_{model}_lora_fa")
    for phase, v in result["memory"].get("phases", {}).items():
        print(f"  {phase:22s} " + "  ".join(f"{k}={x / GIB:.3f} GiB" for k, x in v.items()), flush=True)
    return Check(f"probe {model} lora_fa", result["status"], result["memory"].get("peak_bytes"),
                 result["memory"].get("peak_bytes") if result["status"] == "success" else None, result.get("error"))


def checkpointing_checks(models: list[str], probes: Path, budget_gb: float) -> list[Check]:
    """Step 3: LoRA and LoRA-FA with gradient checkpointing, measured vs simulated, each guarded."""
    checks, rows = [], []
    for model in models:
        for cfg in table_cells([model], budget_gb=budget_gb, gradient_checkpointing=True):
            if cfg.method not in ("lora", "lora_fa"):
                continue
            name = f"ckpt {cell_name(cfg)}"
            meas = run_probe(cfg, "cuda")
            sim: dict[str, Any]
            try:
                sim = probe(cfg, "simulate")
            except Exception as e:  # noqa: BLE001 - a failed simulation is a miss, not a crash
                sim = {"error": f"{type(e).__name__}: {e}"}
            c = Check(name, meas["status"], meas["memory"].get("peak_bytes"), sim.get("peak_bytes"),
                      meas.get("error") or sim.get("error"))
            checks.append(c)
            rows.append({"config": cfg.to_dict(), "status": c.status, "measured_bytes": c.measured,
                         "measured_reserved_bytes": meas["memory"].get("peak_reserved_bytes"),
                         "simulated_bytes": c.simulated, "sim_vs_measured_pct": None if c.pct is None else
                         round(c.pct, 2), "error": c.error})
    from lorafa_repro.results import write_json_atomic

    write_json_atomic(probes / "gradient_checkpointing.json",
                      {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows})
    return checks


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.quiet import quiet_known_warnings

    quiet_known_warnings()
    p = argparse.ArgumentParser(prog="python3 -m lorafa_repro.memory.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/table4_cuda"), help="the table folder (one row per cell)")
    p.add_argument("--probes", type=Path, default=Path("results/table4_cuda_probes"),
                   help="the extra probes (step 1, gradient checkpointing): outside --out")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--probe-model", default="roberta-base")
    p.add_argument("--ckpt-models", default="roberta-base,t5-base")
    p.add_argument("--budget-gb", type=float, default=40.0)
    p.add_argument("--force", action="store_true", help="re-measure cells that are done")
    a = p.parse_args(argv)
    if a.probes.resolve() == a.out.resolve() or a.out.resolve() in a.probes.resolve().parents:
        p.error("--probes must lie outside --out (every folder under --out is a table row)")
    models = a.models.split(",")
    unknown = set(models + [a.probe_model] + a.ckpt_models.split(",")) - set(PAPER_CELLS) - {""}
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; the table has {list(PAPER_CELLS)}")

    why_not = preflight()
    if why_not:
        print(f"gpu_check: {why_not}", file=sys.stderr, flush=True)
        return 2
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / GIB:.1f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)

    checks: list[Check] = []
    print(f"1. one cell phase by phase -> {a.probes}", flush=True)
    checks.append(probe_one(a.probe_model, a.probes, a.budget_gb))
    cells = table_cells(models, budget_gb=a.budget_gb)
    print(f"2. {len(cells)} table cells, measured and simulated -> {a.out}", flush=True)
    results = run_table(cells, a.out, "cuda", force=a.force, compare=True)
    checks += [check_of(cell_name(cfg), r) for cfg, r in zip(cells, results)]
    try:
        render(a.out, budget_gb=a.budget_gb)
    except Exception as e:  # noqa: BLE001 - the verdict below still reports every cell
        checks.append(Check("render table", "failed", None, None, f"{type(e).__name__}: {e}"))
    ckpt = [m for m in a.ckpt_models.split(",") if m]
    print(f"3. gradient checkpointing: LoRA and LoRA-FA of {', '.join(ckpt) or '-'} -> {a.probes}", flush=True)
    checks += checkpointing_checks(ckpt, a.probes, a.budget_gb)
    print("4. verdict (goal: simulated within 5% of measured, torch.cuda.max_memory_allocated)", flush=True)
    lines, bad = verdict_lines(checks)
    print("\n".join(lines), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
