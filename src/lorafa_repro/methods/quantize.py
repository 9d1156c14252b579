"""4-bit NF4 base weights (QLoRA's recipe: NF4 + double quantization, bitsandbytes)."""

from __future__ import annotations

import torch
from torch import nn


def quantize_linears_4bit(model: nn.Module, target_modules: list[str], compute_dtype: torch.dtype) -> nn.Module:
    """Replace each named ``nn.Linear`` in place by a frozen ``bnb.nn.Linear4bit`` (NF4, double quant).

    Works for random-init and pretrained models alike, on CPU (bitsandbytes >= 0.45) and CUDA:
    the weights are quantized on the device the layer lives on. Layers the model class keeps in full precision
    (``_keep_in_fp32_modules``: T5's FFN output ``wo``, whose forward casts its input to ``wo.weight.dtype``)
    stay unquantized, as ``from_pretrained(quantization_config=...)`` leaves them.
    """
    import bitsandbytes as bnb

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name in target_modules:
        if keep.intersection(name.split(".")):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        if isinstance(lin, bnb.nn.Linear4bit):
            continue
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{name} is {type(lin).__name__}, not nn.Linear: cannot quantize it")
        device = lin.weight.device
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            compress_statistics=True,  # double quantization
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            lin.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
        setattr(parent, child, q.to(device))  # .to() quantizes
    return model


def is_4bit(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)
