"""Hydra entry point: ``python -m lorafa_repro.train [overrides]`` (or ``lorafa-train``).

Examples:
  python -m lorafa_repro.train model=tiny_roberta task=glue/mrpc method=lora_fa trainer=tiny
  python -m lorafa_repro.train -m method=ft,lora,lora_fa method.rank=8 task.data_dir=../shared/data/glue
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lorafa_repro.schema import ConfigError, register_configs

CONF_DIR = Path(os.environ.get("LORAFA_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lorafa_repro.results import quiet_known_warnings
    from lorafa_repro.run import run

    quiet_known_warnings()

    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    try:
        result = run(cfg, output_dir)
    except ConfigError as e:
        print(f"lorafa-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    except torch.cuda.OutOfMemoryError:
        # run() wrote result.json with status "oom" and the fix; say the same, without a traceback
        error = json.loads((Path(output_dir) / "result.json").read_text())["error"]
        print(f"lorafa-train: error: {error}", file=sys.stderr)
        sys.exit(3)
    print(f"result: {Path(output_dir) / 'result.json'}  status={result['status']}  "
          f"score={result['metrics']['final'].get('score')}")
    return result["metrics"]["final"].get("score")


if __name__ == "__main__":
    main()
