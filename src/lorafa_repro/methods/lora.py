"""LoRA and QLoRA through PEFT, and the adapter scale every LoRA-family method shares.

``alpha_scaling`` picks the factor PEFT multiplies ``B A x`` by: ``standard`` = alpha / r (Hu et al.) or
``rslora`` = alpha / sqrt(r) (rank-stabilized LoRA, Kalajdzievski 2023; PEFT's ``use_rslora``). It is stored in
PEFT's own format (``use_rslora`` in ``adapter_config.json``), so ``PeftModel.from_pretrained`` rebuilds the scale.
"""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lorafa_repro.methods.quantize import quantize_base_4bit


ALPHA_SCALINGS = ("standard", "rslora")


def adapter_scale(alpha: float, rank: int, alpha_scaling: str = "standard") -> float:
    """The factor on ``B A x``: alpha / r (``standard``) or alpha / sqrt(r) (``rslora``)."""
    if alpha_scaling not in ALPHA_SCALINGS:
        raise ValueError(f"unknown alpha_scaling {alpha_scaling!r}; known: {', '.join(ALPHA_SCALINGS)}")
    return alpha / (math.sqrt(rank) if alpha_scaling == "rslora" else rank)


def lora_config(*, target_modules: list[str], rank: int, alpha: float, dropout: float,
                modules_to_save: list[str] | None = None, alpha_scaling: str = "standard") -> LoraConfig:
    adapter_scale(alpha, rank, alpha_scaling)  # rejects an unknown scaling
    # Full module names are matched exactly by PEFT (a name is a suffix of itself).
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      modules_to_save=modules_to_save or None, bias="none",
                      use_rslora=alpha_scaling == "rslora")


def apply_lora(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
               modules_to_save: list[str] | None = None, alpha_scaling: str = "standard",
               **_: object) -> PeftModel:
    """PEFT LoRA: A (Kaiming-uniform) and B (zeros) both trained, scaled by :func:`adapter_scale`."""
    cfg = lora_config(target_modules=target_modules, rank=rank, alpha=alpha, dropout=dropout,
                      modules_to_save=modules_to_save, alpha_scaling=alpha_scaling)
    return get_peft_model(model, cfg)


def apply_qlora(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
                modules_to_save: list[str] | None = None, compute_dtype: torch.dtype = torch.float32,
                alpha_scaling: str = "standard", **_: object) -> PeftModel:
    """QLoRA: every block linear quantized to NF4 with double quantization, then PEFT LoRA on top.

    Except T5's ``wo`` (any ``_keep_in_fp32_modules``): left unquantized in fp32, as transformers' 4-bit loading
    leaves it (``T5DenseActDense`` casts its input to ``wo.weight.dtype``, which cannot be a uint8 weight); it
    still gets its LoRA adapter (``methods.quantize.nf4_targets``).

    PEFT's ``prepare_model_for_kbit_training`` is *not* called: it upcasts embeddings/norms to fp32 and
    turns on gradient checkpointing, which changes the memory being compared (PEFT #1149). Gradient
    checkpointing is a separate switch (trainer.gradient_checkpointing).
    """
    quantize_base_4bit(model, compute_dtype)
    return apply_lora(model, target_modules=target_modules, rank=rank, alpha=alpha, dropout=dropout,
                      modules_to_save=modules_to_save, alpha_scaling=alpha_scaling)
