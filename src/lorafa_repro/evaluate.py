"""Score a model on a task without training it: ``python -m lorafa_repro.evaluate [the train overrides]``.

The same configs and overrides as ``lorafa_repro.train``; the model is built as a training run would build it
(``model.rope_scaling_factor`` included) but no method is applied and no step is taken, so this is the "before"
row of a fine-tuning comparison (e.g. the pretrained model's perplexity at a long context, with and without
position interpolation). Writes ``result.json`` (kind ``eval``, metrics.final = the task's evaluation, the
predictions file beside it) to ``output_dir`` (null: Hydra's run directory); with ``skip_if_done`` a successful
result of the same model, task, seed, evaluation settings and code there is returned as it is (method, optim
and the training-only trainer keys are ignored). Exit code 2 on a bad config.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lorafa_repro import rundir
from lorafa_repro.cli import hydra_entry, user_errors
from lorafa_repro.schema import register_configs
from lorafa_repro.train import CONF_DIR

logger = logging.getLogger(__name__)

register_configs()


#: trainer keys an evaluation reads; the rest of trainer, and method / optim, do not change what it computes
EVAL_TRAINER_KEYS = ("eval_batch_size", "precision", "device")


def eval_invariant_keys(cfg: DictConfig) -> tuple[str, ...]:
    """Config keys whose values do not change an untrained evaluation (a stored one differing only there is reused)."""
    from lorafa_repro.run import RUN_INVARIANT_KEYS

    trainer = tuple(f"trainer.{k}" for k in cfg.trainer.keys() if k not in EVAL_TRAINER_KEYS)
    return (*RUN_INVARIANT_KEYS, "method", "optim", *trainer)


def evaluate_untrained(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Validate, build the task, tokenizer and model, evaluate once; write and return ``result.json``."""
    from lorafa_repro.cli import check_output_path
    from lorafa_repro.results import is_done, read_result
    from lorafa_repro.run import code_fingerprint
    from lorafa_repro.schema import validate

    validate(cfg)
    check_output_path(output_dir, "output_dir", folder=True)
    out = Path(output_dir)
    config = {**OmegaConf.to_container(cfg, resolve=True), "code": code_fingerprint()}
    with rundir.locked(out):  # one run per folder, as for training (rundir.py)
        if cfg.skip_if_done and is_done(out, config, ignore=eval_invariant_keys(cfg)):
            return read_result(out / "result.json")
        _keep_another_configs_result(out, config, cfg)
        return _evaluate(cfg, out, config)


def _keep_another_configs_result(out: Path, config: dict[str, Any], cfg: DictConfig) -> None:
    """A finished result of another config in ``out`` is never replaced without a word: refused with the diff
    (``on_config_change=error``) or moved to ``out/replaced/<UTC time>/`` (``rerun``), as run.py does."""
    from lorafa_repro.results import config_diff, format_diff, try_read_result

    data, _ = try_read_result(out / "result.json")
    if data is None or data.get("status") == "running":
        return
    diff = config_diff(data.get("config", {}), config, eval_invariant_keys(cfg))
    if not diff:
        return
    if cfg.on_config_change == "error":
        raise rundir.refuse_other_config(out, f"a finished evaluation ({data.get('status')})", format_diff(diff))
    moved = rundir.move_aside(out)
    logger.warning("%s held an evaluation of another config: moved it to %s", out, moved)


def _evaluate(cfg: DictConfig, out: Path, config: dict[str, Any]) -> dict[str, Any]:
    from lorafa_repro.memory.peak import PeakMemory
    from lorafa_repro.models import build_model, count_parameters
    from lorafa_repro.results import new_result, write_json_atomic
    from lorafa_repro.run import one_line, prepare_task, set_seed
    from lorafa_repro.trainer import autocast_factory, resolve_device, resolve_precision

    device = resolve_device(cfg.trainer.device)
    set_seed(cfg.seed)
    task, tokenizer = prepare_task(cfg)
    memory = PeakMemory(device)
    memory.reset()
    result = new_result("eval", config)
    result["status"] = "running"
    precision = resolve_precision(cfg.trainer.precision, device)
    result["memory"]["precision"] = precision
    write_json_atomic(out / "result.json", result)
    t0 = time.perf_counter()
    try:
        model = build_model(cfg.model, task_kind=task.kind, num_labels=task.num_labels).to(device)
        memory.end_loading()
        result["params"] = count_parameters(model)
        path = out / "predictions" / "step_000000.jsonl"
        t_eval = time.perf_counter()
        metrics = task.evaluate(model, tokenizer, batch_size=cfg.trainer.eval_batch_size, device=device,
                                autocast=autocast_factory(precision, device), predictions_path=path)
        if path.exists():
            metrics["predictions_file"] = str(path.relative_to(out))
        result["metrics"] = {"main_metric": task.main_metric, "final": metrics}
        result["timing"] = {"eval_s": time.perf_counter() - t_eval}
        result["status"] = "success"
    except BaseException as e:
        result["error"] = one_line(e)
        result["status"] = "failed"
        raise
    finally:
        result["memory"].update(memory.summary())
        result["timing"]["total_s"] = time.perf_counter() - t0
        write_json_atomic(out / "result.json", result)
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lorafa_repro.quiet import quiet_known_warnings

    quiet_known_warnings()
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    with user_errors("lorafa-evaluate"):
        result = evaluate_untrained(cfg, output_dir)
    final = result["metrics"]["final"]
    print(f"result: {Path(output_dir) / 'result.json'}  {result['metrics']['main_metric']}="
          f"{final.get(result['metrics']['main_metric'])}  score={final.get('score')}")
    return final.get("score")


main = hydra_entry(main, "lorafa-evaluate")  # Hydra's own errors (unknown key, wrong type, ...): one line, exit 2


if __name__ == "__main__":
    main()
