"""The memory-optimal LoRA-FA linear as one ``torch.autograd.Function``.

Forward (PEFT convention: ``A`` is ``lora_A.weight`` (r, d_in), ``B`` is ``lora_B.weight`` (d_out, r)):

    Y = X W^T + b + s * (1/q) * (X * keep) A^T B^T          keep ~ Bernoulli(q), q = 1 - p

Saved for backward: ``U = (X * keep) A^T`` (the r-wide "XA", b x s x r) and the frozen ``W``, ``A``, ``B``
(parameters, not activations). Never ``X``, never a b x s x d_in mask. Backward:

    dB = (s/q) dY^T U
    dX = dY W + keep * ((dY (s/q) B) A)      keep regenerated, bit-identical, from the saved RNG state

Dropout mask: regenerated, not stored
-------------------------------------
The mask is drawn from the device's default generator; its state (5056 B on CPU, 16 B on CUDA, independent
of batch and width) is kept as a ctx attribute and replayed into a private ``torch.Generator`` in backward.
A bit-packed mask (1 bit/element) would cost ``b*s*d_in/8`` bytes per layer: for d_in = 768, r = 8, fp32 that
is 96 B/token against 32 B/token for XA itself, i.e. 4x the floor. Regeneration keeps the floor exactly.

Regeneration must be cheap. ``bernoulli_`` on CPU (non-Intel, i.e. no MKL VSL path) is a serial per-element
Mersenne-Twister loop that draws a 64-bit word per element (~7 ns/element here, 5.8 ms for 8x128x768); doing
it twice (forward + backward) is what made the first prototype 1.16x slower than PEFT LoRA. Here a mask
element costs 16 random bits: ``random_`` fills one int64 per 4 elements (full 64-bit range, unbiased), the
words are viewed as int16 "lanes" and compared with a threshold in one parallel, vectorised pass (forward:
``lt`` written straight into a float buffer that is then multiplied by X in place; backward:
``masked_fill_`` on the freshly computed (dY B) A, which ``addmm_`` then accumulates dY W into). Drawing
the mask costs 4-6x less than ``bernoulli_``, so forward + backward draws together cost less than PEFT's
single ``F.dropout``, and the fused node also skips PEFT's dA matmul, dropout output, scaling and sum
passes. The price: the keep probability is rounded to a multiple of 2^-16 (p = 0.1 becomes 0.1000061); the
scale is 1/q of that rounded q, so the dropout stays unbiased. The recipe is exposed as
:func:`dropout_keep_mask` and :class:`RecipeDropout`, so a plain-autograd reference (PEFT with its dropout
module swapped for :class:`RecipeDropout`) sees the very same masks for the same seed.

Gradient checkpointing: ``torch.utils.checkpoint`` (``preserve_rng_state=True``, its default) restores the
RNG state before recomputing, so the recomputed forward draws the same mask, and its XA equals the original.

Autocast: forward/backward are wrapped in ``torch.amp.custom_fwd/custom_bwd`` for the input's device type;
under autocast every matmul runs in the autocast dtype (as the PEFT graph would), so U is saved in it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

_LANE_BITS = 16
_LANE_LEVELS = 1 << _LANE_BITS  # 65536 equally likely int16 values
_LANE_MIN = -(1 << (_LANE_BITS - 1))


def keep_threshold(p: float) -> tuple[int, float] | None:
    """``(threshold, scale)`` for dropout probability ``p``: keep iff ``int16 lane < threshold``.

    The keep probability is ``q = k / 2^16`` with ``k = round((1 - p) * 2^16)``; ``scale = 1 / q``.
    Returns ``None`` when ``p`` rounds to "keep everything" (p < 2^-17), i.e. no dropout.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    kept = min(max(round((1.0 - p) * _LANE_LEVELS), 1), _LANE_LEVELS)
    if kept == _LANE_LEVELS:
        return None
    return _LANE_MIN + kept, _LANE_LEVELS / kept


def default_generator(device: torch.device) -> torch.Generator:
    """The generator ``bernoulli_``/``random_`` use on ``device`` when none is passed."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    raise NotImplementedError(f"LoRA-FA dropout regeneration supports cpu and cuda, not {device.type}")


def random_lanes(shape: torch.Size | tuple[int, ...], device: torch.device,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform int16 values of ``shape``: ``ceil(numel/4)`` 64-bit words from ``generator``, 4 lanes each."""
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # full 64-bit range: all 4 int16 lanes uniform
    return words.view(torch.int16)[:numel].view(shape)


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, float] | None:
    """Draw a boolean keep-mask of ``shape`` and its scale ``1/q`` (see module doc), or ``None`` if p ~ 0.

    Consumes ``ceil(numel/4)`` 64-bit words from ``generator`` (default: the device's default generator),
    exactly as :class:`LoraFAFunction` does for an input of that shape.
    """
    spec = keep_threshold(p)
    if spec is None:
        return None
    threshold, scale = spec
    return random_lanes(shape, device, generator) < threshold, scale


class RecipeDropout(nn.Module):
    """Plain-autograd dropout with exactly the mask recipe of :class:`LoraFAFunction` (reference/tests).

    Swapping this in for PEFT's ``lora_dropout`` makes PEFT's graph draw the same masks as ``lora_fa``.
    It stores its mask for backward like any autograd dropout; it is not memory-optimal.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        drawn = dropout_keep_mask(x.shape, self.p, x.device)
        if drawn is None:
            return x
        keep, scale = drawn
        return x * keep * scale


@dataclass(frozen=True)
class LoraFASpec:
    """Non-tensor arguments of one LoRA-FA linear call.

    ``quant_state``: bitsandbytes ``QuantState`` when ``weight`` is a packed 4-bit weight, else ``None``.
    ``base_dtype``: dtype of the base matmul outside autocast (None: the weight's dtype; for 4-bit the
    layer's ``compute_dtype``). ``out_dtype``: dtype of the result outside autocast (None: base dtype).
    """

    scaling: float
    dropout_p: float = 0.0
    quant_state: Any = None
    base_dtype: Optional[torch.dtype] = None
    out_dtype: Optional[torch.dtype] = None


def dense_weight(weight: torch.Tensor, quant_state: Any) -> torch.Tensor:
    """``weight`` itself, or its dequantized (d_out, d_in) form when ``quant_state`` is given (NF4/FP4)."""
    if quant_state is None:
        return weight
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight.data, quant_state)


def _dtypes(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, spec: LoraFASpec
            ) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(base compute dtype, LoRA compute dtype, output dtype), mirroring what PEFT's layer computes in."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        cast = torch.get_autocast_dtype(device_type)
        out = x.dtype if spec.quant_state is not None else cast  # bnb casts its output back to x's dtype
        return cast, cast, out
    if spec.base_dtype is not None:
        base = spec.base_dtype
    elif spec.quant_state is not None:
        base = x.dtype
    else:
        base = weight.dtype
    out = spec.out_dtype or (x.dtype if spec.quant_state is not None else base)
    return base, lora_a.dtype, out


def _forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             lora_a: torch.Tensor, lora_b: torch.Tensor, spec: LoraFASpec) -> torch.Tensor:
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
        raise RuntimeError("LoRA-FA keeps the base weight W and lora_A frozen; set requires_grad=False on them")
    base_dtype, lora_dtype, out_dtype = _dtypes(x, weight, lora_a, spec)
    d_out = lora_b.shape[0]

    w = dense_weight(weight, spec.quant_state).to(base_dtype)
    out = F.linear(x.to(base_dtype), w, None if bias is None else bias.to(base_dtype))
    del w

    rng_state = None
    scale = 1.0
    drop = keep_threshold(spec.dropout_p) if spec.dropout_p > 0.0 else None
    if drop is None:
        xl = x.to(lora_dtype)
    else:
        threshold, scale = drop
        rng_state = default_generator(x.device).get_state()
        lanes = random_lanes(x.shape, x.device)  # advances the default generator, as RecipeDropout does
        # keep mask written straight in the LoRA dtype, then x multiplied in place: one temporary, two passes
        xl = torch.lt(lanes, threshold, out=torch.empty(x.shape, dtype=lora_dtype, device=x.device))
        del lanes
        xl.mul_(x)
    u = F.linear(xl, lora_a.to(lora_dtype))  # (..., r): the only activation kept for backward
    del xl
    coef = spec.scaling * scale
    b_scaled = (lora_b * coef).to(lora_dtype)

    if out.dtype == lora_dtype and out.dtype == out_dtype:
        out.view(-1, d_out).addmm_(u.reshape(-1, u.shape[-1]), b_scaled.t())
    else:
        out = (out + F.linear(u, b_scaled)).to(out_dtype)

    need_dx, need_bias, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[4]
    ctx.save_for_backward(
        u if need_db else None,
        weight if need_dx else None,
        lora_a if need_dx else None,
        lora_b if need_dx else None,
    )
    ctx.spec = spec
    ctx.rng_state = rng_state  # generator state, O(1) bytes: the mask is regenerated from it
    ctx.coef = coef
    ctx.threshold = None if drop is None else drop[0]
    ctx.x_shape, ctx.x_dtype, ctx.x_device = x.shape, x.dtype, x.device
    ctx.dtypes = (base_dtype, lora_dtype)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.b_dtype = lora_b.dtype
    ctx.need = (need_dx, need_bias, need_db)
    return out


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    u, weight, lora_a, lora_b = ctx.saved_tensors
    need_dx, need_bias, need_db = ctx.need
    base_dtype, lora_dtype = ctx.dtypes
    spec: LoraFASpec = ctx.spec
    d_out = grad_out.shape[-1]
    g2 = grad_out.reshape(-1, d_out)

    grad_x = grad_bias = grad_b = None
    if need_db:
        u2 = u.reshape(-1, u.shape[-1])
        grad_b = torch.mm(u2.t(), g2.to(lora_dtype)).t().to(ctx.b_dtype).mul_(ctx.coef)  # (d_out, r)
    if need_bias:
        grad_bias = g2.sum(0).to(ctx.bias_dtype)
    if need_dx:
        d_in = ctx.x_shape[-1]
        gu = torch.mm(g2.to(lora_dtype), (lora_b * ctx.coef).to(lora_dtype))  # (N, r)
        lora_gx = torch.mm(gu, lora_a.to(lora_dtype))  # (N, d_in)
        del gu
        if ctx.rng_state is not None:  # replay the forward's draw: bit-identical mask
            gen = torch.Generator(device=ctx.x_device)
            gen.set_state(ctx.rng_state)
            lanes = random_lanes(ctx.x_shape, ctx.x_device, generator=gen).view(-1, d_in)
            lora_gx.masked_fill_(lanes >= ctx.threshold, 0)
            del lanes
        w = dense_weight(weight, spec.quant_state).to(base_dtype)
        g_base = g2.to(base_dtype)
        if lora_gx.dtype == base_dtype == ctx.x_dtype:
            grad_x = lora_gx.addmm_(g_base, w)  # dY W accumulated in place: no second (N, d_in) buffer
        else:  # sum in the widest dtype involved (under autocast: x's fp32), as PEFT's graph does
            acc_dtype = torch.promote_types(torch.promote_types(base_dtype, lora_dtype), ctx.x_dtype)
            grad_x = torch.mm(g_base, w).to(acc_dtype).add_(lora_gx)
        del w
        grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
    return grad_x, None, grad_bias, None, grad_b, None


@functools.cache
def function_for(device_type: str) -> type[torch.autograd.Function]:
    """The LoRA-FA ``autograd.Function`` with ``custom_fwd/custom_bwd`` bound to ``device_type``."""

    class LoraFAFunction(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type=device_type)
        def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    lora_a: torch.Tensor, lora_b: torch.Tensor, spec: LoraFASpec) -> torch.Tensor:
            return _forward(ctx, x, weight, bias, lora_a, lora_b, spec)

        @staticmethod
        @torch.amp.custom_bwd(device_type=device_type)
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
            return _backward(ctx, grad_out)

    LoraFAFunction.__qualname__ = LoraFAFunction.__name__ = f"LoraFAFunction_{device_type}"
    return LoraFAFunction


def lora_fa_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora_a: torch.Tensor,
                   lora_b: torch.Tensor, spec: LoraFASpec) -> torch.Tensor:
    """``x W^T + b + s * dropout(x) A^T B^T`` saving only ``dropout(x) A^T`` (plus W, A, B) for backward."""
    return function_for(x.device.type).apply(x, weight, bias, lora_a, lora_b, spec)


__all__ = ["LoraFASpec", "RecipeDropout", "default_generator", "dense_weight", "dropout_keep_mask",
           "function_for", "keep_threshold", "lora_fa_linear", "random_lanes"]
