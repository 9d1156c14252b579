"""4-bit NF4 base weights (QLoRA's recipe: NF4 + double quantization, bitsandbytes).

Which layers: every linear of the transformer blocks except the model's ``_keep_in_fp32_modules`` (T5's
``wo``), which stay unquantized in fp32 as transformers' 4-bit loading leaves them (:func:`nf4_targets`).

One code path on every CPU. bitsandbytes (>= 0.49) has a second CPU path: on a CPU with AVX512-BF16
(``bitsandbytes.functional.has_avx512bf16``) ``Linear4bit.forward`` repacks its weight for a fused bf16 kernel at
the first forward that is not training and needs no gradient (an evaluation), and keeps it packed. For a model
that trains, that path is wrong three ways: the repacking needs ``in_features % blocksize == 0`` and
``out_features % 32 == 0`` (the tiny test models fail with ``shape '[32, 0]' is invalid``); after an evaluation,
training runs on the packed weight with no autograd (an in-place error on the bias, or no gradient to the input);
and packing stores absmax in bf16, so unpacking does not give back the weight that trained. So
:func:`quantize_linears_4bit` turns that path off per layer (``support_avx512bf16_for_cpu = False``): evaluation
computes as training does, in the layer's compute dtype, and QLoRA's numbers are the same on a CPU with or
without AVX512-BF16. CUDA never takes either CPU path.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def quantize_linears_4bit(model: nn.Module, target_modules: list[str], compute_dtype: torch.dtype) -> nn.Module:
    """Replace each named ``nn.Linear`` in place by a frozen ``bnb.nn.Linear4bit`` (NF4, double quant).

    Works for random-init and pretrained models alike, on CPU (bitsandbytes >= 0.45) and CUDA:
    the weights are quantized on the device the layer lives on.
    """
    import bitsandbytes as bnb

    for name in target_modules:
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
        q.support_avx512bf16_for_cpu = False  # one CPU path on every CPU (module docstring)
        setattr(parent, child, q.to(device))  # .to() quantizes
    return model


def is_4bit(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)


def kept_in_fp32(model: nn.Module) -> list[str]:
    """Block linears a 4-bit load leaves unquantized in fp32: the model's ``_keep_in_fp32_modules`` (T5:
    ``wo``), as transformers' bitsandbytes loading does (``from_pretrained(quantization_config=...)`` adds
    them to the modules not converted). T5's ``T5DenseActDense`` casts its input to ``wo.weight.dtype``
    unless that is int8, so a 4-bit (uint8) ``wo`` cannot run."""
    from lorafa_repro.methods.targets import block_linears

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return [n for n in block_linears(model) if any(n == k or n.endswith("." + k) for k in keep)]


def nf4_targets(model: nn.Module) -> list[str]:
    """Block linears a 4-bit method quantizes: every one except :func:`kept_in_fp32`."""
    from lorafa_repro.methods.targets import block_linears

    kept = set(kept_in_fp32(model))
    return [n for n in block_linears(model) if n not in kept]


def quantize_base_4bit(model: nn.Module, compute_dtype: torch.dtype, extra: list[str] | None = None) -> nn.Module:
    """QLoRA's base model: :func:`nf4_targets` (+ ``extra`` names not kept in fp32) quantized to NF4 with
    double quantization, :func:`kept_in_fp32` cast to fp32, and the model flagged as loaded in 4 bit (PEFT
    then picks its 4-bit LoRA layer, whose merge dequantizes and requantizes W, as for a model from
    ``from_pretrained(quantization_config=...)``)."""
    kept = kept_in_fp32(model)
    names = list(dict.fromkeys([*nf4_targets(model), *[n for n in (extra or []) if n not in kept]]))
    quantize_linears_4bit(model, names, compute_dtype)
    for name in kept:
        model.get_submodule(name).float()
    model.is_loaded_in_4bit = True
    return model


def nf4_bytes(numel: int, blocksize: int = 64, double_quant: bool = True) -> int:
    """Bytes of one NF4 weight as bitsandbytes 0.50 stores it: packed 4-bit values (0.5 byte each), the
    NF4 code (16 fp32) and one absmax per block of 64 - with double quantization a uint8 absmax, an fp32
    absmax per 256 blocks, an fp32 offset and the weight's own copy of the 8-bit code book (256 fp32);
    without, an fp32 absmax."""
    blocks = math.ceil(numel / blocksize)
    packed = math.ceil(numel / 2)
    if not double_quant:
        return packed + 4 * blocks + 4 * 16
    return packed + blocks + 4 * math.ceil(blocks / 256) + 4 * 16 + 4 + 4 * 256
