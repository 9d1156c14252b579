"""Bytes saved for backward during one forward pass: by layer and by kind, deduplicated by storage.

Every tensor autograd saves (``save_for_backward`` in built-in ops and custom Functions alike) passes through
``torch.autograd.graph.saved_tensors_hooks``. A saved tensor keeps its whole untyped storage alive, so it is
counted as ``storage.nbytes()``, once per storage (key: storage ``data_ptr`` + ``nbytes``; the tensors are
held until the measurement ends, so a freed address cannot be reused by another storage mid-count).

Kinds:
  parameter   storage of a model parameter (frozen W, A, B, ...): already resident, costs nothing extra
  buffer      storage of a model buffer
  input       storage of a tensor in the batch (``input_ids``, ``labels``, a test's ``x``)
  param_cast  a floating copy of a parameter in another dtype (autocast's cast of a frozen weight): same
              shape as a parameter (or its transpose), different dtype
  activation  everything else: what the forward creates and keeps for backward

Saved tensors follow the device that runs the forward: on CPU tensors the CPU's (dropout keeps a 4-byte noise
tensor). Run inside ``memory.semantics.device_semantics("cuda")`` to count what a GPU keeps (a 1-byte mask).

``by_module`` attributes a storage to the innermost module running when it is first saved (forward
pre/post hooks keep a stack of module names); ``"<outside>"`` is the loss computed after the model.

Not visible to the hooks: tensors a custom Function stashes as plain ctx attributes. Here that is
bitsandbytes' ``MatMul4Bit`` (the packed 4-bit weight, a parameter) and LoRA-FA's RNG state (5056 B per
adapted layer on CPU, 16 B on CUDA, independent of batch size). Under non-reentrant gradient checkpointing the
checkpoint's own hooks take precedence, so measure with checkpointing off.

The analytic floor (:func:`analytic_floor`) of a LoRA-style model: every LoRA layer must keep at least its
r-wide ``XA`` (to form dB), and everything outside the adapted linears saves what it saves anyway. It is
measured by running the same model with each LoRA layer replaced by ``base_layer(x) + z`` (``z`` a trainable
zero scalar: keeps the output in the autograd graph, saves nothing) and adding ``tokens * r * itemsize`` per
LoRA layer call, with ``itemsize`` of the dtype XA is computed in (the autocast dtype, else lora_A's dtype).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn

KINDS = ("activation", "param_cast", "parameter", "buffer", "input")
LossFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]


@dataclass
class SavedReport:
    """Deduplicated bytes saved for backward by one forward (+ loss)."""

    total_bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    by_module: dict[str, int] = field(default_factory=dict)  # all kinds
    activation_by_module: dict[str, int] = field(default_factory=dict)
    n_storages: int = 0

    @property
    def activation_bytes(self) -> int:
        """Bytes the forward allocates and keeps for backward: excludes parameters, buffers and inputs."""
        return self.by_kind["activation"] + self.by_kind["param_cast"]

    def activation_by_prefix(self, prefix: str) -> int:
        """Activation bytes of all modules whose name starts with ``prefix``."""
        return sum(v for k, v in self.activation_by_module.items() if k.startswith(prefix))

    def summary(self, top: int = 10) -> str:
        mib = 2.0**20
        lines = [f"saved for backward: {self.total_bytes / mib:.2f} MiB in {self.n_storages} storages"]
        lines += [f"  {k:<11} {v / mib:10.2f} MiB" for k, v in self.by_kind.items() if v]
        worst = sorted(self.activation_by_module.items(), key=lambda kv: -kv[1])[:top]
        lines += ["  top modules by activation bytes:"] + [f"    {v / mib:10.3f} MiB  {k}" for k, v in worst]
        return "\n".join(lines)


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse/nested/meta-like tensors
        return None
    return st.data_ptr(), st.nbytes()


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v)


@contextlib.contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Yield a list whose last element is the name of the innermost module currently in ``forward``."""
    stack = ["<outside>"]
    handles = []
    for name, mod in model.named_modules():
        label = name or "<root>"

        def pre(_m: nn.Module, _a: Any, label: str = label) -> None:
            stack.append(label)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            if len(stack) > 1:
                stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post, always_call=True))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _default_loss(output: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        if isinstance(output, torch.Tensor):
            return output.sum()
        raise ValueError("model output has no .loss; pass loss_fn")
    return loss


def measure_saved_bytes(model: nn.Module, batch: Mapping[str, Any] | torch.Tensor,
                        loss_fn: Optional[LossFn] = None) -> SavedReport:
    """Run ``model(**batch)`` (or ``model(batch)`` for a tensor) and the loss; count what autograd saves.

    ``loss_fn(output, batch) -> scalar`` defaults to ``output.loss`` (a plain tensor output is summed,
    which saves nothing). The graph is dropped afterwards; no backward is run.
    """
    params: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        key = _storage_key(p)
        if key is not None:
            params[key[0]] = p
    buffers = {k[0] for b in model.buffers() if (k := _storage_key(b)) is not None}
    inputs = {k[0] for t in _tensors_in(batch) if (k := _storage_key(t)) is not None}
    param_shapes: dict[tuple[int, ...], set[torch.dtype]] = defaultdict(set)
    for p in model.parameters():
        param_shapes[tuple(p.shape)].add(p.dtype)
        param_shapes[tuple(reversed(p.shape))].add(p.dtype)

    report = SavedReport()
    seen: set[tuple[int, int]] = set()
    keepalive: list[torch.Tensor] = []

    def kind_of(t: torch.Tensor, ptr: int) -> str:
        if ptr in params:
            return "parameter"
        if ptr in buffers:
            return "buffer"
        if ptr in inputs:
            return "input"
        dtypes = param_shapes.get(tuple(t.shape))
        if t.is_floating_point() and dtypes and t.dtype not in dtypes and t.dim() >= 2:
            return "param_cast"
        return "activation"

    with _module_stack(model) as stack:

        def pack(t: torch.Tensor) -> torch.Tensor:
            # Hand autograd a detached alias: returning ``t`` itself would make every saved *output* reference
            # its own grad_fn, a C++-side cycle Python's gc cannot free (the whole graph would leak).
            key = _storage_key(t)
            if key is None or key in seen:
                return t.detach()
            seen.add(key)
            keepalive.append(t.detach())
            kind = kind_of(t, key[0])
            nbytes = key[1]
            module = stack[-1]
            report.total_bytes += nbytes
            report.n_storages += 1
            report.by_kind[kind] += nbytes
            report.by_module[module] = report.by_module.get(module, 0) + nbytes
            if kind in ("activation", "param_cast"):
                report.activation_by_module[module] = report.activation_by_module.get(module, 0) + nbytes
            return t.detach()

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(**batch) if isinstance(batch, Mapping) else model(batch)
            loss = (loss_fn or _default_loss)(output, batch if isinstance(batch, Mapping) else {})
        del output, loss
    keepalive.clear()
    return report


@dataclass
class FloorReport:
    """Analytic floor of saved activation bytes for a LoRA-style model (see module docstring)."""

    rest_bytes: int  # everything outside the LoRA layers (measured)
    xa_bytes: int  # sum over LoRA layer calls of tokens * r * itemsize
    n_layer_calls: int

    @property
    def total_bytes(self) -> int:
        return self.rest_bytes + self.xa_bytes


@contextlib.contextmanager
def _lora_layers_as_floor(model: nn.Module) -> Iterator[list[int]]:
    """Temporarily make every active LoRA layer compute ``base_layer(x) + z``; collect the XA bytes."""
    from peft.tuners.lora import LoraLayer

    xa_bytes: list[int] = []
    patched: list[nn.Module] = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        active = [a for a in module.active_adapters if a in module.lora_A]
        if not active:
            continue
        rank = sum(module.r[a] for a in active)
        a_dtype = module.lora_A[active[0]].weight.dtype
        zero = nn.Parameter(torch.zeros((), device=module.lora_A[active[0]].weight.device))

        def floor_forward(x: torch.Tensor, *args: Any, _m: nn.Module = module, _r: int = rank,
                          _dt: torch.dtype = a_dtype, _z: nn.Parameter = zero, **kwargs: Any) -> torch.Tensor:
            dev = x.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else _dt
            tokens = x.numel() // x.shape[-1]
            xa_bytes.append(tokens * _r * torch.empty((), dtype=dtype).element_size())
            return _m.get_base_layer()(x, *args, **kwargs) + _z

        module.forward = floor_forward  # instance attribute shadows the class's forward
        patched.append(module)
    try:
        yield xa_bytes
    finally:
        for module in patched:
            del module.forward


def analytic_floor(model: nn.Module, batch: Mapping[str, Any] | torch.Tensor,
                   loss_fn: Optional[LossFn] = None) -> FloorReport:
    """Floor of saved activation bytes for this PEFT LoRA model: rest of the model + XA per LoRA layer."""
    with _lora_layers_as_floor(model) as xa:
        rest = measure_saved_bytes(model, batch, loss_fn).activation_bytes
    return FloorReport(rest_bytes=rest, xa_bytes=sum(xa), n_layer_calls=len(xa))


def analytic_floor_bytes(model: nn.Module, batch: Mapping[str, Any] | torch.Tensor,
                         loss_fn: Optional[LossFn] = None) -> int:
    """``analytic_floor(...).total_bytes``."""
    return analytic_floor(model, batch, loss_fn).total_bytes


__all__ = ["FloorReport", "KINDS", "SavedReport", "analytic_floor", "analytic_floor_bytes",
           "measure_saved_bytes"]
