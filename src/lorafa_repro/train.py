"""Hydra entry point: ``python -m lorafa_repro.train [overrides]`` (or ``lorafa-train``).

Examples:
  python -m lorafa_repro.train model=tiny_roberta task=glue/mrpc method=lora_fa trainer=tiny
  python -m lorafa_repro.train -m method=ft,lora,lora_fa method.rank=8 task.data_dir=../shared/data/glue

A run that fails prints one line (no traceback unless HYDRA_FULL_ERROR=1) and exits non-zero: 2 bad config
(Hydra's own errors too: an unknown key or option, a value of the wrong type, bad override syntax),
3 out of memory, 4 diverged, 5 interrupted, 1 any other failure. In a multirun a failed cell is recorded in
its result.json and the sweep goes on (SIGTERM/SIGINT stop it after the checkpoint; a cell whose folder is in
use or holds a run that must not be replaced stops it with exit code 2, leaving that folder alone); the sweep
ends with a summary of the failed cells and exit code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lorafa_repro.cli import hydra_entry, single_line
from lorafa_repro.errors import ConfigError
from lorafa_repro.schema import register_configs

CONF_DIR = Path(os.environ.get("LORAFA_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
EXIT_CODES = {"failed": 1, "config": 2, "oom": 3, "diverged": 4, "interrupted": 5}

register_configs()


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra (tests call main.__wrapped__)
        return False


def _record_config_error(output_dir: str, cfg: DictConfig, error: str) -> None:
    """A multirun cell with a bad value leaves a failed result.json, so the sweep summary lists it."""
    from lorafa_repro.results import new_result, try_read_result, write_json_atomic

    path = Path(output_dir) / "result.json"
    stored, _ = try_read_result(path)
    if stored is not None and stored.get("error") == f"ConfigError: {error}":
        return  # recorded by an earlier pass of the same sweep
    result = new_result("train", OmegaConf.to_container(cfg, resolve=False))
    result["error"] = f"ConfigError: {error}"
    write_json_atomic(path, result)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lorafa_repro.quiet import quiet_known_warnings
    from lorafa_repro.run import run
    from lorafa_repro.trainer import Diverged, Interrupted

    quiet_known_warnings()
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    multirun = _in_multirun()
    try:
        result = run(cfg, output_dir)
    except ConfigError as e:
        from lorafa_repro.rundir import RunDirError

        if isinstance(e, RunDirError):  # the folder holds another run: leave it, and stop a sweep here too
            return _fail("config", f"lorafa-train: error: {e}", multirun=False)
        if multirun:
            _record_config_error(output_dir, cfg, str(e))
        elif os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        return _fail("config", f"lorafa-train: error: {single_line(e)}", multirun)
    except (torch.cuda.OutOfMemoryError, Diverged, Interrupted, KeyboardInterrupt, Exception) as e:
        # run() wrote result.json with the status and a one-line reason; say the same, without a traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        from lorafa_repro.results import try_read_result

        data, _ = try_read_result(Path(output_dir) / "result.json")
        status = data["status"] if data else "failed"
        reason = data["error"] if data else f"{type(e).__name__}: {e}"
        if isinstance(e, Interrupted):  # perhaps before this run wrote result.json: its own words
            status, reason = "interrupted", str(e)
        return _fail(status if status in EXIT_CODES else "failed",
                     f"lorafa-train: {status}: {reason} ({output_dir})", multirun)
    if result["status"] != "success":  # a finished failure reused by skip_if_done
        status = result["status"] if result["status"] in EXIT_CODES else "failed"
        return _fail(status, f"lorafa-train: {result['status']} (stored, skip_if_done): {result['error']} "
                             f"({output_dir})", multirun)
    print(f"result: {Path(output_dir) / 'result.json'}  status={result['status']}  "
          f"score={result['metrics']['final'].get('score')}")
    return result["metrics"]["final"].get("score")


main = hydra_entry(main, "lorafa-train")  # Hydra's own errors (unknown key, wrong type, ...): one line, exit 2


def _fail(kind: str, message: str, multirun: bool) -> None:
    print(message, file=sys.stderr)
    # in a multirun the sweep goes on (FailureSummary reports at the end), unless the user stopped it
    if not multirun or kind == "interrupted":
        sys.exit(EXIT_CODES[kind])
    return None


if __name__ == "__main__":
    main()
