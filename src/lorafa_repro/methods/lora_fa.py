"""LoRA-FA (paper v1): A frozen at its random init, only B trained.

First implementation: PEFT LoRA with every lora_A frozen (the same graph PEFT's LoRA-FA optimizer
builds). Issue #3 replaces the internals with a layer that saves only XA for backward.
"""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from lorafa_repro.methods.lora import apply_lora


def apply_lora_fa(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
                  modules_to_save: list[str] | None = None) -> PeftModel:
    peft_model = apply_lora(model, target_modules=target_modules, rank=rank, alpha=alpha, dropout=dropout,
                            modules_to_save=modules_to_save)
    for name, p in peft_model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(False)
    return peft_model
