"""Which tensors autograd saves: CUDA's kernels or the CPU's, for every op on the training step's path.

The simulator runs on fake CPU tensors and the ``cpu`` backend on real ones, so by default both would run
PyTorch's CPU code paths. Where the CPU path saves or allocates something else than the CUDA kernel a GPU
runs, :func:`device_semantics` ("cuda", the default of ``ProbeConfig.semantics``) routes the call to an op
whose CPU kernel saves what CUDA saves; ``"cpu"`` leaves the CPU path alone (the exact check of the
simulator against the CPU allocator, tests/test_memory_probe.py). On a real GPU the routing is a no-op.

Audit of the step's ops (fp32 and bf16 autocast; RoBERTa, T5, LLaMA in transformers 5, PEFT LoRA,
the suite's LoRA-FA node, AdamW foreach, ``clip_grad_norm_``). How each row was checked: the autograd node
and its ``_saved_*`` tensors inspected on CPU (``grad_fn._saved_*`` and ``saved_tensors_hooks``), against
PyTorch's ``tools/autograd/derivatives.yaml`` (what a node saves is device-independent once the same aten op
runs) and ``aten/src/ATen/native/Dropout.cpp`` / ``native_functions.yaml`` (which aten op runs per device).

  op                        CUDA saves                          CPU saves                         here
  dropout (F.dropout,       ``native_dropout``: bool mask,      ``_dropout_impl``: fp32/bf16      routed to
  nn.Dropout; 0<p<1,        1 B/element (NativeDropoutBackward  noise tensor, itemsize B/element  native_dropout
  training, not in-place)   saves result1 + p)                  (MulBackward0 saves ``other``)    (its CPU kernel
                            (Dropout.cpp ``is_fused_kernel_acceptable``: is_cuda && 0<p<1 && numel>0)   is the same op)
  dropout in-place          noise path on both (``dropout_`` never fuses)                         unchanged
  SDPA with dropout > 0     mem-efficient/flash kernel: q, k, v, CPU math path: the b*h*s*s           dropout_p -> 0:
  (attn="sdpa", training)   out, logsumexp (fp32 b*h*s), attn   probabilities, its noise, the      CPU flash kernel
                            bias, philox seed/offset; dropout   dropped copy and the bmm inputs   saves q,k,v,out,
                            is regenerated in-kernel, no mask                                     lse, mask (=CUDA)
  SDPA without dropout      mem-efficient: q, k, v, out, lse    CPU flash: q, k, v, out, lse      unchanged (same)
  eager attention           matmul/bmm inputs, softmax result, dropout mask (as above)            dropout only
  GELU / SiLU / ReLU        GeluBackward0 / SiluBackward0: input; ReLU: result (both devices)     unchanged
  LayerNorm                 native_layer_norm: input, weight, bias, mean, rstd (fp32 [N,1]), both unchanged
  RMSNorm (T5, LLaMA)       python ops (pow, mean, rsqrt, mul) in transformers: same graph        unchanged
  softmax                   SoftmaxBackward0: result (both)                                       unchanged
  cross-entropy             log_softmax result + nll_loss target/total_weight (both)              unchanged
  linear / matmul           addmm/mm/bmm inputs (``at::linear`` / ``at::matmul`` are composite:   unchanged
                            same folding and copies on both)
  embedding                 indices (both)                                                        unchanged
  AdamW foreach,            ``_foreach_*`` ops: the same list of outputs per call on both (CUDA   unchanged
  clip_grad_norm_ foreach   fuses the kernels, the allocations are the same tensors); the step
                            counters stay on the CPU when not capturable (host memory)
  autocast (``mixed``)      CUDA's op lists; fake tensors apply CPU autocast's (e.g. softmax and   not routed (documented
                            layer_norm are fp32 on CUDA autocast): bf16 cells differ a little       in ProbeConfig)

So dropout (explicit or inside SDPA) is the only op where the two devices keep different bytes for the
fp32 cells of Table 4; it is routed here. Allocator rounding (CUDA: 512 B blocks) and the cuBLAS workspace
are not tensors autograd saves and stay out (simulate.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

#: the devices whose saved-tensor semantics a step can follow
SEMANTICS = ("cuda", "cpu")


def _fused(x: torch.Tensor, p: float, training: bool, inplace: bool) -> bool:
    """True where CUDA runs ``native_dropout`` (Dropout.cpp ``is_fused_kernel_acceptable``)."""
    return training and not inplace and 0.0 < p < 1.0 and x.numel() > 0


def _cuda_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``F.dropout`` as CUDA runs it: ``native_dropout`` (bool mask saved) where the fused kernel applies."""
    if _fused(input, p, training, inplace):
        return torch.native_dropout(input, p, True)[0]
    return _CPU["dropout"](input, p, training, inplace)


def _cuda_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
               dropout_p: float = 0.0, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the saved tensors of CUDA's fused kernels: dropout is drawn
    in-kernel there (nothing extra saved), so the CPU runs its fused kernel without dropout."""
    return _CPU["scaled_dot_product_attention"](query, key, value, attn_mask, 0.0, *args, **kwargs)


#: the CPU functions the routing replaces (module attributes of torch.nn.functional)
_CPU: dict[str, Any] = {"dropout": F.dropout, "scaled_dot_product_attention": F.scaled_dot_product_attention}
_ROUTED = {"dropout": _cuda_dropout, "scaled_dot_product_attention": _cuda_sdpa}


@contextlib.contextmanager
def device_semantics(semantics: str) -> Iterator[None]:
    """Run the enclosed step with ``semantics`` ("cuda": CUDA's saved tensors, "cpu": the CPU's).

    The routing swaps ``torch.nn.functional.dropout`` and ``.scaled_dot_product_attention`` (what
    ``nn.Dropout`` and transformers' attention call, looked up at call time) for the duration, rather than
    using a ``TorchFunctionMode``: autograd does not carry a function mode into backward, where gradient
    checkpointing recomputes the forward, and the recomputation must save the same tensors. On CUDA tensors
    both routed functions do what PyTorch does there anyway. Not thread-safe (one step at a time).
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics {semantics!r} not in {SEMANTICS}")
    if semantics == "cpu" or F.dropout is _cuda_dropout:  # cpu, or already routed (nested)
        yield
        return
    for name, fn in _ROUTED.items():
        setattr(F, name, fn)
    try:
        yield
    finally:
        for name, fn in _CPU.items():
            setattr(F, name, fn)


__all__ = ["SEMANTICS", "device_semantics"]
