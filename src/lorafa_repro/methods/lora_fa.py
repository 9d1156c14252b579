"""LoRA-FA (paper v1, arXiv 2308.03303): A frozen at its random init, only B trained — memory-optimal.

``apply_lora_fa`` builds an ordinary PEFT LoRA model, freezes every ``lora_A`` and swaps the class of each
PEFT LoRA linear (``peft.tuners.lora.Linear``, and ``peft.tuners.lora.bnb.Linear4bit`` for QLoRA-FA) for a
subclass whose ``forward`` runs :func:`~lorafa_repro.methods.lora_fa_function.lora_fa_linear`: base matmul,
dropout and the LoRA branch in one autograd node that keeps only ``XA`` (b x s x r) for backward, plus the
frozen W, A, B. The dropout mask is regenerated in backward from the saved RNG state (see
``lora_fa_function``'s docstring for why regeneration and not a 1-bit mask).

Everything else is PEFT's: the attributes (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``,
``scaling``) and the state dict are untouched, so ``save_pretrained`` writes a normal LoRA adapter that a
plain PEFT LoRA model loads, and ``merge``/``merge_and_unload`` work unchanged. Anything the fused path does
not cover (adapters disabled or merged, mixed-adapter batches, several active adapters, DoRA and other
variants, ``lora_bias``, ``fan_in_fan_out``, a trainable W or A) falls back to PEFT's own ``forward``.

Dropout masks differ from PEFT's ``nn.Dropout`` (a cheaper 16-bit-lane recipe, same distribution up to a
2^-16 rounding of p); with the mask recipe shared (``RecipeDropout``), outputs and gradients equal PEFT's.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from lorafa_repro.methods.lora import lora_config
from lorafa_repro.methods.lora_fa_function import LoraFASpec, lora_fa_linear


class _LoraFAForwardMixin:
    """``forward`` for a PEFT LoRA linear with A frozen: the fused, memory-optimal path when it applies."""

    def _lora_fa_weight(self) -> tuple[torch.Tensor, Any, Optional[torch.dtype]]:
        """(weight tensor, bnb quant_state or None, base compute dtype or None)."""
        base = self.get_base_layer()  # type: ignore[attr-defined]
        if not _is_bnb_4bit(base):
            return base.weight, None, None
        from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

        fix_4bit_weight_quant_state_from_module(base)
        return base.weight, base.weight.quant_state, base.compute_dtype

    def _lora_fa_spec(self, x: torch.Tensor, args: tuple, kwargs: dict) -> Optional[tuple[str, LoraFASpec]]:
        """The active adapter and call spec if the fused path applies, else ``None`` (use PEFT's forward)."""
        if args or kwargs or self.disable_adapters or self.merged:  # type: ignore[attr-defined]
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]  # type: ignore[attr-defined]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or self.lora_bias.get(name, False):  # type: ignore[attr-defined]
            return None
        if getattr(self, "fan_in_fan_out", False):
            return None
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]  # type: ignore[attr-defined]
        if not (type(lora_a) is nn.Linear and type(lora_b) is nn.Linear) or lora_a.bias is not None:
            return None
        base = self.get_base_layer()  # type: ignore[attr-defined]
        if _is_bnb_4bit(base):
            if getattr(base.weight.quant_state, "packing_format_for_cpu", False):
                return None  # bnb repacked W for its AVX512-bf16 CPU inference kernel: let bnb run it
            if not base.compute_type_is_set:  # bnb picks its compute dtype from the first input it sees
                base.set_compute_type(x)
                base.compute_type_is_set = True
        weight, quant_state, base_dtype = self._lora_fa_weight()
        if weight.requires_grad or lora_a.weight.requires_grad:
            _warn_once("LoRA-FA fused path needs W and lora_A frozen; falling back to PEFT's LoRA forward")
            return None
        dropout = self.lora_dropout[name]  # type: ignore[attr-defined]
        if isinstance(dropout, nn.Dropout):
            p = dropout.p if dropout.training else 0.0
        elif isinstance(dropout, nn.Identity):
            p = 0.0
        else:
            return None
        return name, LoraFASpec(scaling=float(self.scaling[name]), dropout_p=float(p),  # type: ignore[attr-defined]
                                quant_state=quant_state, base_dtype=base_dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        picked = self._lora_fa_spec(x, args, kwargs)
        if picked is None:
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        self._check_forward_args(x, *args, **kwargs)  # type: ignore[attr-defined]
        name, spec = picked
        base = self.get_base_layer()  # type: ignore[attr-defined]
        return lora_fa_linear(x, base.weight, base.bias, self.lora_A[name].weight,  # type: ignore[attr-defined]
                              self.lora_B[name].weight, spec)  # type: ignore[attr-defined]


def _is_bnb_4bit(module: nn.Module) -> bool:
    """True for a bitsandbytes ``Linear4bit`` (checked without importing bitsandbytes)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


class LoraFALinear(_LoraFAForwardMixin, PeftLoraLinear):
    """PEFT ``lora.Linear`` whose training forward keeps only XA for backward (LoRA-FA)."""


# PEFT class -> LoRA-FA subclass. methods/qlora_fa.py registers the bitsandbytes 4-bit layer here when it is
# imported, which the package ``lorafa_repro.methods`` does before any of its modules can be used (no back-import).
LORA_FA_CLASSES: dict[type, type] = {PeftLoraLinear: LoraFALinear}

_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, stacklevel=3)


def convert_to_lora_fa(model: nn.Module) -> int:
    """Freeze every ``lora_A`` and give each PEFT LoRA linear the fused LoRA-FA forward, in place.

    Returns the number of layers converted. Raises ``TypeError`` for a LoRA layer type with no LoRA-FA
    counterpart (e.g. LoRA on an embedding or a conv).
    """
    converted = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for a in module.lora_A.values():
            a.requires_grad_(False)
        if type(module) in LORA_FA_CLASSES.values():
            converted += 1
            continue
        target = LORA_FA_CLASSES.get(type(module))
        if target is None:
            raise TypeError(f"{name}: no LoRA-FA layer for {type(module).__module__}.{type(module).__name__}")
        module.__class__ = target
        converted += 1
    return converted


def apply_lora_fa(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
                  modules_to_save: list[str] | None = None, alpha_scaling: str = "standard") -> PeftModel:
    """LoRA-FA v1: PEFT LoRA on ``target_modules`` (full names), A frozen, fused memory-optimal forward.

    Trainable: every ``lora_B`` and the ``modules_to_save`` copies. ``lora_A`` keeps PEFT's
    Kaiming-uniform random init, B starts at zero, ``scaling`` = alpha / rank (``alpha_scaling="standard"``) or
    alpha / sqrt(rank) (``"rslora"``); the fused forward reads PEFT's ``scaling``.
    """
    peft_model = get_peft_model(model, lora_config(target_modules=target_modules, rank=rank, alpha=alpha,
                                                       dropout=dropout, modules_to_save=modules_to_save,
                                                       alpha_scaling=alpha_scaling))
    convert_to_lora_fa(peft_model)
    return peft_model


__all__ = ["LORA_FA_CLASSES", "LoraFALinear", "apply_lora_fa", "convert_to_lora_fa"]
