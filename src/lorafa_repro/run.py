"""One training run, callable from Python and tests: ``run(cfg, output_dir) -> result dict``.

A run directory holds ``result.json`` (status ``running`` from the start, so a killed run never reads as a
success), ``metrics.jsonl``, ``predictions/``, ``checkpoints/`` and ``run.lock`` (one run at a time, see
:mod:`lorafa_repro.rundir`). Rerunning into the same directory resumes from the newest good checkpoint of the
same config and code (a bad newer one is skipped with a warning), and with ``skip_if_done`` reuses a finished
result of the same config and code. A finished or resumable run of another config stops the run with the
differing keys (``on_config_change=error``, the default) or is moved to ``replaced/<UTC time>/``
(``on_config_change=rerun``); so is a successful run of the same config that is run again. Nothing is
deleted."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lorafa_repro import checkpoint as ckpt
from lorafa_repro import distributed as dist
from lorafa_repro import rundir
from lorafa_repro.cli import check_output_path
from lorafa_repro.errors import ConfigError
from lorafa_repro.loggers import RunIdentity, Trackers, identity_from_hydra, run_summary
from lorafa_repro.memory.peak import PeakMemory
from lorafa_repro.methods import apply_method, get_method, method_options
from lorafa_repro.models import build_model, build_tokenizer, count_parameters, enable_gradient_checkpointing
from lorafa_repro.results import (
    MetricsLog,
    config_diff,
    fingerprint_files,
    format_diff,
    new_result,
    try_read_result,
    write_json_atomic,
)
from lorafa_repro.local_models import check_reachable
from lorafa_repro.schema import TrainConfig, validate
from lorafa_repro.tasks import DataNotFoundError, build_task
from lorafa_repro.trainer import (
    Diverged,
    Interrupted,
    StopRequested,
    StopSignals,
    resolve_device,
    resolve_precision,
    train_loop,
)

logger = logging.getLogger(__name__)

#: Statuses a rerun with ``skip_if_done`` keeps (the same config and code would end the same way);
#: ``interrupted``, ``running`` (killed) and unreadable results run again.
FINAL_STATUSES = ("success", "failed", "oom", "diverged")
#: Keys that do not change what a run computes: a stored result differing only in these is the same run.
RUN_INVARIANT_KEYS = ("output_dir", "skip_if_done", "on_config_change", "trainer.progress", "trainer.num_workers",
                      "trainer.checkpoint_every", "trainer.keep_checkpoints", "task.data_dir",
                      "trainer.divergence_factor", "logger")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_fingerprint() -> str:
    """Hash of the code a training result depends on (methods, tasks, models, the loop, shipped configs)."""
    root = Path(__file__).resolve().parent
    files = [root / n for n in ("trainer.py", "models.py", "checkpoint.py", "distributed.py")]
    for sub, pattern in (("methods", "*.py"), ("tasks", "*.py"), ("model_configs", "*.json")):
        files += sorted((root / sub).glob(pattern))
    return fingerprint_files(files)


OOM_FIX = ("out of memory. Fix: lower trainer.batch_size (and raise trainer.grad_accum to keep the effective "
           "batch), set trainer.gradient_checkpointing=true, or use method=lora_fa / method=qlora")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_target_modules(cfg: DictConfig) -> None:
    """Resolve method.target_modules on a weightless (meta) copy of the model: a name that matches no
    layer fails here, before any data or weights are loaded."""
    from lorafa_repro.methods.targets import resolve_target_modules
    from lorafa_repro.models import build_config, model_from_config

    m = cfg.method
    if not get_method(m.name).uses_adapters or m.target_modules is None:
        return
    task_kind = "classification" if cfg.task.family == "glue" else "generation"
    try:
        config = build_config(cfg.model, num_labels=2 if task_kind == "classification" else None)
        with torch.device("meta"):
            model = model_from_config(config, arch=cfg.model.arch, task_kind=task_kind)
    except Exception:  # noqa: BLE001 - a model that cannot be built here fails later with its own message
        return
    try:
        resolve_target_modules(model, list(m.target_modules))
    except ValueError as e:
        raise ConfigError(f"method.{e}. Fix: method.target_modules=null (all block linears) or names "
                          f"from that list") from None


def prepare_task(cfg: DictConfig) -> tuple[Any, Any]:
    """The task and tokenizer with the data loaded, before any weights: missing or unusable data is one
    ConfigError (nothing written yet)."""
    task = build_task(cfg.task, seed=cfg.seed)
    if cfg.model.source == "pretrained":
        try:
            check_reachable(cfg.model.path)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    tokenizer = build_tokenizer(cfg.model)
    try:
        task.prepare(tokenizer)
    except DataNotFoundError as e:
        raise ConfigError(str(e)) from None
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        if cfg.task.data_dir is None:
            raise
        msg = str(e) if "Fix:" in str(e) else (f"cannot read the local data under {cfg.task.data_dir} "
                                               f"({one_line(e)}). Fix: check task.data_dir and its files' format")
        raise ConfigError(msg) from None
    return task, tokenizer


def _replace(out: Path, why: str) -> None:
    """Rank 0 moves the old run aside (a rank reading after it finds an empty folder: the same fresh start)."""
    if dist.launched_rank_and_world()[0] != 0:
        return
    moved = rundir.move_aside(out)
    if moved is not None:
        logger.warning("%s %s: moved it to %s and start afresh", out, why, moved)


def build_adapted_model(cfg: DictConfig, task: Any, device: torch.device, precision: str) -> torch.nn.Module:
    """The model a run trains: ``cfg.model`` built for ``task``, adapted with ``cfg.method``, on ``device``."""
    m = cfg.method
    model = build_model(cfg.model, task_kind=task.kind, num_labels=task.num_labels)
    # a 4-bit method quantizes on the CPU and moves the NF4 weights: the device never holds the fp32 ones
    model = model if get_method(m.name).quantize_4bit else model.to(device)
    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    target = m.target_modules if m.target_modules is not None else (list(cfg.model.default_target_modules) or None)
    return apply_method(model, m.name, rank=m.rank, alpha=m.alpha, dropout=m.dropout, target_modules=target,
                        compute_dtype=compute_dtype, **method_options(m)).to(device)


def _previous(out: Path, config: dict[str, Any], cfg: DictConfig) -> tuple[dict[str, Any] | None,
                                                                          dict[str, Any] | None]:
    """``(stored result to reuse, checkpoint to resume)`` for ``out``. A finished or resumable run of another
    config (or only unusable checkpoints) raises :class:`~lorafa_repro.rundir.RunDirError` naming it and the
    override that reruns (``on_config_change=error``) or is moved aside (``rerun``), as is a successful run of
    this config that is run again (without ``skip_if_done``) and a killed one of another config."""
    data, _ = try_read_result(out / "result.json")
    state, path, bad = ckpt.newest_good_checkpoint(out)
    diff = next(filter(None, (config_diff(s.get("config", {}), config, RUN_INVARIANT_KEYS)
                              for s in (data, state) if s is not None)), {})
    finished = data is not None and data["status"] in FINAL_STATUSES
    if diff:
        if (finished or state is not None) and cfg.on_config_change == "error":
            held = (f"a finished run ({data['status']})" if data is not None and finished
                    else f"a resumable run (checkpoint of step {state['step']})")
            raise rundir.refuse_other_config(out, held, format_diff(diff))
        _replace(out, "held a run of another config")
        return None, None
    if data is not None and finished:
        if cfg.skip_if_done:
            return data, None
        if data["status"] == "success":
            _replace(out, "held a finished run of this config, run again")
            return None, None
    if bad and state is None:
        if cfg.on_config_change == "error":
            raise rundir.RunDirError(f"{out} has no usable checkpoint ({bad[0][0].name}: {bad[0][1]}). "
                                     f"{rundir.RERUN_FIX.replace('(keeps', 'to start over from step 0 (keeps')}")
        _replace(out, "had no usable checkpoint")
        return None, None
    for p, why in bad:
        logger.warning("checkpoint %s is unusable (%s); resuming from %s", p, why, path.name if path else None)
    return None, state


def run(cfg: DictConfig | TrainConfig, output_dir: str | Path, identity: RunIdentity | None = None) -> dict[str, Any]:
    """Validate, build, train, evaluate; write ``result.json`` and ``metrics.jsonl`` to ``output_dir``, and the
    same rows to the trackers ``cfg.logger`` selects (``identity``: the run's name and sweep for them; default:
    what Hydra says about the current job, else the output directory).

    Raises :class:`~lorafa_repro.schema.ConfigError` before any model is loaded or anything is written when a
    value is wrong, the data cannot be found (local folder or Hub) or the folder is in use or holds a run that
    must not be replaced (:class:`~lorafa_repro.rundir.RunDirError`). A run that fails later still writes
    ``result.json`` with ``status`` ``failed`` / ``oom`` / ``diverged`` / ``interrupted`` and a one-line
    reason in ``error``, then re-raises. SIGTERM/SIGINT end it as ``interrupted`` (:class:`Interrupted`)
    wherever they arrive.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    validate(cfg)
    check_target_modules(cfg)
    check_output_path(output_dir, "output_dir", folder=True)
    out = Path(output_dir)
    config = {**OmegaConf.to_container(cfg, resolve=True), "code": code_fingerprint()}
    # under torchrun rank 0 holds the lock; one process: stop at once where that is safe (see StopSignals)
    rank, world = dist.launched_rank_and_world()
    with rundir.locked(out) if rank == 0 else contextlib.nullcontext(), StopSignals(immediate=world == 1) as stops:
        return _run_locked(cfg, out, config, stops, identity)


def _run_locked(cfg: DictConfig, out: Path, config: dict[str, Any], stops: StopSignals,
                identity: RunIdentity | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    with stops.deferred():  # moving an old run aside is not cut in half
        reuse, resume = _previous(out, config, cfg)
    if reuse is not None:
        return reuse
    try:
        with stops.immediate_here():
            device = resolve_device(cfg.trainer.device)
            dist.init_from_env(device.type)
            device = dist.local_device(device)
            is_main = dist.rank_and_world()[0] == 0
            if is_main:
                dist.clear_failure(out)
            dist.barrier()
            set_seed(cfg.seed)
            task, tokenizer = prepare_task(cfg)
    except StopRequested as e:  # nothing written: the folder is as it was (a checkpoint still resumes)
        raise Interrupted(e.signame, resume["step"] if resume else 0, None, during="the data loading") from None
    load_s = time.perf_counter() - t0

    memory = PeakMemory(device)
    memory.reset()
    result = new_result("train", config)
    result["status"] = "running"
    result["memory"]["precision"] = resolve_precision(cfg.trainer.precision, device)
    trackers = Trackers()  # opened in the try below: a tracker that cannot start fails the run like any error
    with stops.deferred():
        if is_main:
            write_json_atomic(out / "result.json", result)
            if resume is None:  # a fresh run: another run's evaluations must not sit beside this one's
                shutil.rmtree(out / "predictions", ignore_errors=True)
        log = MetricsLog(out / "metrics.jsonl" if is_main else None,
                         keep_until_step=resume["step"] if resume else None, sink=trackers)
    local_failure = False  # an exception of this rank alone (not one every rank agreed on)
    try:
        with stops.immediate_here():
            t_load = time.perf_counter()
            if is_main:
                trackers.open(cfg.logger, out, identity or identity_from_hydra(out), config,
                              resume_step=resume["step"] if resume else 0)
            m = cfg.method
            spec = get_method(m.name)
            model = build_adapted_model(cfg, task, device, result["memory"]["precision"])
            load_s += time.perf_counter() - t_load
        memory.end_loading()  # the loading peak apart from the training steps' peak
        result["params"] = count_parameters(model)
        result["method_description"] = spec.description
        outcome = train_loop(model, task, tokenizer, trainer=cfg.trainer, optim=cfg.optim, method=m,
                             device=device, memory=memory, log=log, seed=cfg.seed, out_dir=out,
                             resume=resume, checkpoint_extra={"config": config}, stops=stops)
        result["metrics"] = {"main_metric": task.main_metric, "final": outcome.final, "best": outcome.best,
                             "best_step": outcome.best_step, "first_loss": outcome.losses[0],
                             "last_loss": outcome.losses[-1]}
        result["timing"] = {"steps": outcome.steps, "train_s": outcome.train_s, "eval_s": outcome.eval_s,
                            "checkpoint_s": outcome.checkpoint_s, "tokens": outcome.tokens,
                            "tokens_per_s": outcome.tokens / max(outcome.train_s, 1e-9),
                            "resumed_from_step": outcome.resumed_from}
        result["status"] = "success"
    except torch.cuda.OutOfMemoryError as e:
        result["status"], result["error"] = "oom", f"{OOM_FIX} ({one_line(e)})"
        local_failure = True
        raise
    except Diverged as e:  # decided on the all-reduced loss: every rank stops at the same step
        result["status"], result["error"] = "diverged", one_line(e)
        result["metrics"]["diverged_step"] = e.step
        raise
    except StopRequested as e:  # while the model loads: the previous checkpoint, if any, still resumes
        stop = Interrupted(e.signame, resume["step"] if resume else 0, None, during="the loading before training")
        result["status"], result["error"] = "interrupted", one_line(stop)
        raise stop from None
    except (Interrupted, KeyboardInterrupt) as e:  # Interrupted: every rank agreed (and checkpointed)
        result["status"], result["error"] = "interrupted", one_line(e) if str(e) else "KeyboardInterrupt"
        if isinstance(e, Interrupted) and e.checkpoint is not None:
            result["checkpoint"] = str(e.checkpoint)
        local_failure = not isinstance(e, Interrupted)
        raise
    except BaseException as e:
        result["status"], result["error"] = "failed", one_line(e)
        local_failure = True
        raise
    finally:
        with stops.deferred():  # a second Ctrl-C does not cut the record short
            log.close()
            result["timing"]["load_s"] = load_s
            result["timing"]["total_s"] = time.perf_counter() - t0
            _record_ranks(result, memory, out, local_failure)
            trackers.finish(run_summary(result), result["status"])
    return result


def _record_ranks(result: dict[str, Any], memory: PeakMemory, out: Path, local_failure: bool) -> None:
    """Add every rank's peak memory (a collective) and write result.json on rank 0. After an exception of
    this rank alone (or a broken collective) no collective runs: the rank that failed first is named through
    the run directory (:func:`~lorafa_repro.distributed.share_failure`), rank 0 and that rank write
    result.json with its status and reason, and the group is torn down so that no rank waits for a timeout."""
    rank, world = dist.rank_and_world()
    ranks = [memory.summary()]
    if world > 1 and not local_failure:
        try:
            ranks = dist.gather_object(ranks[0])
        except RuntimeError as e:  # a peer died after this rank's last step
            result["status"], result["error"] = "failed", one_line(e)
            local_failure = True
    if world > 1 and local_failure:
        with _stop_signals_ignored():  # torchrun SIGTERMs the survivors once a rank exits: record first
            first = dist.share_failure(out, result["status"], result["error"])
            if first["rank"] != rank:  # this rank saw the broken collective; the cause is the other rank's
                result["error_on_rank_0"] = result["error"]
                result["status"], result["error"] = first["status"], f"rank {first['rank']} failed: {first['error']}"
            result["failed_rank"], result["world_size"] = first["rank"], world
            result["memory"].update(ranks[0])
            result["memory"]["per_rank"] = None  # not gathered: a rank failed, the group may be broken
            if rank == 0 or first["rank"] == rank:  # rank 0 may be gone already: the failing rank records too
                write_json_atomic(out / "result.json", result)
            dist.abort()
        return
    result["memory"].update(ranks[0])
    if len(ranks) > 1:
        result["memory"]["per_rank"] = ranks
        key = "peak_allocated_bytes" if "peak_allocated_bytes" in ranks[0] else "peak_rss_bytes"
        result["memory"][f"max_over_ranks_{key}"] = max(r[key] for r in ranks)
        result["world_size"] = len(ranks)
    if rank == 0:
        write_json_atomic(out / "result.json", result)


@contextlib.contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """SIGTERM/SIGINT are dropped meanwhile (torchrun SIGKILLs a worker that outlives its grace period)."""
    old = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
