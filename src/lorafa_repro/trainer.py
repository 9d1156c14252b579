"""The training loop: AdamW, linear warmup + decay, gradient accumulation, autocast, periodic evaluation,
one metrics.jsonl line per logged step; checkpoints every ``trainer.checkpoint_every`` steps, at the end and
on SIGTERM/SIGINT, resumable bit for bit; a NaN/Inf loss stops the run at once (:class:`Diverged`).

Under ``torchrun`` (``torch.distributed`` initialised, see :mod:`lorafa_repro.distributed`) the model is
wrapped in DDP; each global batch of ``batch_size * world_size`` examples is split between the ranks, so a
run on N ranks follows the data order (and, up to reduction order, the loss curve) of one process with
``batch_size * N``."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from lorafa_repro import checkpoint as ckpt
from lorafa_repro import distributed as dist
from lorafa_repro.faults import FaultInjector
from lorafa_repro.memory.peak import PeakMemory
from lorafa_repro.methods import build_optimizer
from lorafa_repro.results import MetricsLog
from lorafa_repro.tasks.base import Task


class Diverged(RuntimeError):
    """The loss became NaN or Inf at ``step``; training stopped there."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss is {loss} at step {step}. Fix: lower optim.lr (or raise optim.warmup_ratio)")
        self.step = step


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of ``step`` was written (``checkpoint`` is its path or None)."""

    def __init__(self, signame: str, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (no run directory)"
        super().__init__(f"{signame} after step {step}; {where}. Fix: rerun the same command to resume")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class LoopOutcome:
    steps: int
    train_s: float
    tokens: int
    final: dict[str, Any]
    best: dict[str, Any]
    best_step: int
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


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


def batch_order(n: int, batch_size: int, seed: int, *, start: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[list[int]]:
    """Example indices of this rank's batches, from global batch ``start`` on (resuming replays the
    permutations, so the data order is a function of the seed and the batch index alone).

    With one process this is exactly ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    (each epoch's iterator draws a base seed, its sampler one permutation and one more it discards). With ``world`` ranks each
    global batch of ``batch_size * world`` examples is cut into equal rank slices; an epoch's last, partial
    global batch is dropped so the ranks stay in step."""
    g = torch.Generator().manual_seed(seed)
    global_bs = batch_size * world
    index = 0
    while True:  # per epoch, as DataLoader draws: its iterator's base seed, then RandomSampler's permutation
        torch.empty((), dtype=torch.int64).random_(generator=g)  # and one more permutation it drops
        perm = torch.randperm(n, generator=g).tolist()
        torch.randperm(n, generator=g)
        stop = n if world == 1 else n - n % global_bs
        if stop == 0:
            raise ValueError(f"{n} training examples cannot fill one global batch of {global_bs}")
        for i in range(0, stop, global_bs):
            if index >= start:
                chunk = perm[i : i + global_bs]
                yield chunk[rank * batch_size : (rank + 1) * batch_size]
            index += 1


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[list[str]]:
    """While active, SIGTERM/SIGINT only set a flag (the loop checkpoints and stops after the step)."""
    caught: list[str] = []
    handlers = {}

    def handler(signum: int, frame: Any) -> None:
        caught.append(signal.Signals(signum).name)

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield caught
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def train_loop(model: nn.Module, task: Task, tokenizer: Any, *, trainer: Any, optim: Any, method: Any,
               device: torch.device, memory: PeakMemory, log: MetricsLog, seed: int,
               out_dir: Path | None = None, resume: dict[str, Any] | None = None,
               checkpoint_extra: dict[str, Any] | None = None) -> LoopOutcome:
    """Train ``model`` on ``task``; with ``out_dir`` (the same on every rank; rank 0 writes), each
    evaluation's per-example predictions go to ``out_dir/predictions/step_<N>.jsonl`` (the final one is named
    in ``final["predictions_file"]``) and checkpoints to ``out_dir/checkpoints/`` (``checkpoint_extra``, e.g.
    the config, is stored in each).
    ``resume`` is a loaded checkpoint to continue from."""
    train_data = task.train_dataset(tokenizer)
    if not train_data:
        raise ValueError("the training set is empty")
    rank, world = dist.rank_and_world()
    collate = task.collate_fn(tokenizer)
    steps = total_steps(len(train_data), trainer)
    precision = resolve_precision(trainer.precision, device)
    autocast = autocast_factory(precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    # wrapped before the optimizer is built: FSDP replaces the parameters by sharded ones
    train_model = dist.wrap(model, device, getattr(trainer, "parallel", "ddp"))
    optimizer = build_optimizer(model, method.name, lr=optim.lr, weight_decay=optim.weight_decay,
                                betas=(optim.beta1, optim.beta2), eps=optim.eps, rank=method.rank,
                                alpha=method.alpha)
    warmup = int(optim.warmup_ratio * steps)
    if optim.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    params = [p for p in model.parameters() if p.requires_grad]
    inject = FaultInjector(getattr(trainer, "fault", None), out_dir, rank)
    is_main = rank == 0

    def evaluate(step: int) -> dict[str, Any]:
        path = out_dir / "predictions" / f"step_{step:06d}.jsonl" if out_dir is not None and is_main else None
        # a task whose periodic evaluation is a subset (instruct: MMLU) evaluates fully at the end
        run_eval = getattr(task, "evaluate_final", task.evaluate) if step == steps else task.evaluate
        metrics = run_eval(model, tokenizer, batch_size=trainer.eval_batch_size, device=device,
                           autocast=autocast, predictions_path=path)
        if path is not None and path.exists():
            metrics["predictions_file"] = str(path.relative_to(out_dir))
        return metrics

    best: dict[str, Any] = {}
    best_step, start, tokens_total, train_s = 0, 0, 0, 0.0
    losses: list[float] = []
    if resume is not None:
        ckpt.load_trainable_state(model, resume["model"])
        ckpt.load_optimizer_state(model, optimizer, resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        loop = resume["loop"]
        start, best, best_step = resume["step"], loop["best"], loop["best_step"]
        losses, tokens_total, train_s = list(loop["losses"]), loop["tokens"], loop["train_s"]
    order = batch_order(len(train_data), trainer.batch_size, seed, start=start * trainer.grad_accum,
                        rank=rank, world=world)
    # own generator: the loader's base-seed draw must not touch the global RNG (dropout masks)
    batches = iter(DataLoader(train_data, batch_sampler=order, collate_fn=collate,  # type: ignore[arg-type]
                              num_workers=trainer.num_workers, generator=torch.Generator()))
    if resume is not None:  # after the loader's iterator took its base seed from the global RNG
        ckpt.set_rng_state(resume["rng"][rank] if isinstance(resume["rng"], list) else resume["rng"])

    def save(step: int) -> Path | None:
        """Every rank calls this (gathering RNG states, and FSDP shards, is collective); rank 0 writes."""
        if out_dir is None:
            return None
        rngs = dist.gather_object(ckpt.rng_state())
        sharded = ckpt.is_sharded(model)
        if not (is_main or sharded):
            return None
        weights, optimizer_state = ckpt.trainable_state(model), ckpt.optimizer_state(model, optimizer)
        if not is_main:
            return None
        state = {"step": step, "model": weights, "optimizer": optimizer_state,
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "rng": rngs if world > 1 else rngs[0], "world_size": world,
                 "loop": {"best": best, "best_step": best_step, "losses": losses, "tokens": tokens_total,
                          "train_s": train_s + time.perf_counter() - t_start},
                 **(checkpoint_extra or {})}
        return ckpt.save_checkpoint(out_dir, state, keep=trainer.keep_checkpoints)

    model.train()
    t_start = time.perf_counter()
    t_log, tokens_since, loss_since, n_since = t_start, 0, 0.0, 0
    bar = tqdm(range(start + 1, steps + 1), desc="train", disable=not trainer.progress or not is_main,
               dynamic_ncols=True, initial=start, total=steps)
    final: dict[str, Any] = {}
    # plain ints read once: an OmegaConf lookup per use costs more than the tiny models' step bookkeeping
    grad_accum, log_every, eval_every = int(trainer.grad_accum), int(trainer.log_every), int(trainer.eval_every)
    every, max_grad_norm = int(trainer.checkpoint_every), optim.max_grad_norm
    with catch_stop_signals() as caught:
        for step in bar:
            step_loss = torch.zeros((), device=device)
            for _ in range(grad_accum):
                batch = {k: v.to(device) for k, v in next(batches).items()}
                with autocast():
                    loss = inject(step, train_model(**batch).loss) / grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach().float()
                n_tok = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                tokens_since += n_tok
            step_value = dist.mean(step_loss).item()
            if not math.isfinite(step_value):
                raise Diverged(step, step_value)
            if scaler:
                scaler.unscale_(optimizer)
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_value)
            loss_since += step_value
            n_since += 1
            bar.set_postfix(loss=f"{step_value:.4f}")

            is_last = step == steps
            if step % log_every == 0 or is_last or step == 1:
                now = time.perf_counter()
                elapsed = now - t_log
                log.log({"step": step, "loss": loss_since / n_since, "lr": scheduler.get_last_lr()[0],
                         "step_time_s": elapsed / n_since, "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                         **memory.interval()})
                tokens_total += tokens_since
                t_log, tokens_since, loss_since, n_since = now, 0, 0.0, 0
            if (eval_every and step % eval_every == 0) or is_last:
                metrics = evaluate(step)
                log.log({"step": step, **{f"eval_{k}" if not k.startswith("eval_") else k: v
                                          for k, v in metrics.items()}})
                if not best or metrics["score"] > best["score"]:
                    best, best_step = dict(metrics), step
                if is_last:
                    final = metrics
            caught_now = dist.any_flag(bool(caught))
            if caught_now or (every > 0 and (step % every == 0 or is_last)):
                path = save(step)
                if caught_now and not is_last:
                    raise Interrupted(caught[0] if caught else "SIGTERM", step, path)
    bar.close()
    return LoopOutcome(steps=steps, train_s=train_s + time.perf_counter() - t_start, tokens=tokens_total,
                       final=final, best=best, best_step=best_step, losses=losses, resumed_from=start)
