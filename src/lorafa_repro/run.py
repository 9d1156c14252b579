"""One training run, callable from Python and tests: ``run(cfg, output_dir) -> result dict``."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lorafa_repro.memory.peak import PeakMemory
from lorafa_repro.methods import apply_method, get_method, method_options
from lorafa_repro.models import build_model, build_tokenizer, count_parameters, enable_gradient_checkpointing
from lorafa_repro.results import MetricsLog, is_done, new_result, read_result, write_json_atomic
from lorafa_repro.schema import ConfigError, TrainConfig, validate
from lorafa_repro.tasks import DataNotFoundError, build_task
from lorafa_repro.trainer import resolve_device, resolve_precision, train_loop


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


OOM_FIX = ("out of memory. Fix: lower trainer.batch_size (and raise trainer.grad_accum to keep the effective "
           "batch), set trainer.gradient_checkpointing=true, or use method=lora_fa / method=qlora")


def run(cfg: DictConfig | TrainConfig, output_dir: str | Path) -> dict[str, Any]:
    """Validate, build, train, evaluate; write ``result.json`` and ``metrics.jsonl`` to ``output_dir``.

    Raises :class:`~lorafa_repro.schema.ConfigError` before any model is loaded or anything is written when a
    value is wrong or the data cannot be found (local folder or Hub). A run that fails later still writes
    ``result.json`` with ``status`` ``failed``/``oom`` and the error, then re-raises.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    validate(cfg)
    out = Path(output_dir)
    if cfg.skip_if_done and is_done(out):
        return read_result(out / "result.json")

    set_seed(cfg.seed)
    task = build_task(cfg.task, seed=cfg.seed)
    tokenizer = build_tokenizer(cfg.model)
    try:  # data before weights: a missing dataset fails fast, and nothing is written
        task.prepare(tokenizer)
    except DataNotFoundError as e:
        raise ConfigError(str(e)) from None

    device = resolve_device(cfg.trainer.device)
    memory = PeakMemory(device)
    memory.reset()
    result = new_result("train", OmegaConf.to_container(cfg, resolve=True))
    result["memory"]["precision"] = resolve_precision(cfg.trainer.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out / "metrics.jsonl")
    t0 = time.perf_counter()
    try:
        model = build_model(cfg.model, task_kind=task.kind, num_labels=task.num_labels).to(device)
        if cfg.trainer.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        m = cfg.method
        spec = get_method(m.name)
        precision = result["memory"]["precision"]
        compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        target = m.target_modules if m.target_modules is not None else (list(cfg.model.default_target_modules) or None)
        model = apply_method(model, m.name, rank=m.rank, alpha=m.alpha, dropout=m.dropout, target_modules=target,
                             compute_dtype=compute_dtype, **method_options(m))
        memory.mark("weights_loaded")
        result["params"] = count_parameters(model)
        result["method_description"] = spec.description
        outcome = train_loop(model, task, tokenizer, trainer=cfg.trainer, optim=cfg.optim, method=m,
                             device=device, memory=memory, log=log, seed=cfg.seed, out_dir=out)
        result["metrics"] = {"main_metric": task.main_metric, "final": outcome.final, "best": outcome.best,
                             "best_step": outcome.best_step, "first_loss": outcome.losses[0],
                             "last_loss": outcome.losses[-1]}
        result["timing"] = {"steps": outcome.steps, "train_s": outcome.train_s, "tokens": outcome.tokens,
                            "tokens_per_s": outcome.tokens / max(outcome.train_s, 1e-9)}
        result["status"] = "success"
    except torch.cuda.OutOfMemoryError as e:
        result["status"], result["error"] = "oom", f"{OOM_FIX} ({str(e).splitlines()[0]})"
        raise
    except BaseException as e:
        result["status"], result["error"] = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        log.close()
        result["memory"].update(memory.summary())
        result["timing"]["wall_s"] = time.perf_counter() - t0
        write_json_atomic(out / "result.json", result)
    return result
