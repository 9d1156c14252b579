"""LoRA-FA v2: PEFT's ``create_lorafa_optimizer`` — the paper's LATER version, not the v1 this suite reproduces.

PEFT's ``peft.optimizers.create_lorafa_optimizer`` (PEFT PR #2468, by the paper's first author) follows the
revised paper (arXiv 2308.03303 v2, "LoRA-FA: Efficient and Effective Low Rank Representation Fine-tuning"):
A frozen as in v1, but B's gradient is projected before an HF-style AdamW step (eps 1e-6, decoupled decay):

    g_B <- (1 / s^2) * g_B (A A^T + 1e-8 I)^+        s = alpha / r (alpha / sqrt(r) with rsLoRA)

The model side is plain PEFT LoRA with every ``lora_A`` frozen, exactly what PEFT ships (so its activation
memory is PEFT's A-frozen graph, not ``lora_fa``'s XA-only node; ``convert_to_lora_fa`` would combine both).

Checked against peft 0.21.2 (``peft/optimizers/lorafa.py``):
  * ``modules_to_save`` parameters (a classifier head) ARE optimized: the optimizer gets every named
    parameter, runs its LoRA branch for names containing ``"lora"`` (A/B pairs in order) and plain HF-AdamW
    for every other parameter with a gradient. Frozen base weights (grad None) are skipped. No extra handling
    is needed; ``make_lora_fa_v2_optimizer`` asserts it.
  * Weight decay is applied to every trained parameter, biases and LayerNorm weights of the head included.
  * The projection runs under ``torch.autocast(bfloat16)`` whenever accelerate reports bf16 available, which
    is true on CPU too: the projected gradient is bf16-rounded even when training in fp32.
  * Optimizer state is keyed by parameter names; ``load_state_dict`` does not move it to the device (PEFT
    resume bug, see baselines.md).
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model
from peft.optimizers import create_lorafa_optimizer
from torch import nn

from lorafa_repro.methods.lora import lora_config


def apply_lora_fa_v2(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
                     modules_to_save: list[str] | None = None, alpha_scaling: str = "standard") -> PeftModel:
    """Plain PEFT LoRA on ``target_modules`` with every ``lora_A`` frozen (PEFT's LoRA-FA model side).

    Train it with :func:`make_lora_fa_v2_optimizer`; with plain AdamW it is simply LoRA-FA v1 on PEFT's graph.
    """
    peft_model = get_peft_model(model, lora_config(target_modules=target_modules, rank=rank, alpha=alpha,
                                                       dropout=dropout, modules_to_save=modules_to_save,
                                                       alpha_scaling=alpha_scaling))
    for name, p in peft_model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(False)
    return peft_model


def make_lora_fa_v2_optimizer(model: nn.Module, *, rank: int, alpha: float, lr: float,
                              weight_decay: float) -> torch.optim.Optimizer:
    """``peft.optimizers.create_lorafa_optimizer(model, r=rank, lora_alpha=alpha, lr=lr, weight_decay=...)``.

    The projection's scale s is each LoRA module's own ``scaling`` (PEFT >= 0.18 reads it per parameter into
    the group's ``scaling_factors``), so ``method.alpha_scaling=rslora`` (PEFT's ``use_rslora`` on the model)
    gives s = alpha / sqrt(r) with nothing passed here (tests/test_alpha_scaling.py checks it).

    Every trainable parameter (all ``lora_B``, the ``modules_to_save`` copies) is in its single param group;
    raises if one were missing, so a PEFT change cannot silently stop training the head.
    """
    opt = create_lorafa_optimizer(model, r=rank, lora_alpha=alpha, lr=lr, weight_decay=weight_decay)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_opt]
    if missing:
        raise RuntimeError(f"create_lorafa_optimizer left trainable parameters out: {missing[:5]}")
    return opt


__all__ = ["apply_lora_fa_v2", "make_lora_fa_v2_optimizer"]
