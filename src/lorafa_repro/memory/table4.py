"""Table 4 of the paper (peak memory of FT / LoRA / LoRA-FA) plus the 4-bit rows, one probe per cell.

    python -m lorafa_repro.memory.table4 [--backend auto|cuda|simulate|analytic] [--out results/table4]
        [--budget-gb 40] [--compare] [--force] [--models roberta-base,t5-small] [--no-render]
        [--gradient-checkpointing]   # the same cells with recomputation, into results/table4_ckpt

Cells: the paper's 18 (6 models x FT/LoRA/LoRA-FA at the paper's batch sizes and ranks) and, for
every model, each registered 4-bit method (``Method.quantize_4bit``: qlora, and qlora_fa as soon as it
is in ``methods.METHODS``). One ``result.json`` per cell under ``--out/<model>__<method>[__r<rank>]/``
holding the chosen backend's numbers, the analytic ones (``memory.analytic``) and, with ``--compare``
on a GPU, the simulated ones (``memory.simulated``). A cell whose result already holds the same
configuration and backend with status success (or an oom verdict with numbers, same budget) is
skipped unless ``--force`` (``config.code`` fingerprints methods/*.py and the probe's backends: a cell
computed with other code is recomputed). Then ``analysis/table4.py`` renders table4.{md,csv,tex}.

Settings the paper leaves open, chosen here (see ``precision_study.json`` and the table's notes):
fp32 weights, compute and AdamW states (the closest match to the paper's FT rows); sequence length 128
(RoBERTa), 128 source + 128 target tokens (T5, LLaMA); eager attention; LoRA alpha 16, adapter
dropout 0, adapters on every block linear.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lorafa_repro.memory.probe import GIB, ProbeConfig, model_arch, probe, resolve_backend, run_probe

#: model -> (batch size, rank) from the paper's Table 4 setup
PAPER_CELLS: dict[str, tuple[int, int]] = {
    "roberta-base": (64, 8),
    "roberta-large": (64, 8),
    "t5-small": (128, 8),
    "t5-base": (64, 8),
    "t5-large": (32, 16),
    "llama-7b": (1, 64),
}
PAPER_METHODS = ("ft", "lora", "lora_fa")
#: extra rows beside the paper's methods and the 4-bit ones (rank = the adapters' bottleneck size)
EXTRA_METHODS = ("adapter",)
TABLE_DTYPE = "fp32"
#: arch -> (seq_len, target_len); see ProbeConfig for what the two mean per architecture
SEQ_LENS: dict[str, tuple[int, int | None]] = {"encoder": (128, None), "encoder_decoder": (128, 128),
                                                "decoder": (128, 128)}
DEFAULT_OUT = Path("results/table4")


def table_methods() -> list[str]:
    """The paper's three methods, every registered 4-bit method (picked up when registered), then the extras."""
    from lorafa_repro.methods import METHODS

    return (list(PAPER_METHODS) + [name for name, spec in METHODS.items() if spec.quantize_4bit]
            + list(EXTRA_METHODS))


def table_cells(models: list[str] | None = None, *, budget_gb: float = 40.0, dtype: str = TABLE_DTYPE,
                gradient_checkpointing: bool = False) -> list[ProbeConfig]:
    """Every cell of the table, in row order (``gradient_checkpointing``: the variant with recomputation)."""
    cells = []
    for model, (batch, rank) in PAPER_CELLS.items():
        if models and model not in models:
            continue
        seq, target = SEQ_LENS[model_arch(model)]
        for method in table_methods():
            cells.append(ProbeConfig(model=model, method=method, rank=None if method == "ft" else rank,
                                     batch_size=batch, seq_len=seq, target_len=target, dtype=dtype,
                                     gradient_checkpointing=gradient_checkpointing, budget_gb=budget_gb))
    return cells


def code_fingerprint() -> str:
    """Hash of the code a cell's number depends on (methods/*.py, the probe's backends): a cell computed
    with other code is recomputed, e.g. after methods/lora_fa.py changes."""
    from lorafa_repro.results import fingerprint_files

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "methods").glob("*.py"))
    backends = ("probe", "step", "semantics", "cuda", "cpu", "simulate", "analytic")
    files += [root / "memory" / f"{n}.py" for n in backends]
    return fingerprint_files(files)


def cell_name(cfg: ProbeConfig) -> str:
    return f"{cfg.model}__{cfg.method}" + (f"__r{cfg.rank}" if cfg.rank else "")


def is_current(path: Path, cfg: ProbeConfig, backend: str, *, compare: bool = False) -> bool:
    """True if ``path`` already holds this cell's answer (same config and backend; success, or an oom
    verdict with numbers under the same budget)."""
    if not path.exists():
        return False
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    mem = data.get("memory", {})
    if mem.get("backend") != backend or any(data["config"].get(k) != v for k, v in cfg.to_dict().items()):
        return False
    if data["config"].get("code") != code_fingerprint():
        return False
    if compare and backend == "cuda" and "simulated" not in mem:
        return False
    return data.get("status") == "success" or (data.get("status") == "oom" and "peak_bytes" in mem)


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    keep = ("backend", "peak_bytes", "peak_gib", "peak_phase", "breakdown", "extrapolation", "nf4_correction", "error")
    return {k: out[k] for k in keep if k in out}


def run_cell(cfg: ProbeConfig, backend: str, out_dir: Path, *, compare: bool = False) -> dict[str, Any]:
    """Probe one cell with ``backend`` (+ analytic, + simulate when comparing) and write its result.json."""
    from lorafa_repro.results import write_json_atomic

    result = run_probe(cfg, backend, extra_config={"table": "table4", "code": code_fingerprint()})
    if backend == "analytic":
        result["memory"]["analytic"] = _summary(result["memory"])
    for name, wanted in (("analytic", backend != "analytic"), ("simulated", compare and backend == "cuda")):
        if not wanted:
            continue
        try:
            result["memory"][name] = _summary(probe(cfg, "analytic" if name == "analytic" else "simulate"))
        except Exception as e:  # noqa: BLE001 - a secondary number must not lose the primary one
            result["memory"][name] = {"error": f"{type(e).__name__}: {e}"}
    write_json_atomic(out_dir / cell_name(cfg) / "result.json", result)
    return result


def run_table(cells: list[ProbeConfig], out_dir: Path, backend: str = "auto", *, force: bool = False,
              compare: bool = False) -> list[dict[str, Any]]:
    """Probe every cell not already done, printing one progress line per cell."""
    backend = resolve_backend(backend)
    results = []
    t_start = time.perf_counter()
    for i, cfg in enumerate(cells, 1):
        name = cell_name(cfg)
        path = out_dir / name / "result.json"
        head = f"[{i:2d}/{len(cells)}] {name:30s}"
        if not force and is_current(path, cfg, backend, compare=compare):
            print(f"{head} done already ({path})", flush=True)
            results.append(json.loads(path.read_text()))
            continue
        t0 = time.perf_counter()
        result = run_cell(cfg, backend, out_dir, compare=compare)
        mem = result["memory"]
        peak = f"{mem['peak_bytes'] / GIB:7.2f} GiB" if "peak_bytes" in mem else "      -    "
        ana = mem.get("analytic", {}).get("peak_bytes")
        extra = f" | analytic {ana / GIB:6.2f} GiB" if ana else ""
        sim = mem.get("simulated", {}).get("peak_bytes")
        extra += f" | simulated {sim / GIB:6.2f} GiB" if sim else ""
        print(f"{head} {result['status']:7s} {backend} {peak}{extra} | {time.perf_counter() - t0:5.1f}s"
              + (f"  ({result['error']})" if result["status"] != "success" else ""), flush=True)
        results.append(result)
    print(f"table4: {len(cells)} cells in {time.perf_counter() - t_start:.0f}s -> {out_dir}", flush=True)
    return results


def precision_study(out_dir: Path, *, force: bool = False) -> dict[str, Any]:
    """Simulated FT peaks of the paper's FT rows (LLaMA excluded: OOM either way) under fp32, mixed and
    bf16, next to the paper's numbers: the evidence for the table's precision choice."""
    from lorafa_repro.results import write_json_atomic

    path = out_dir / "precision_study.json"
    if path.exists() and not force:
        return json.loads(path.read_text())
    rows = []
    for cfg in table_cells(["roberta-base", "roberta-large", "t5-small", "t5-base", "t5-large"]):
        if cfg.method != "ft":
            continue
        for dtype in ("fp32", "mixed", "bf16"):
            c = replace(cfg, dtype=dtype)
            out = probe(c, "simulate")
            rows.append({"model": c.model, "dtype": dtype, "batch_size": c.batch_size,
                         "simulated_gib": round(out["peak_bytes"] / GIB, 3)})
            print(f"precision study: {c.model:14s} FT {dtype:5s} {out['peak_bytes'] / GIB:6.2f} GiB", flush=True)
    data = {"backend": "simulate", "rows": rows}
    write_json_atomic(path, data)
    return data


def find_renderer() -> Path | None:
    """``analysis/table4.py`` of this checkout (next to src/), or under the working directory."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        p = root / "analysis" / "table4.py"
        if p.exists():
            return p
    return None


def render(out_dir: Path, budget_gb: float | None = None) -> None:
    """Render table4.{md,csv,tex} with analysis/table4.py (which reads only the result files)."""
    path = find_renderer()
    if path is None:
        print("analysis/table4.py not found: run it from the repository root to render", flush=True)
        return
    spec = importlib.util.spec_from_file_location("analysis_table4", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    written = module.render(out_dir, budget_gb=budget_gb)
    for p in written.values():
        print(f"wrote {p}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.quiet import quiet_known_warnings

    quiet_known_warnings()
    p = argparse.ArgumentParser(prog="python -m lorafa_repro.memory.table4", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto", choices=("auto", "cuda", "simulate", "analytic"))
    p.add_argument("--out", type=Path, default=None,
                   help=f"default {DEFAULT_OUT} ({DEFAULT_OUT}_ckpt with --gradient-checkpointing)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="the table with activation recomputation per block (the paper's rows keep every activation)")
    p.add_argument("--budget-gb", type=float, default=40.0, help="device budget in GiB; above it a cell is OOM")
    p.add_argument("--compare", action="store_true", help="with a GPU: also simulate each cell, report both")
    p.add_argument("--force", action="store_true", help="recompute cells that are done")
    p.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(PAPER_CELLS))
    p.add_argument("--no-precision-study", action="store_true", help="skip the fp32/mixed/bf16 FT study")
    p.add_argument("--no-render", action="store_true")
    a = p.parse_args(argv)
    models = a.models.split(",") if a.models else None
    unknown = set(models or []) - set(PAPER_CELLS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; the table has {list(PAPER_CELLS)}")
    backend = resolve_backend(a.backend)
    if a.compare and backend != "cuda":
        print("--compare needs the cuda backend (a GPU): running without the comparison", flush=True)
    out = a.out or (Path(f"{DEFAULT_OUT}_ckpt") if a.gradient_checkpointing else DEFAULT_OUT)
    cells = table_cells(models, budget_gb=a.budget_gb, gradient_checkpointing=a.gradient_checkpointing)
    results = run_table(cells, out, backend, force=a.force, compare=a.compare)
    if not a.no_precision_study and backend != "analytic" and not a.gradient_checkpointing:
        precision_study(out, force=a.force)
    if not a.no_render:
        render(out, budget_gb=a.budget_gb)
    return 0 if all(r["status"] in ("success", "oom") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
