"""Figure 2: convergence (training loss vs step) of FT, LoRA and LoRA-FA, RoBERTa-base on CoLA and SST-2.

    python -m lorafa_repro.train --config-dir sweeps --config-name glue_methods task=glue/cola,glue/sst2 \\
        task.data_dir=<glue_data>
    python analysis/fig2_convergence.py [--results results/raw/glue_methods] [--out results]
        [--model roberta-base] [--tasks cola,sst2]

Reads only run files: every result.json (kind train, status success) under --results and the
metrics.jsonl beside it. One panel per task, one curve per method: the logged training loss (each
point is the mean loss since the previous log line) averaged over seeds at the steps all of them
logged, with a band from the lowest to the highest seed at each step (min-max, not ±sd: with 3 seeds it shows
every run). Writes <out>/fig2_convergence.{pdf,png} and <out>/fig2_convergence.md with, per task and
method, the runs behind the curve, the first and final loss (final: mean ± sample sd over seeds), the mean loss
over the second half of training next to FT's, and the steps each run needed to reach --fraction (default 0.95)
of its own final dev score (from its periodic evaluations, `trainer.eval_every`; mean ± sd over seeds) - the
paper's claim (§4.1) is that LoRA-FA converges like LoRA and FT after the first few steps; it gives no numbers
for the figure.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from lorafa_repro.cli import ArgumentParser, check_renderer, print_written
from lorafa_repro.stats import mean_sd, steps_to_fraction

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ft", "lora", "lora_fa")
LABELS = {"ft": "FT", "lora": "LoRA", "lora_fa": "LoRA-FA"}
COLORS = {"ft": "tab:gray", "lora": "tab:blue", "lora_fa": "tab:red"}
TASK_TITLES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "qnli": "QNLI", "stsb": "STS-B",
               "mnli": "MNLI", "qqp": "QQP"}


def _curve(run_dir: Path, key: str) -> dict[int, float]:
    curve = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row:
            curve[int(row["step"])] = float(row[key])
    return curve


def loss_curve(run_dir: Path) -> dict[int, float]:
    """step -> logged training loss of one run (metrics.jsonl)."""
    return _curve(run_dir, "loss")


def score_curve(run_dir: Path) -> dict[int, float]:
    """step -> dev score (the task's main metric) of each evaluation of one run, the last one its final score."""
    return _curve(run_dir, "eval_score")


def _runs(results: Path, model: str, tasks: list[str]):
    """Successful training runs of ``model`` on ``tasks`` (a DataFrame, one row per run)."""
    from lorafa_repro.results import load_results

    df = load_results(results, kind="train", status="success")
    if df.empty:
        return df
    return df[(df["model_label"] == model) & df["config.task.name"].isin(tasks)]


Key = tuple[str, str, float]  # (task, method, learning rate): runs that differ only by seed share a curve


def final_scores(results: Path, model: str, tasks: list[str]) -> dict[Key, float]:
    """(task, method, lr) -> median over runs of the final dev score (the task's main metric), in percent."""
    df = _runs(results, model, tasks)
    if df.empty:
        return {}
    med = df.groupby(["config.task.name", "config.method.name", "config.optim.lr"])["metrics.final.score"].median()
    return {(t, m, float(lr)): 100 * float(v) for (t, m, lr), v in med.items()}


def load_curves(results: Path, model: str, tasks: list[str],
                reader: Callable[[Path], dict[int, float]] = loss_curve) -> dict[Key, list[dict[int, float]]]:
    """(task, method, lr) -> one curve per successful run of ``model`` (loss; ``reader=score_curve``: dev score)."""
    df = _runs(results, model, tasks)
    out: dict[Key, list[dict[int, float]]] = {}
    if df.empty:
        return out
    for _, row in df.sort_values("path").iterrows():
        curve = reader(Path(row["path"]))
        if curve:
            key = (row["config.task.name"], row["config.method.name"], float(row["config.optim.lr"]))
            out.setdefault(key, []).append(curve)
    return out


def keys_of(curves: dict[Key, Any], task: str, method: str) -> list[Key]:
    """The (task, method, lr) keys present, by learning rate."""
    return sorted(k for k in curves if k[:2] == (task, method))


def mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    """Mean over runs at the steps every run logged."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {s: sum(c[s] for c in curves) / len(curves) for s in steps}


def band(curves: list[dict[int, float]]) -> dict[int, tuple[float, float]]:
    """step -> (lowest, highest) value over runs, at the steps every run logged."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {s: (min(c[s] for c in curves), max(c[s] for c in curves)) for s in steps}


def steps_to_final(score_curves: list[dict[int, float]], fraction: float) -> list[int | None]:
    """Per run: the first evaluated step whose dev score reaches ``fraction`` of that run's final score."""
    return [steps_to_fraction(c, c[max(c)], fraction) for c in score_curves if c]


def second_half_mean(curve: dict[int, float]) -> float | None:
    """Mean logged loss over the steps in the second half of training."""
    if not curve:
        return None
    last = max(curve)
    tail = [v for s, v in curve.items() if s > last / 2]
    return sum(tail) / len(tail) if tail else None


def summarize(curves: dict[Key, list[dict[int, float]]], tasks: list[str],
              scores: dict[Key, float] | None = None,
              score_curves: dict[Key, list[dict[int, float]]] | None = None,
              fraction: float = 0.95) -> list[dict[str, Any]]:
    """One row per (task, method, lr); ``vs_ft`` against the FT learning rate with the lowest second-half loss;
    ``final_loss_sd`` the sample sd over runs of the last logged loss; ``steps_to`` (mean, sd) over runs of the
    steps to ``fraction`` of the final dev score, with ``steps_n`` runs that have periodic evaluations."""
    scores, score_curves = scores or {}, score_curves or {}
    rows = []
    for task in tasks:
        ft_halves = [second_half_mean(mean_curve(curves[k])) for k in keys_of(curves, task, "ft")]
        ft = min((h for h in ft_halves if h is not None), default=None)
        for method in METHODS:
            keys = keys_of(curves, task, method)
            if not keys:
                rows.append({"task": task, "method": method, "lr": None, "runs": 0})
            for key in keys:
                mean = mean_curve(curves[key])
                half = second_half_mean(mean)
                evaluated = [c for c in score_curves.get(key, []) if len(c) > 1]  # a final evaluation alone: no curve
                reached = [s for s in steps_to_final(evaluated, fraction) if s is not None]
                rows.append({"task": task, "method": method, "lr": key[2], "runs": len(curves[key]),
                             "steps": max(mean), "first_loss": mean[min(mean)], "final_loss": mean[max(mean)],
                             "final_loss_sd": mean_sd([c[max(mean)] for c in curves[key]])[1],
                             "second_half_loss": half, "vs_ft": half / ft if ft and half is not None else None,
                             "dev_score": scores.get(key),
                             "steps_to": mean_sd(reached) if evaluated else None, "steps_n": len(evaluated)})
    return rows


def plot(curves: dict[Key, list[dict[int, float]]], tasks: list[str], model: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in METHODS:
            for i, key in enumerate(keys_of(curves, task, method)):
                mean = mean_curve(curves[key])
                n = len(curves[key])
                ax.plot(list(mean), list(mean.values()), color=COLORS[method], lw=1.4, ls=styles[i % len(styles)],
                        label=f"{LABELS[method]}, lr {key[2]:g} ({n} run{'s' if n > 1 else ''})")
                if n > 1:
                    spread = band(curves[key])
                    ax.fill_between(list(spread), [lo for lo, _ in spread.values()],
                                    [hi for _, hi in spread.values()], color=COLORS[method], alpha=0.15, lw=0)
        ax.set_title(f"{model}, {TASK_TITLES.get(task, task)}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.suptitle("Figure 2: convergence of FT, LoRA and LoRA-FA (line: mean over seeds; band: min-max)",
                 fontsize=10)
    fig.tight_layout()
    paths = [out / "fig2_convergence.pdf", out / "fig2_convergence.png"]
    from lorafa_repro.results import save_figure

    for p in paths:
        save_figure(fig, p, dpi=150)
    plt.close(fig)
    return paths


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _steps_to(r: dict[str, Any]) -> str:
    if r["steps_to"] is None:
        return "- (no periodic evaluation)"
    mean, sd = r["steps_to"]
    if math.isnan(mean):
        return f"not reached ({r['steps_n']} runs)"
    return f"{mean:.0f}" + ("" if math.isnan(sd) else f" ± {sd:.0f}")


def to_markdown(rows: list[dict[str, Any]], results: Path, model: str, fraction: float = 0.95) -> str:
    pct = f"{100 * fraction:g}%"
    lines = ["# Figure 2: convergence (training loss vs step)", "",
             f"Runs: result.json + metrics.jsonl under `{results}`, model {model}; curves averaged over seeds.", "",
             "| Task | Method | lr | Runs | Steps | First loss | Final loss | Mean loss, 2nd half | vs FT "
             f"| Final dev score (%) | Final loss sd | Steps to {pct} of final score |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["runs"]:
            lines.append(f"| {r['task']} | {LABELS[r['method']]} | - | 0 | - | - | - | - | - | - | - | - |")
            continue
        vs = "-" if r["vs_ft"] is None else f"{r['vs_ft']:.3f}"
        dev = "-" if r["dev_score"] is None else f"{r['dev_score']:.1f}"
        sd = "-" if math.isnan(r["final_loss_sd"]) else f"{r['final_loss_sd']:.4f}"
        lines.append(f"| {r['task']} | {LABELS[r['method']]} | {r['lr']:g} | {r['runs']} | {r['steps']} | "
                     f"{_f(r['first_loss'])} | {_f(r['final_loss'])} | {_f(r['second_half_loss'])} | {vs} | {dev} | "
                     f"{sd} | {_steps_to(r)} |")
    lines += ["", "Paper (§4.1, Figure 2; 4x A100, per-device batch 320, sequence 128): LoRA-FA converges as fast "
              "as LoRA and FT after the first few steps. It gives no numbers for the curves. Runs that differ only "
              "by seed share a row and a curve; `vs FT` is the mean loss over the second half of training divided "
              "by FT's (its learning rate with the lowest such loss; 1 = the same). Final dev score: the task's "
              "main metric (MCC for CoLA, Pearson for STS-B, accuracy otherwise) at the end of training, median over "
              "runs. Final loss sd: sample sd over seeds of the last logged loss. Steps to "
              f"{pct}: per run, the first periodic evaluation whose dev score reaches {pct} of that run's final "
              "score (resolution: `trainer.eval_every`), mean ± sample sd over the runs."]
    return "\n".join(lines) + "\n"


def render(results: Path, out: Path, model: str = "roberta-base",
           tasks: tuple[str, ...] = ("cola", "sst2"), fraction: float = 0.95) -> list[Path]:
    curves = load_curves(results, model, list(tasks))
    out.mkdir(parents=True, exist_ok=True)
    paths = plot(curves, list(tasks), model, out)
    md = out / "fig2_convergence.md"
    rows = summarize(curves, list(tasks), final_scores(results, model, list(tasks)),
                     load_curves(results, model, list(tasks), reader=score_curve), fraction)
    md.write_text(to_markdown(rows, results, model, fraction))
    return paths + [md]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="analysis/fig2_convergence.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results" / "raw" / "glue_methods")
    p.add_argument("--out", type=Path, default=REPO / "results")
    p.add_argument("--model", default="roberta-base",
                   help='model name of pretrained runs; "<name> (random init)" for shipped architectures')
    p.add_argument("--tasks", default="cola,sst2")
    p.add_argument("--fraction", type=float, default=0.95, help="steps to this fraction of the final dev score")
    a = p.parse_args(argv)
    tasks = tuple(a.tasks.split(","))
    check_renderer(p.prog, a.out, bool(load_curves(a.results, a.model, list(tasks))),
                   f"no successful {a.model} runs on {', '.join(tasks)} under {a.results}. Fix: run the sweep "
                   "first, e.g. python -m lorafa_repro.train --config-dir sweeps --config-name glue_methods "
                   "task=glue/cola,glue/sst2 task.data_dir=<glue_data>")
    print_written(*render(a.results, a.out, a.model, tasks, a.fraction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
