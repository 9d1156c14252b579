"""The training loop: AdamW, linear warmup + decay, gradient accumulation, autocast, periodic evaluation,
one metrics.jsonl line per logged step."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from lorafa_repro.memory.peak import PeakMemory
from lorafa_repro.methods import build_optimizer
from lorafa_repro.results import MetricsLog
from lorafa_repro.tasks.base import Task


@dataclass
class LoopOutcome:
    steps: int
    train_s: float
    tokens: int
    final: dict[str, Any]
    best: dict[str, Any]
    best_step: int
    losses: list[float] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def total_steps(n_examples: int, trainer: Any) -> int:
    if trainer.max_steps > 0:
        return int(trainer.max_steps)
    per_epoch = math.ceil(n_examples / (trainer.batch_size * trainer.grad_accum))
    return max(1, math.ceil(trainer.epochs * per_epoch))


def _batches(loader: DataLoader):
    while True:  # epochs until the step budget is spent
        yield from loader


def train_loop(model: nn.Module, task: Task, tokenizer: Any, *, trainer: Any, optim: Any, method: Any,
               device: torch.device, memory: PeakMemory, log: MetricsLog, seed: int,
               out_dir: Path | None = None) -> LoopOutcome:
    """Train ``model`` on ``task``; with ``out_dir``, each evaluation's per-example predictions go to
    ``out_dir/predictions/step_<N>.jsonl`` (the final one is named in ``final["predictions_file"]``)."""
    train_data = task.train_dataset(tokenizer)
    if not train_data:
        raise ValueError("the training set is empty")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_data, batch_size=trainer.batch_size, shuffle=True, generator=generator,
                        collate_fn=task.collate_fn(tokenizer), num_workers=trainer.num_workers)
    steps = total_steps(len(train_data), trainer)
    precision = resolve_precision(trainer.precision, device)
    autocast = autocast_factory(precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    optimizer = build_optimizer(model, method.name, lr=optim.lr, weight_decay=optim.weight_decay,
                                betas=(optim.beta1, optim.beta2), eps=optim.eps, rank=method.rank,
                                alpha=method.alpha)
    warmup = int(optim.warmup_ratio * steps)
    if optim.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    params = [p for p in model.parameters() if p.requires_grad]

    def evaluate(step: int) -> dict[str, Any]:
        path = out_dir / "predictions" / f"step_{step:06d}.jsonl" if out_dir is not None else None
        # a task whose periodic evaluation is a subset (instruct: MMLU) evaluates fully at the end
        run_eval = getattr(task, "evaluate_final", task.evaluate) if step == steps else task.evaluate
        metrics = run_eval(model, tokenizer, batch_size=trainer.eval_batch_size, device=device,
                           autocast=autocast, predictions_path=path)
        if path is not None and path.exists():
            metrics["predictions_file"] = str(path.relative_to(out_dir))
        return metrics

    model.train()
    batches = _batches(loader)
    best: dict[str, float] = {}
    best_step = 0
    losses: list[float] = []
    tokens_total = 0
    t_start = time.perf_counter()
    t_log, tokens_since, loss_since, n_since = t_start, 0, 0.0, 0
    bar = tqdm(range(1, steps + 1), desc="train", disable=not trainer.progress, dynamic_ncols=True)
    final: dict[str, float] = {}
    for step in bar:
        step_loss = 0.0
        for _ in range(trainer.grad_accum):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast():
                loss = model(**batch).loss / trainer.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach().float().item()
            n_tok = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            tokens_since += n_tok
        if scaler:
            scaler.unscale_(optimizer)
        if optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        loss_since += step_loss
        n_since += 1
        bar.set_postfix(loss=f"{step_loss:.4f}")

        is_last = step == steps
        if step % trainer.log_every == 0 or is_last or step == 1:
            now = time.perf_counter()
            elapsed = now - t_log
            log.log({"step": step, "loss": loss_since / n_since, "lr": scheduler.get_last_lr()[0],
                     "step_time_s": elapsed / n_since, "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                     **memory.interval()})
            tokens_total += tokens_since
            t_log, tokens_since, loss_since, n_since = now, 0, 0.0, 0
        if (trainer.eval_every and step % trainer.eval_every == 0) or is_last:
            metrics = evaluate(step)
            log.log({"step": step, **{f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in metrics.items()}})
            if not best or metrics["score"] > best["score"]:
                best, best_step = dict(metrics), step
            if is_last:
                final = metrics
    bar.close()
    return LoopOutcome(steps=steps, train_s=time.perf_counter() - t_start, tokens=tokens_total, final=final,
                       best=best, best_step=best_step, losses=losses)
