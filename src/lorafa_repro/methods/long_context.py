"""LongLoRA's pieces (Chen et al., arXiv 2309.12307): shifted sparse attention (S2-Attn) and extra trainables.

S2-Attn, in training only: the sequence (length N) is cut into groups of G = ``group_fraction`` x N tokens and
attention is causal inside each group. Half of the heads see the groups shifted by G/2, so information flows
between neighbouring groups. The paper's pseudo-code (its Algorithm 1), which :func:`s2_attention` follows:

    qkv = cat((qkv.chunk(2, 3)[0], qkv.chunk(2, 3)[1].roll(-G/2, 1)), 3).view(B*N/G, G, 3, H, D)
    out = self_attn(qkv)                               # causal attention inside each group
    out = cat((out.chunk(2, 2)[0], out.chunk(2, 2)[1].roll(G/2, 1)), 2)

(the roll wraps around: in the shifted heads the last group holds the last G/2 and the first G/2 tokens, as in
the paper's Figure 2, and as LongLoRA's and LlamaFactory's code do it: the causal mask of one group is reused for
every group). With one group (G = N) there is nothing to shift between groups and the roll would only put the
second half of the sequence before its first half: S2-Attn is then plain causal attention. In ``eval()``
(evaluation, generation) the model attends in full, as LongLoRA does.

It plugs into transformers' attention interface: :func:`enable_s2_attn` registers ``s2_eager`` / ``s2_sdpa``
(the group attention computed the eager way or with ``scaled_dot_product_attention``, with the masks of the
matching base implementation) in ``AttentionInterface`` and ``AttentionMaskInterface`` and sets the model's
``config._attn_implementation``. LLaMA-architecture models (``model.config.model_type`` in
:data:`S2_MODEL_TYPES`) only. Padding is not masked inside groups (LongLoRA trains on full-length chunks);
a padded batch is refused.

``trainable_extra``: ``embed`` (input embeddings) and/or ``norm`` (every normalization layer) are trained in
full besides the method's parameters (LongLoRA trains both to extend the context).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

S2_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
BASE_IMPLS = ("eager", "sdpa")
EXTRA_TRAINABLES = ("embed", "norm")


def s2_groups(seq_len: int, group_fraction: float) -> int:
    """Group size G for a sequence; raises when ``seq_len`` does not split into whole, even groups."""
    n_groups = round(1 / group_fraction)
    if abs(n_groups * group_fraction - 1) > 1e-6 or seq_len % n_groups or (seq_len // n_groups) % 2:
        raise ValueError(
            f"S2-Attn: sequence length {seq_len} does not split into groups of {group_fraction} x {seq_len} tokens "
            f"with an even group size. Fix: pad/truncate sequences to a multiple of {2 * n_groups} tokens, or "
            "set method.s2_group_fraction to 1/k for an integer k"
        )
    return seq_len // n_groups


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, h, s, d = x.shape
    return x if n_rep == 1 else x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scaling: float, dropout: float,
                      training: bool, impl: str) -> torch.Tensor:
    """Causal attention over the last-but-one axis; (..., h, s, d) in and out."""
    if impl == "sdpa":
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                          dropout_p=dropout if training else 0.0)
    s = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, v)


def s2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int, *, scaling: float,
                 dropout: float = 0.0, training: bool = True, impl: str = "eager") -> torch.Tensor:
    """S2-Attn on (B, H, N, D) queries/keys/values (keys/values already repeated to H heads); returns
    (B, H, N, D). Heads ``H//2:`` see the groups shifted by G/2 (module docstring)."""
    b, h, n, d = q.shape
    if group == n:  # one group: full causal attention (module docstring)
        return _causal_attention(q, k, v, scaling=scaling, dropout=dropout, training=training, impl=impl)
    half = h // 2

    def shift(x: torch.Tensor, by: int) -> torch.Tensor:
        return torch.cat((x[:, :half], x[:, half:].roll(by, dims=2)), dim=1)

    def grouped(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (B * N/G, H, G, D)
        return x.view(b, h, n // group, group, d).transpose(1, 2).reshape(b * (n // group), h, group, d)

    qs, ks, vs = (grouped(shift(x, -group // 2)) for x in (q, k, v))
    out = _causal_attention(qs, ks, vs, scaling=scaling, dropout=dropout, training=training, impl=impl)
    out = out.view(b, n // group, h, group, d).transpose(1, 2).reshape(b, h, n, d)
    return shift(out, group // 2)


def _only_causal(mask: torch.Tensor | None) -> bool:
    """True when the 4-D mask transformers built is plain causal (no padding). Fake/meta tensors (the memory
    simulator) cannot be read: assumed causal."""
    if mask is None:
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(mask, FakeTensor) or mask.device.type == "meta":
        return True
    allowed = mask if mask.dtype == torch.bool else mask == 0
    s_q, s_k = allowed.shape[-2:]
    causal = torch.ones(s_q, s_k, dtype=torch.bool, device=allowed.device).tril(s_k - s_q)
    return bool((allowed == causal).all())


def _make_s2_forward(impl: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        base = ALL_ATTENTION_FUNCTIONS[impl] if impl != "eager" else _eager()
        if not module.training:
            return base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if not _only_causal(attention_mask):
            raise ValueError("S2-Attn training got a padded batch; LongLoRA trains on full-length chunks. "
                             "Fix: pack or truncate the training sequences to one length (no padding)")
        group = s2_groups(query.shape[2], module.config.s2_group_fraction)
        n_rep = query.shape[1] // key.shape[1]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = s2_attention(query, _repeat_kv(key, n_rep), _repeat_kv(value, n_rep), group, scaling=scale,
                           dropout=dropout, training=True, impl=impl)
        return out.transpose(1, 2).contiguous(), None

    forward.__name__ = f"s2_{impl}_attention_forward"
    return forward


def _eager():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward


def register_s2_attention() -> None:
    """Register ``s2_eager`` and ``s2_sdpa`` in transformers' attention and mask interfaces (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    for impl in BASE_IMPLS:
        AttentionInterface.register(f"s2_{impl}", _make_s2_forward(impl))
        AttentionMaskInterface.register(f"s2_{impl}", AttentionMaskInterface._global_mapping[impl])


def enable_s2_attn(model: nn.Module, group_fraction: float = 0.25) -> nn.Module:
    """Switch a LLaMA-architecture model to S2-Attn in training (full attention in eval), keeping its eager or
    SDPA kernel for the group attention."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in S2_MODEL_TYPES:
        raise ValueError(f"S2-Attn needs a LLaMA-architecture decoder ({', '.join(S2_MODEL_TYPES)}), got "
                         f"{model_type or type(model).__name__}. Fix: method.s2_attn=false or a decoder model")
    if not 0 < group_fraction <= 1:
        raise ValueError(f"s2_group_fraction must be in (0, 1], got {group_fraction}")
    current = cfg._attn_implementation or "eager"
    base = current.removeprefix("s2_")
    if base not in BASE_IMPLS:
        raise ValueError(f"S2-Attn wraps eager or sdpa attention, this model uses {current!r}. "
                         "Fix: load the model with attn_implementation='sdpa' or 'eager'")
    register_s2_attention()
    for mod in model.modules():  # every (sub)config the attention layers read
        sub = getattr(mod, "config", None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            sub._attn_implementation = f"s2_{base}"
            sub.s2_group_fraction = group_fraction
    return model


def train_extra(model: nn.Module, extra: Iterable[str] | None) -> nn.Module:
    """Make ``embed`` (input embeddings) and/or ``norm`` (every normalization layer) trainable."""
    wanted = list(extra or [])
    unknown = [e for e in wanted if e not in EXTRA_TRAINABLES]
    if unknown:
        raise ValueError(f"trainable_extra {unknown} not in {EXTRA_TRAINABLES}")
    if "embed" in wanted:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(True)
    if "norm" in wanted:
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm) or "Norm" in type(mod).__name__:
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(True)
    return model
