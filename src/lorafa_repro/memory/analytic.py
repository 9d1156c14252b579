"""Analytic peak memory: the paper's formulas (§2.2, §3.1) over the real layer shapes and dtypes.

The paper (GPT-like, mixed precision, n = 12 d^2 L weights, n_r = 18 d r L LoRA weights) adds
  weights + gradients + optimizer states + activations of the adapted linear layers:
  FT 2n + 14n + 14 b s d L, LoRA 2n + 16 n_r + 14 b s d L + 8 b s r L, LoRA-FA 2n + 8 n_r + 8 b s r L.
Here every term is counted from the model itself instead of the GPT formula:
  parameters        every parameter at its dtype (4-bit weights: NF4 bytes, methods.quantize.nf4_bytes)
  gradients         every trainable parameter at its dtype
  optimizer_states  AdamW: 2 states per trainable parameter at its dtype (+ one 4-byte step counter)
  activations       for each block linear: its input X (b x s x d_in) if its weight W or its LoRA A
                    is trained (X is shared by q/k/v and counted once), and X A (b x s x r) if its
                    LoRA B is trained; at the compute dtype (2 bytes under bf16/mixed, else 4)
  weight_copies     ``mixed`` only: autocast's bf16 copy of every linear weight, kept for backward
  temporaries       (not in the paper) backward holds one layer's incoming and outgoing gradient:
                    2 x the largest b x s x max(d_in, d_out)
  other             the batch
With gradient checkpointing, activations are instead every block's input (what the checkpoints keep,
at the dtype it has) plus the X / X A of the one block recomputed at a time (the largest block).
Everything else (attention scores, softmax, GELU, LayerNorm, dropout masks, the loss) is left out, as
in the paper's formula: the simulated and measured backends include it. Which layers save X or XA is
read from ``requires_grad`` of W, lora_A and lora_B, so new methods are covered without a case here.
Houlsby adapters (method=adapter): their ``down`` / ``up`` linears are counted like any trained linear (X of
``down``: b x s x d, X of ``up``: b x s x r), from a forward of the adapted model.
The layer inputs (shapes, which layers share one) come from one forward on fake tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from lorafa_repro.memory.step import (
    GIB,
    ProbeConfig,
    apply_probe_method,
    build_base_model,
    compute_dtype,
    fake_from_meta,
    make_batch,
    param_counts,
    quantized_weight_numels,
    transformer_blocks,
)
from lorafa_repro.methods.quantize import nf4_bytes

ANALYTIC_KEYS = ("parameters", "buffers", "gradients", "optimizer_states", "weight_copies", "activations",
                 "temporaries", "other")


@dataclass(frozen=True)
class LinearInput:
    """What one forward showed about a linear layer's input."""

    tokens: int    # rows of X (b x s)
    d_in: int
    d_out: int
    shared_id: int  # layers fed the same tensor share this id


def linear_inputs(model: nn.Module, batch: dict[str, torch.Tensor], names: list[str],
                  call: Callable[[nn.Module, dict[str, torch.Tensor]], Any] | None = None) -> dict[str, LinearInput]:
    """Run ``model(**batch)`` once without gradients and record each named linear's input."""
    seen: dict[str, LinearInput] = {}
    keep: list[torch.Tensor] = []  # keep inputs alive so id() stays unique
    ids: dict[int, int] = {}

    def hook(name: str, mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        keep.append(x)
        sid = ids.setdefault(id(x), len(ids))
        seen[name] = LinearInput(tokens=x.numel() // x.shape[-1], d_in=x.shape[-1], d_out=mod.out_features,
                                 shared_id=sid)

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(n, m, a)) for n in names]
    try:
        with torch.no_grad():
            (call or (lambda m, b: m(**b)))(model, batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def block_inputs(model: nn.Module, batch: dict[str, torch.Tensor], blocks: list[str]) -> dict[str, int]:
    """Bytes of each named block's hidden-state input in one ``model(**batch)`` without gradients
    (what a checkpointed block keeps for its recomputation)."""
    seen: dict[str, int] = {}

    def hook(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        seen[name] = x.numel() * x.element_size()

    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, k, n=n: hook(n, a, k), with_kwargs=True) for n in blocks]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.")


def trained_parts(adapted: nn.Module, names: list[str]) -> dict[str, dict[str, Any]]:
    """For each base linear name: whether W, lora_A, lora_B are trained, and the LoRA rank."""
    parts = {n: {"W": False, "A": False, "B": False, "rank": 0} for n in names}
    for full, p in adapted.named_parameters():
        name = _strip_peft(full)
        for n in names:
            if not name.startswith(n + "."):
                continue
            rest = name[len(n) + 1:]
            if rest in ("weight", "base_layer.weight"):
                parts[n]["W"] = p.requires_grad
            elif rest.startswith("lora_A."):
                parts[n]["A"] = p.requires_grad
                parts[n]["rank"] = p.shape[0]
            elif rest.startswith("lora_B."):
                parts[n]["B"] = p.requires_grad
            break
    return parts


def analytic_breakdown(adapted: nn.Module, inputs: dict[str, LinearInput], *, dtype: str,
                       quantized_numels: list[int] | None = None, batch_bytes: int = 0,
                       checkpoints: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes per term (module docstring) for a model with its method applied; ``inputs`` from
    :func:`linear_inputs` on the base model; ``quantized_numels``: weights stored as NF4;
    ``checkpoints``: with gradient checkpointing, block name -> bytes of its input (:func:`block_inputs`)."""
    seen: set[int] = set()
    params = grads = states = copies = 0
    for p in adapted.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = p.numel() * p.element_size()
        params += size
        if p.requires_grad:
            grads += size
            states += 2 * size + 4
    buffers = sum(b.numel() * b.element_size() for b in adapted.buffers())
    if quantized_numels:
        item = torch.empty((), dtype=compute_dtype(dtype)).element_size()
        params += sum(nf4_bytes(n) for n in quantized_numels) - item * sum(quantized_numels)
    if dtype == "mixed":
        copies = 2 * sum(m.weight.numel() for m in adapted.modules() if isinstance(m, nn.Linear))
    act_item = 2 if dtype in ("bf16", "mixed") else 4
    parts = trained_parts(adapted, list(inputs))

    def saved(names: list[str]) -> int:
        """Elements the block linears ``names`` keep for backward: X (once per shared input), X A."""
        saved_x: dict[int, int] = {}
        xa = 0
        for n in names:
            li = inputs[n]
            if parts[n]["W"] or parts[n]["A"]:
                saved_x[li.shared_id] = li.tokens * li.d_in
            if parts[n]["B"]:
                xa += li.tokens * parts[n]["rank"]
        return sum(saved_x.values()) + xa

    if checkpoints:
        per_block = [saved([n for n in inputs if n.startswith(b + ".")]) for b in checkpoints]
        acts = sum(checkpoints.values()) + act_item * max(per_block, default=0)
    else:
        acts = act_item * saved(list(inputs))
    temps = 2 * act_item * max((li.tokens * max(li.d_in, li.d_out) for li in inputs.values()), default=0)
    return {"parameters": params, "buffers": buffers, "gradients": grads, "optimizer_states": states,
            "weight_copies": copies, "activations": acts, "temporaries": temps, "other": batch_bytes}


def adapter_inputs(adapted: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, LinearInput]:
    """:func:`linear_inputs` of the Houlsby adapters' linears (none for other methods), from one fake forward
    of the adapted model; their inputs never share a tensor with a base linear's."""
    from lorafa_repro.methods.adapter import adapter_linear_names

    names = adapter_linear_names(adapted)
    if not names:
        return {}
    mode = FakeTensorMode()
    fake_from_meta(adapted, mode)
    adapted.train()
    with mode:
        fake_batch = {k: torch.empty(v.shape, dtype=v.dtype).fill_(5) for k, v in batch.items()}
        seen = linear_inputs(adapted, fake_batch, names)
    return {n: LinearInput(li.tokens, li.d_in, li.d_out, shared_id=-1 - i) for i, (n, li) in enumerate(seen.items())}


def analytic(cfg: ProbeConfig) -> dict[str, Any]:
    """The analytic backend for a table cell."""
    from lorafa_repro.methods import block_linears, get_method

    with torch.device("meta"):
        base = build_base_model(cfg)
        adapted = build_base_model(cfg)
    names = block_linears(base)
    adapted = apply_probe_method(adapted, cfg, simulate_4bit=True)
    mode = FakeTensorMode()
    fake_from_meta(base, mode)
    base.train()
    with mode:
        batch = make_batch(cfg, base.config.vocab_size, "cpu")
        inputs = linear_inputs(base, batch, names)
        checkpoints = block_inputs(base, batch, list(transformer_blocks(base))) if cfg.gradient_checkpointing else None
    inputs.update(adapter_inputs(adapted, batch))
    batch_bytes = sum(t.numel() * t.element_size() for t in batch.values())
    quantized = quantized_weight_numels(cfg) if get_method(cfg.method).quantize_4bit else None
    parts = analytic_breakdown(adapted, inputs, dtype=cfg.dtype, quantized_numels=quantized, batch_bytes=batch_bytes,
                               checkpoints=checkpoints)
    total = sum(parts.values())
    return {
        "backend": "analytic",
        "device": "none (formula)",
        "counter": "paper §2.2 terms over real shapes (+ one layer's backward gradients)",
        "peak_bytes": total,
        "breakdown": parts,
        "breakdown_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
        "params": param_counts(cfg),
    }
