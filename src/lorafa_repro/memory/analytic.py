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
``down``: b x s x d, X of ``up``: b x s x r), from a forward of the adapted model, plus the nonlinearity's input
(b x s x r) where its backward needs it (GELU, SiLU: methods.adapter.SAVES_INPUT; ReLU and tanh reuse up's X).
The layer inputs (shapes, which layers share one) come from one forward on fake tensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

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


def trace_inputs(model: nn.Module, batch: dict[str, torch.Tensor], linears: dict[str, str],
                 blocks: dict[str, str] | None = None, autocast_dtype: torch.dtype | None = None
                 ) -> tuple[dict[str, LinearInput], dict[str, int]]:
    """Run ``model(**batch)`` once without gradients (under CPU autocast to ``autocast_dtype`` if given);
    record the input of each linear in ``linears`` and the bytes of each block's hidden-state input in
    ``blocks`` (what a checkpointed block keeps for its recomputation). Both map a report name to the
    module's path in ``model``."""
    seen: dict[str, LinearInput] = {}
    block_bytes: dict[str, int] = {}
    keep: list[torch.Tensor] = []  # keep inputs alive so id() stays unique
    ids: dict[int, int] = {}

    def on_linear(name: str, mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        keep.append(x)
        sid = ids.setdefault(id(x), len(ids))
        seen[name] = LinearInput(tokens=x.numel() // x.shape[-1], d_in=x.shape[-1], d_out=mod.out_features,
                                 shared_id=sid)

    def on_block(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        block_bytes[name] = x.numel() * x.element_size()

    handles = [model.get_submodule(path).register_forward_pre_hook(lambda m, a, n=n: on_linear(n, m, a))
               for n, path in linears.items()]
    handles += [model.get_submodule(path).register_forward_pre_hook(lambda m, a, k, n=n: on_block(n, a, k),
                                                                    with_kwargs=True)
                for n, path in (blocks or {}).items()]
    autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    try:
        with torch.no_grad(), autocast:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen, block_bytes


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
                       checkpoints: dict[str, int] | None = None,
                       extra_saved: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes per term (module docstring) for a model with its method applied; ``inputs`` from
    :func:`linear_inputs` on the base model; ``quantized_numels``: weights stored as NF4;
    ``checkpoints``: with gradient checkpointing, block name -> bytes of its input (:func:`block_inputs`);
    ``extra_saved``: elements kept for backward by a non-linear op right after the linear of that name."""
    extra_saved = extra_saved or {}
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
        """Elements the block linears ``names`` keep for backward: X (once per shared input), X A, and
        ``extra_saved`` of those names."""
        saved_x: dict[int, int] = {}
        kept = sum(extra_saved.get(n, 0) for n in names)
        for n in names:
            li = inputs[n]
            if parts[n]["W"] or parts[n]["A"]:
                saved_x[li.shared_id] = li.tokens * li.d_in
            if parts[n]["B"]:
                kept += li.tokens * parts[n]["rank"]  # X A
        return sum(saved_x.values()) + kept

    if checkpoints:
        per_block = [saved([n for n in inputs if n.startswith(b + ".")]) for b in checkpoints]
        acts = sum(checkpoints.values()) + act_item * max(per_block, default=0)
    else:
        acts = act_item * saved(list(inputs))
    temps = 2 * act_item * max((li.tokens * max(li.d_in, li.d_out) for li in inputs.values()), default=0)
    return {"parameters": params, "buffers": buffers, "gradients": grads, "optimizer_states": states,
            "weight_copies": copies, "activations": acts, "temporaries": temps, "other": batch_bytes}


def analytic(cfg: ProbeConfig) -> dict[str, Any]:
    """The analytic backend for a table cell: one fake forward of the adapted model gives every shape."""
    from lorafa_repro.methods import block_linears, get_method
    from lorafa_repro.methods.adapter import SAVES_INPUT, adapter_linear_names

    with torch.device("meta"):
        base = build_base_model(cfg)
    names = block_linears(base)
    blocks = list(transformer_blocks(base)) if cfg.gradient_checkpointing else []
    adapted = apply_probe_method(base, cfg, simulate_4bit=True)
    prefix = _peft_prefix(adapted)
    linears = {n: prefix + n for n in names} | {n: n for n in adapter_linear_names(adapted)}
    mode = FakeTensorMode()
    fake_from_meta(adapted, mode)
    adapted.train()
    with mode:
        batch = make_batch(cfg, adapted.config.vocab_size, "cpu")
        inputs, checkpoints = trace_inputs(adapted, batch, linears, {b: prefix + b for b in blocks},
                                           autocast_dtype=torch.bfloat16 if cfg.dtype == "mixed" else None)
    # Houlsby adapters' inputs never share a tensor with a base linear's (each adapter is its own X)
    adapters = set(linears) - set(names)
    inputs = {n: LinearInput(li.tokens, li.d_in, li.d_out, shared_id=-1 - i) if n in adapters else li
              for i, (n, li) in enumerate(inputs.items())}
    # an adapter's nonlinearity keeps its input (down's output: tokens x r) when its backward reads it
    act_input = {n: li.tokens * li.d_out for n, li in inputs.items()
                 if n in adapters and n.endswith(".down") and cfg.adapter_nonlinearity in SAVES_INPUT}
    batch_bytes = sum(t.numel() * t.element_size() for t in batch.values())
    quantized = quantized_weight_numels(cfg) if get_method(cfg.method).quantize_4bit else None
    parts = analytic_breakdown(adapted, inputs, dtype=cfg.dtype, quantized_numels=quantized, batch_bytes=batch_bytes,
                               checkpoints=checkpoints or None, extra_saved=act_input)
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


def _peft_prefix(adapted: nn.Module) -> str:
    """The path prefix of the base model's modules inside ``adapted`` (PEFT wraps it twice)."""
    from peft import PeftModel

    return "base_model.model." if isinstance(adapted, PeftModel) else ""
