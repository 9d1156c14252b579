"""QLoRA-FA: NF4 4-bit base (bitsandbytes, double quantization) + LoRA-FA (A frozen, only B trained).

The paper (section 3.2) says LoRA-FA composes with 4-bit weight quantization but leaves it to future work.
Here the base weights of the transformer blocks are quantized exactly as for the suite's ``qlora`` method
(``quantize_linears_4bit``: NF4, double quant, compute dtype given), and each adapted ``Linear4bit`` runs the
same fused LoRA-FA autograd node as ``lora_fa``: W is dequantized (``bitsandbytes.functional.
dequantize_4bit``) for the forward matmul and again in backward for dX; nothing b x s x d_in is kept, only
``XA`` plus the packed 4-bit weight (a parameter). Non-adapted 4-bit layers go through bitsandbytes'
``MatMul4Bit``, which also keeps only the packed weight.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from peft.tuners.lora.bnb import Linear4bit as PeftLoraLinear4bit
from torch import nn

from lorafa_repro.methods.lora_fa import LORA_FA_CLASSES, _LoraFAForwardMixin, apply_lora_fa
from lorafa_repro.methods.quantize import quantize_base_4bit


class QLoraFALinear4bit(_LoraFAForwardMixin, PeftLoraLinear4bit):
    """PEFT ``lora.bnb.Linear4bit`` whose training forward keeps only XA for backward (QLoRA-FA).

    The 4-bit handling (dequantize W in forward and backward) lives in the shared mixin, which also covers
    a plain ``lora.Linear`` wrapped around a ``Linear4bit``.
    """


LORA_FA_CLASSES[PeftLoraLinear4bit] = QLoraFALinear4bit


def apply_qlora_fa(model: nn.Module, *, target_modules: list[str], rank: int, alpha: float, dropout: float,
                   modules_to_save: list[str] | None = None,
                   compute_dtype: torch.dtype = torch.float32, alpha_scaling: str = "standard") -> PeftModel:
    """Quantize every block linear (and each target) to NF4 + double quant, then apply :func:`apply_lora_fa`.

    Same quantized set as the suite's ``qlora`` (all linears of the transformer blocks, heads excluded), so
    ``qlora`` and ``qlora_fa`` differ only in A being frozen and in the memory-optimal LoRA node. T5's ``wo``
    stays unquantized in fp32 (``methods.quantize.nf4_targets``, as for ``qlora``) with a plain LoRA-FA layer.
    PEFT picks its 4-bit LoRA layer only for a model flagged as loaded in 4 bit (``quantize_base_4bit`` sets
    the flag); otherwise it would wrap Linear4bit in a plain lora.Linear whose merge adds to the packed weight.
    """
    quantize_base_4bit(model, compute_dtype, extra=list(target_modules))
    return apply_lora_fa(model, target_modules=target_modules, rank=rank, alpha=alpha, dropout=dropout,
                         modules_to_save=modules_to_save, alpha_scaling=alpha_scaling)


__all__ = ["QLoraFALinear4bit", "apply_qlora_fa"]
