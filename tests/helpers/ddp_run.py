"""One training run under torchrun (tests/test_distributed.py): ``ddp_run.py <out_dir> <overrides...>``.

The model's dropout is switched off so that 2 ranks x batch b and 1 process x batch 2b compute the same
function of the same examples (dropout masks would differ per rank)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import lorafa_repro.run as run_mod
from lorafa_repro.schema import register_configs

CONF = Path(__file__).resolve().parents[2] / "conf"
_build = run_mod.build_model


def build_without_dropout(*a, **k):
    model = _build(*a, **k)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    return model


if __name__ == "__main__":
    register_configs()
    run_mod.build_model = build_without_dropout
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=sys.argv[2:])
    run_mod.run(cfg, sys.argv[1])
