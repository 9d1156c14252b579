"""Method registry: FT, LoRA, LoRA-FA, QLoRA by short name.

Where each method lives:
  ft      -> methods/ft.py        every weight trained
  lora    -> methods/lora.py      PEFT LoRA (A and B trained)
  lora_fa -> methods/lora_fa.py   the paper's LoRA-FA v1: A frozen, B trained
  qlora   -> methods/lora.py      NF4 4-bit base + PEFT LoRA
  lora_fa_v2 -> methods/lora_fa_v2.py  PEFT's create_lorafa_optimizer (the paper's LATER version: projected dB)
  qlora_fa   -> methods/qlora_fa.py    NF4 4-bit base + the memory-optimal LoRA-FA layer
  adapter    -> methods/adapter.py     Houlsby bottleneck adapters (rank = bottleneck size)
Method options every method accepts (``method.s2_attn``, ``method.trainable_extra``: methods/long_context.py;
``method.adapter_*``: methods/adapter.py) travel through :func:`method_options`.
Add a method by writing its ``apply_*`` function and one ``Method`` entry below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorafa_repro.methods.adapter import apply_adapter
from lorafa_repro.methods.ft import apply_ft
from lorafa_repro.methods.lora import ALPHA_SCALINGS, adapter_scale, apply_lora, apply_qlora
from lorafa_repro.methods.lora_fa import apply_lora_fa
from lorafa_repro.methods.lora_fa_v2 import apply_lora_fa_v2, make_lora_fa_v2_optimizer
from lorafa_repro.methods.qlora_fa import apply_qlora_fa  # also registers the 4-bit LoRA-FA layer in lora_fa
from lorafa_repro.methods.targets import block_linears, head_modules, resolve_target_modules

# (model, *, rank, alpha, lr, weight_decay) -> optimizer; None = the suite's AdamW.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    apply: Callable[..., nn.Module]
    uses_adapters: bool = True
    quantize_4bit: bool = False
    make_optimizer: Optional[OptimizerFactory] = None
    uses_alpha: bool = True  # False: method.alpha is unused (adapters have no LoRA scaling)

    @property
    def has_lora_scale(self) -> bool:
        """True when B A x is scaled by alpha / r (or alpha / sqrt(r)): method.alpha_scaling applies."""
        return self.uses_adapters and self.uses_alpha


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ft", "full fine-tuning", apply_ft, uses_adapters=False),
        Method("lora", "LoRA via PEFT (A and B trained)", apply_lora),
        Method("lora_fa", "LoRA-FA, paper v1 (A frozen at random init, B trained with AdamW)", apply_lora_fa),
        Method("qlora", "QLoRA: NF4 + double-quant 4-bit base (bitsandbytes) + PEFT LoRA", apply_qlora,
               quantize_4bit=True),
        Method("lora_fa_v2", "LoRA-FA v2 (arXiv 2308.03303v2, not the v1 reproduced here): PEFT's "
               "create_lorafa_optimizer, A frozen, B's gradient projected", apply_lora_fa_v2,
               make_optimizer=make_lora_fa_v2_optimizer),
        Method("qlora_fa", "QLoRA-FA: NF4 + double-quant 4-bit base + LoRA-FA (only XA kept for backward)",
               apply_qlora_fa, quantize_4bit=True),
        Method("adapter", "Houlsby bottleneck adapters after attention and FFN outputs (rank = bottleneck), "
               "block norms trained by option", apply_adapter, uses_alpha=False),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}. Fix: one of {', '.join(sorted(METHODS))}") from None


def apply_method(
    model: nn.Module,
    method: str,
    *,
    rank: int | None = 8,
    alpha: float | None = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
    compute_dtype: torch.dtype = torch.float32,
    adapter_nonlinearity: str = "gelu",
    adapter_train_norms: bool = True,
    adapter_train_embed_norm: bool = True,
    s2_attn: bool = False,
    s2_group_fraction: float = 0.25,
    s2_shift: str = "offset",
    trainable_extra: list[str] | tuple[str, ...] | None = None,
    alpha_scaling: str = "standard",
) -> nn.Module:
    """Adapt ``model`` with ``method`` and return the model to train.

    ``target_modules``: suffixes of linear-layer names (``["query", "value"]``), or ``None`` for all
    linear layers in the transformer blocks (the paper's default). ``modules_to_save``: modules trained in
    full besides the adapters; ``None`` = the model's classification head if it has one.
    ``adapter_nonlinearity`` / ``adapter_train_norms`` / ``adapter_train_embed_norm``: method=adapter only
    (methods/adapter.py).
    ``s2_attn``: LongLoRA's shifted sparse attention in training (LLaMA-architecture models, any method),
    groups of ``s2_group_fraction`` of the sequence, the shifted heads partitioned by ``s2_shift`` (``offset``,
    causal, or ``roll``, the paper's pseudo-code); ``trainable_extra``: ``embed`` and/or ``norm`` trained in
    full besides the method's own parameters (LongLoRA trains both); see methods/long_context.py.
    ``alpha_scaling``: the LoRA scale, ``standard`` (alpha / r) or ``rslora`` (alpha / sqrt(r)), for every
    method with a LoRA scale (``Method.uses_alpha``); ``rslora`` on any other method is an error.
    """
    from lorafa_repro.methods.long_context import enable_s2_attn, train_extra

    spec = get_method(method)
    if alpha_scaling != "standard" and not spec.has_lora_scale:
        raise ValueError(f"{method} has no LoRA scale; alpha_scaling={alpha_scaling!r} would be ignored")
    if s2_attn:
        enable_s2_attn(model, s2_group_fraction, s2_shift)
    if not spec.uses_adapters:
        return train_extra(spec.apply(model), trainable_extra)
    if rank is None or rank <= 0:
        raise ValueError(f"{method} needs rank > 0, got {rank}")
    if spec.uses_alpha and (alpha is None or alpha <= 0):
        raise ValueError(f"{method} needs alpha > 0, got {alpha}")
    save = head_modules(model) if modules_to_save is None else modules_to_save
    if method == "adapter":
        adapted = spec.apply(model, rank=rank, modules_to_save=save, adapter_nonlinearity=adapter_nonlinearity,
                             adapter_train_norms=adapter_train_norms, adapter_train_embed_norm=adapter_train_embed_norm)
        return train_extra(adapted, trainable_extra)
    targets = resolve_target_modules(model, target_modules)
    kwargs = dict(target_modules=targets, rank=rank, alpha=alpha, dropout=dropout, modules_to_save=save,
                  alpha_scaling=alpha_scaling)
    if spec.quantize_4bit:
        kwargs["compute_dtype"] = compute_dtype
    return train_extra(spec.apply(model, **kwargs), trainable_extra)


#: MethodConfig keys passed to :func:`apply_method` as keyword options (besides rank, alpha, dropout, targets)
OPTION_KEYS = ("adapter_nonlinearity", "adapter_train_norms", "adapter_train_embed_norm", "s2_attn",
               "s2_group_fraction", "s2_shift", "trainable_extra", "alpha_scaling")


#: The behaviour of runs stored before an option existed, for configs read back from a result.json without it
#: (a live config always has every key): the embeddings' LayerNorm stayed frozen, S2-Attn rolled, scale alpha / r.
LEGACY_OPTIONS = {"adapter_train_embed_norm": False, "s2_shift": "roll", "alpha_scaling": "standard"}


def method_options(method_cfg: Any) -> dict[str, Any]:
    """The option keys of a method config (``cfg.method``, a MethodConfig or a dict), as keyword arguments for
    :func:`apply_method`; a key the config lacks (stored before it existed) takes :data:`LEGACY_OPTIONS`."""
    get = method_cfg.get if isinstance(method_cfg, dict) else (lambda k, d=None: getattr(method_cfg, k, d))
    out = {k: get(k, LEGACY_OPTIONS.get(k)) for k in OPTION_KEYS if get(k, LEGACY_OPTIONS.get(k)) is not None}
    if "trainable_extra" in out:
        out["trainable_extra"] = list(out["trainable_extra"])
    return out


def build_optimizer(
    model: nn.Module, method: str, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8, rank: int | None = None, alpha: float | None = None,
) -> torch.optim.Optimizer:
    """The method's own optimizer if it has one, else AdamW over the trainable parameters.

    Weight decay skips biases and norm weights (1-D tensors), as in HF's run_glue.
    QLoRA on CUDA uses bitsandbytes' paged AdamW (32-bit states), as in the QLoRA paper.
    On CPU the AdamW is torch's fused kernel (as HF Trainer's default ``adamw_torch_fused``): torch's default
    there is a per-tensor Python loop, 5x slower on all-MiniLM-L6-v2's 22.7M parameters (analysis/bench_train.py).
    On CUDA torch's default (foreach) stays, the implementation the memory planner and probes model.
    """
    spec = get_method(method)
    if spec.make_optimizer is not None:
        return spec.make_optimizer(model, rank=rank, alpha=alpha, lr=lr, weight_decay=weight_decay)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    on_cuda = any(p.is_cuda for _, p in trainable)
    if spec.quantize_4bit and on_cuda:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(groups, lr=lr, betas=betas, eps=eps)
    on_cpu = all(p.device.type == "cpu" and p.dtype.is_floating_point for _, p in trainable)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True if on_cpu and trainable else None)


__all__ = ["ALPHA_SCALINGS", "METHODS", "OPTION_KEYS", "Method", "adapter_scale", "apply_method", "block_linears", "build_optimizer", "get_method",
           "head_modules", "method_options", "resolve_target_modules"]
