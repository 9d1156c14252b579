"""LongLoRA's pieces (Chen et al., arXiv 2309.12307): shifted sparse attention (S2-Attn) and extra trainables.

S2-Attn, in training only: the sequence (length N) is cut into groups of G = ``group_fraction`` x N tokens and
attention is causal inside each group. Half of the heads see the groups shifted by G/2, so information flows
between neighbouring groups. Which heads shift: ``H//2:`` of the H query heads (keys/values of grouped-query
models are repeated to H heads first), i.e. ceil(H/2) of them, as LongLoRA's released code does
(``qkv[:, num_heads // 2:]``); for an odd H the paper's ``chunk(2, ...)`` would shift only the last floor(H/2).
Two partitions of the shifted heads (``shift``, config ``method.s2_shift``):

  ``offset`` (default)  the shifted heads' groups start at G/2: [0, G/2), [G/2, 3G/2), ..., [N - G/2, N); the
                        first and last G/2 tokens form two short groups of their own. Causal: no token ever sees
                        a later one. This is the partition of LongLoRA's later flash-attention path.
  ``roll``              the paper's pseudo-code (its Algorithm 1), kept for fidelity:

    qkv = cat((qkv.chunk(2, 3)[0], qkv.chunk(2, 3)[1].roll(-G/2, 1)), 3).view(B*N/G, G, 3, H, D)
    out = self_attn(qkv)                               # causal attention inside each group
    out = cat((out.chunk(2, 2)[0], out.chunk(2, 2)[1].roll(G/2, 1)), 2)

                        The roll wraps around: in the shifted heads the last group holds the last G/2 tokens
                        followed by the first G/2, and the causal mask lets the first G/2 tokens attend to the
                        last G/2. **Not causal**: the logits at positions < G/2 depend on tokens N - G/2..N-1,
                        and through further layers the leak spreads (with N/G = 4 and 8 layers every position
                        depends on its own label). LongLoRA's authors acknowledge it (LongLoRA issues #15, #90).

Both partitions agree on every token from G/2 to N - G/2 - 1 of the shifted heads and on all unshifted heads.
With one group (G = N) there is nothing to shift between groups: S2-Attn is then plain causal attention (either
``shift``). In ``eval()`` (evaluation, generation) the model attends in full, as LongLoRA does.

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
#: partitions of the shifted heads (module docstring); the first is the default
S2_SHIFTS = ("offset", "roll")


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


def check_shift(shift: str) -> None:
    if shift not in S2_SHIFTS:
        raise ValueError(f"method.s2_shift must be one of {', '.join(S2_SHIFTS)}; got {shift!r}. "
                         "Fix: method.s2_shift=offset (causal) or roll (the paper's pseudo-code)")


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
                 dropout: float = 0.0, training: bool = True, impl: str = "eager",
                 shift: str = "offset") -> torch.Tensor:
    """S2-Attn on (B, H, N, D) queries/keys/values (keys/values already repeated to H heads); returns
    (B, H, N, D). Heads ``H//2:`` see the groups shifted by G/2, partitioned by ``shift`` (module docstring)."""
    check_shift(shift)
    b, h, n, d = q.shape
    if group == n:  # one group: full causal attention (module docstring)
        return _causal_attention(q, k, v, scaling=scaling, dropout=dropout, training=training, impl=impl)
    half, g2 = h // 2, group // 2

    def attend(xs: tuple[torch.Tensor, ...], size: int) -> torch.Tensor:
        """Causal attention inside consecutive groups of ``size`` tokens of (B, h', M, D) tensors."""
        hh, m = xs[0].shape[1], xs[0].shape[2]
        grouped = [x.reshape(b, hh, m // size, size, d).transpose(1, 2).reshape(b * (m // size), hh, size, d)
                   for x in xs]
        out = _causal_attention(*grouped, scaling=scaling, dropout=dropout, training=training, impl=impl)
        return out.view(b, m // size, hh, size, d).transpose(1, 2).reshape(b, hh, m, d)

    if shift == "roll":  # one group attention over all heads, the shifted half rolled by -G/2 and back
        def rolled(x: torch.Tensor, by: int) -> torch.Tensor:
            return torch.cat((x[:, :half], x[:, half:].roll(by, dims=2)), dim=1)

        return rolled(attend(tuple(rolled(x, -g2) for x in (q, k, v)), group), g2)
    plain = attend(tuple(x[:, :half] for x in (q, k, v)), group)
    middle = attend(tuple(x[:, half:, g2:n - g2] for x in (q, k, v)), group)
    # the first and the last G/2 tokens of the shifted heads: two short groups, side by side
    edges = attend(tuple(torch.cat((x[:, half:, :g2], x[:, half:, n - g2:]), dim=2) for x in (q, k, v)), g2)
    shifted = torch.cat((edges[:, :, :g2], middle, edges[:, :, g2:]), dim=2)
    return torch.cat((plain, shifted), dim=1)


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
                           dropout=dropout, training=True, impl=impl, shift=module.config.s2_shift)
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


def enable_s2_attn(model: nn.Module, group_fraction: float = 0.25, shift: str = "offset") -> nn.Module:
    """Switch a LLaMA-architecture model to S2-Attn in training (full attention in eval), keeping its eager or
    SDPA kernel for the group attention; ``shift``: the shifted heads' partition (module docstring)."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in S2_MODEL_TYPES:
        raise ValueError(f"S2-Attn needs a LLaMA-architecture decoder ({', '.join(S2_MODEL_TYPES)}), got "
                         f"{model_type or type(model).__name__}. Fix: method.s2_attn=false or a decoder model")
    if not 0 < group_fraction <= 1:
        raise ValueError(f"s2_group_fraction must be in (0, 1], got {group_fraction}")
    check_shift(shift)
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
            sub.s2_shift = shift
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
