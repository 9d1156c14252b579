"""The training loop: AdamW, linear warmup + decay, gradient accumulation, autocast, periodic evaluation,
one metrics.jsonl line per logged step; checkpoints every ``trainer.checkpoint_every`` steps, at the end and
on SIGTERM/SIGINT, resumable bit for bit; a NaN/Inf loss, or one that rises above ``trainer.divergence_factor``
times its start, stops the run at once (:class:`Diverged`).

Signals (:class:`StopSignals`): a SIGTERM/SIGINT during a training step or a checkpoint is acted on after it
(checkpoint, then :class:`Interrupted`); one during an evaluation cuts it short (one process: at once; several:
after it, all ranks agreeing), and the checkpoint records the evaluation as pending, so a resumed run redoes it.

Under ``torchrun`` (``torch.distributed`` initialised, see :mod:`lorafa_repro.distributed`) the model is
wrapped in DDP; each global batch of ``batch_size * world_size`` examples is split between the ranks, so a
run on N ranks follows the data order (and, up to reduction order, the loss curve) of one process with
``batch_size * N``."""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
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


#: Divergence is judged on the median of the last this many step losses (one spike does not stop a run).
DIVERGENCE_WINDOW = 10


class Diverged(RuntimeError):
    """The loss became NaN or Inf, or rose above the divergence factor times its start, at ``step``;
    training stopped there (no optimizer step was taken with that loss)."""

    def __init__(self, step: int, loss: float, why: str = "") -> None:
        fix = "Fix: lower optim.lr (or raise optim.warmup_ratio)"
        if why:
            fix += "; trainer.divergence_factor=null turns this check off"
        super().__init__(f"loss is {loss:.4g} at step {step}{why}. {fix}")
        self.step = step


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of ``step`` was written (``checkpoint`` is its path or None).
    ``during``: what the signal cut short (default: it came after step ``step``)."""

    def __init__(self, signame: str, step: int, checkpoint: Path | None, during: str | None = None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint"
        when = f"during {during}" if during else f"after step {step}"
        super().__init__(f"{signame} {when}; {where}. Fix: rerun the same command to resume")
        self.step, self.checkpoint = step, checkpoint


class StopRequested(BaseException):
    """Raised by :class:`StopSignals` where a stop is acted on at once (BaseException: no ``except Exception``
    in a task swallows it)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


@dataclass
class LoopOutcome:
    steps: int
    train_s: float
    eval_s: float
    checkpoint_s: float
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


class StopSignals:
    """While entered (main thread only; elsewhere it changes nothing), SIGTERM/SIGINT are recorded in
    ``caught``. Inside :meth:`deferred` that is all; elsewhere (``immediate``: one process) the handler also
    raises :class:`StopRequested` at once. Nested: :meth:`immediate_here` undoes one :meth:`deferred`."""

    def __init__(self, immediate: bool = True) -> None:
        self.caught: list[str] = []
        self.allow_immediate = immediate
        self._depth = 0 if immediate else 1
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.caught.append(signal.Signals(signum).name)
        if self._depth == 0:
            raise StopRequested(self.caught[-1])

    def __enter__(self) -> "StopSignals":
        with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def immediate_here(self) -> Iterator[None]:
        """A signal caught before or during the block raises StopRequested (when immediate stops are allowed)."""
        if not self.allow_immediate:
            yield
            return
        if self.caught:
            raise StopRequested(self.caught[0])
        depth, self._depth = self._depth, 0
        try:
            yield
        finally:
            self._depth = depth


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers: Ctrl-C reaches the whole process group; the main process decides when to stop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def check_divergence(first: float, recent: list[float], step: int, factor: float | None) -> None:
    """Raise :class:`Diverged` when the median of ``recent`` (the last :data:`DIVERGENCE_WINDOW` step losses,
    at least 3) exceeds ``factor`` x ``first``, the step-1 loss (taken before any update); ``factor`` None: never."""
    if factor is None or len(recent) < 3:
        return
    median = statistics.median(recent)
    if median > factor * first:
        raise Diverged(step, recent[-1], f" (median of the last {len(recent)} steps {median:.4g} > "
                                         f"trainer.divergence_factor={factor:g} x the step-1 loss {first:.4g})")


def train_loop(model: nn.Module, task: Task, tokenizer: Any, *, trainer: Any, optim: Any, method: Any,
               device: torch.device, memory: PeakMemory, log: MetricsLog, seed: int,
               out_dir: Path | None = None, resume: dict[str, Any] | None = None,
               checkpoint_extra: dict[str, Any] | None = None, stops: StopSignals | None = None) -> LoopOutcome:
    """Train ``model`` on ``task``; with ``out_dir`` (the same on every rank; rank 0 writes), each
    evaluation's per-example predictions go to ``out_dir/predictions/step_<N>.jsonl`` (the final one is named
    in ``final["predictions_file"]``) and checkpoints to ``out_dir/checkpoints/`` (``checkpoint_extra``, e.g.
    the config, is stored in each).
    ``resume`` is a loaded checkpoint to continue from; ``stops`` the caller's installed :class:`StopSignals`
    (None: the loop installs its own)."""
    train_data = task.train_dataset(tokenizer)
    if not train_data:  # the task's loader refuses an empty file: name what was read, should it ever happen
        cfg = getattr(task, "cfg", None)
        raise ValueError(f"the training set of task {getattr(cfg, 'name', type(task).__name__)} is empty "
                         f"(data_dir={getattr(cfg, 'data_dir', None)}, "
                         f"max_train_samples={getattr(cfg, 'max_train_samples', None)}). "
                         "Fix: check the training file, or task.max_train_samples")
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
    divergence_factor = getattr(trainer, "divergence_factor", None)
    # plain ints read once: an OmegaConf lookup per use costs more than the tiny models' step bookkeeping
    grad_accum, log_every, eval_every = int(trainer.grad_accum), int(trainer.log_every), int(trainer.eval_every)
    every, max_grad_norm = int(trainer.checkpoint_every), optim.max_grad_norm
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
    final: dict[str, Any] = {}
    best_step, start, tokens_total, eval_pending = 0, 0, 0, False
    # seconds in optimizer steps (data, forward, backward, update), evaluations and checkpoint writes
    timing = {"train_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
    losses: list[float] = []
    if resume is not None:
        ckpt.load_trainable_state(model, resume["model"])
        ckpt.load_optimizer_state(model, optimizer, resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        loop = resume["loop"]
        start, best, best_step = resume["step"], loop["best"], loop["best_step"]
        losses, tokens_total, final = list(loop["losses"]), loop["tokens"], loop["final"]
        timing.update(loop["timing"])
        eval_pending = loop["eval_pending"]
    order = batch_order(len(train_data), trainer.batch_size, seed, start=start * trainer.grad_accum,
                        rank=rank, world=world)
    # own generator: the loader's base-seed draw must not touch the global RNG (dropout masks)
    batches = iter(DataLoader(train_data, batch_sampler=order, collate_fn=collate,  # type: ignore[arg-type]
                              num_workers=trainer.num_workers, generator=torch.Generator(),
                              worker_init_fn=_ignore_stop_signals))
    if resume is not None:  # after the loader's iterator took its base seed from the global RNG
        ckpt.set_rng_state(resume["rng"][rank] if isinstance(resume["rng"], list) else resume["rng"])

    def save(step: int, pending: bool = False) -> Path | None:
        """Every rank calls this (gathering RNG states, and FSDP shards, is collective); rank 0 writes.
        ``pending``: the evaluation of ``step`` was cut short (a resumed run redoes it first)."""
        if out_dir is None:
            return None
        t = time.perf_counter()
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
                          "final": final, "eval_pending": pending, "timing": dict(timing)},
                 **(checkpoint_extra or {})}
        path = ckpt.save_checkpoint(out_dir, state, keep=trainer.keep_checkpoints)
        timing["checkpoint_s"] += time.perf_counter() - t
        return path

    def run_eval(step: int) -> None:
        nonlocal best, best_step, final
        t = time.perf_counter()
        try:
            with stops.immediate_here():
                metrics = evaluate(step)
        except StopRequested as e:  # one process: the evaluation is cut short and redone on resume
            timing["eval_s"] += time.perf_counter() - t
            raise Interrupted(e.signame, step, save(step, pending=True),
                              during=f"the evaluation of step {step}") from None
        timing["eval_s"] += time.perf_counter() - t
        log.log({"step": step, **{f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in metrics.items()}})
        if not best or metrics["score"] > best["score"]:
            best, best_step = dict(metrics), step
        if step == steps:
            final = metrics

    model.train()
    tokens_since, loss_since, n_since, train_since = 0, 0.0, 0, 0.0
    bar = tqdm(range(start + 1, steps + 1), desc="train", disable=not trainer.progress or not is_main,
               dynamic_ncols=True, initial=start, total=steps)
    own = stops is None
    stops = stops if stops is not None else StopSignals(immediate=world == 1)
    with stops if own else contextlib.nullcontext(), stops.deferred():
        if eval_pending:
            run_eval(start)
        for step in bar:
            t_step = time.perf_counter()
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
            check_divergence(losses[0] if losses else step_value,
                             losses[-(DIVERGENCE_WINDOW - 1):] + [step_value], step, divergence_factor)
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
            elapsed = time.perf_counter() - t_step
            timing["train_s"] += elapsed
            train_since += elapsed
            losses.append(step_value)
            loss_since += step_value
            n_since += 1
            bar.set_postfix(loss=f"{step_value:.4f}")

            is_last = step == steps
            if step % log_every == 0 or is_last or step == 1:
                log.log({"step": step, "loss": loss_since / n_since, "lr": scheduler.get_last_lr()[0],
                         "step_time_s": train_since / n_since, "tokens_per_s": tokens_since / max(train_since, 1e-9),
                         **memory.interval()})
                tokens_total += tokens_since
                tokens_since, loss_since, n_since, train_since = 0, 0.0, 0, 0.0
            if (eval_every and step % eval_every == 0) or is_last:
                run_eval(step)
            stop = dist.any_flag(bool(stops.caught))
            path = None
            if stop or (every > 0 and (step % every == 0 or is_last)):
                path = save(step)
                stop = stop or dist.any_flag(bool(stops.caught))  # a signal during the checkpoint
            if stop:
                raise Interrupted(stops.caught[0] if stops.caught else "SIGTERM", step, path)
    bar.close()
    return LoopOutcome(steps=steps, train_s=timing["train_s"], eval_s=timing["eval_s"],
                       checkpoint_s=timing["checkpoint_s"], tokens=tokens_total, final=final, best=best,
                       best_step=best_step, losses=losses, resumed_from=start)
