"""LongLoRA (methods/long_context.py): S2-Attn against full attention and the paper's pseudo-code, gradients of
the combinations, config errors."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg
from lorafa_repro import apply_method
from lorafa_repro.methods.long_context import s2_attention
from lorafa_repro.models import model_from_config, shipped_config
from lorafa_repro.schema import ConfigError, validate


def tiny_llama(attn: str = "eager"):
    torch.manual_seed(0)
    return model_from_config(shipped_config("tiny-llama"), arch="decoder", task_kind="lm", attn_implementation=attn)


IDS = torch.randint(5, 250, (2, 16), generator=torch.Generator().manual_seed(2))


def causal(q, k, v):
    s = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def pseudo_code(q, k, v, G):
    """LongLoRA Algorithm 1, step by step, on (B, H, N, D) inputs; returns (B, H, N, D)."""
    B, H, N, D = q.shape
    qkv = torch.stack((q, k, v), dim=2).permute(0, 3, 2, 1, 4)  # (B, N, 3, H, D)
    # Key line 1: split qkv on H into 2 chunks, and shift G/2 on N
    qkv = torch.cat((qkv.chunk(2, 3)[0], qkv.chunk(2, 3)[1].roll(-G // 2, 1)), 3).view(B * N // G, G, 3, H, D)
    # standard self-attention inside each group (causal)
    gq, gk, gv = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B*N/G, H, G, D)
    out = causal(gq, gk, gv).transpose(1, 2).reshape(B, N, H, D)  # out in shape (B, N, H, D)
    # Key line 2: split out on H into 2 chunks, and then roll back G/2 on N
    out = torch.cat((out.chunk(2, 2)[0], out.chunk(2, 2)[1].roll(G // 2, 1)), 2)
    return out.transpose(1, 2)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_matches_pseudo_code_and_hand_checked_groups(impl: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 3, generator=g) for _ in range(3))
    got = s2_attention(q, k, v, 4, scaling=3 ** -0.5, impl=impl)
    torch.testing.assert_close(got, pseudo_code(q, k, v, 4))
    # hand-checked: N=8, G=4, q=0 (uniform attention over what a token sees), v = one-hot of the position
    v1 = torch.eye(8).expand(1, 4, 8, 8)
    out = s2_attention(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), v1, 4, scaling=1.0, impl=impl)
    plain = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [4], 5: [4, 5], 6: [4, 5, 6], 7: [4, 5, 6, 7]}
    # shifted heads: tokens reordered 2 3 4 5 | 6 7 0 1, causal inside each group (the last group wraps around)
    shifted = {2: [2], 3: [2, 3], 4: [2, 3, 4], 5: [2, 3, 4, 5], 6: [6], 7: [6, 7], 0: [6, 7, 0], 1: [6, 7, 0, 1]}
    for heads, seen in (((0, 1), plain), ((2, 3), shifted)):
        for h in heads:
            for t, js in seen.items():
                want = torch.zeros(8)
                want[js] = 1 / len(js)
                torch.testing.assert_close(out[0, h, t], want)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_group_equals_full_causal_attention_and_eval_is_full(attn: str) -> None:
    base = tiny_llama(attn).train()
    with torch.no_grad():
        want = base(input_ids=IDS).logits
    one = apply_method(tiny_llama(attn), "ft", rank=None, alpha=None, s2_attn=True, s2_group_fraction=1.0).train()
    assert one.config._attn_implementation == f"s2_{attn}"
    with torch.no_grad():
        torch.testing.assert_close(one(input_ids=IDS).logits, want)
    quarter = apply_method(tiny_llama(attn), "ft", rank=None, alpha=None, s2_attn=True).train()
    with torch.no_grad():
        sparse = quarter(input_ids=IDS).logits
        assert (sparse - want).abs().max() > 1e-3  # groups of 4: really sparse in training
        torch.testing.assert_close(quarter.eval()(input_ids=IDS).logits, base.eval()(input_ids=IDS).logits)


@pytest.mark.parametrize("method", ["lora", "lora_fa", "qlora"])
def test_gradients_reach_adapters_and_extra_trainables(method: str) -> None:
    model = apply_method(tiny_llama(), method, rank=4, alpha=16, s2_attn=True, trainable_extra=["embed", "norm"])
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for part in ("embed_tokens", "input_layernorm", "post_attention_layernorm", "model.norm", "lora_B"):
        hit = [g for n, g in grads.items() if part in n]
        assert hit and all(g is not None and g.abs().sum() > 0 for g in hit), part
    assert any("lora_A" in n for n in grads) == (method != "lora_fa")


def test_padded_batch_is_refused_in_training() -> None:
    model = apply_method(tiny_llama(), "lora", rank=4, alpha=16, s2_attn=True).train()
    mask = torch.ones_like(IDS)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padded batch.*Fix:"):
        model(input_ids=IDS, attention_mask=mask)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=tiny_roberta", "method.s2_attn=true"], "needs a decoder"),
    (["model=tiny_llama", "method.s2_attn=true", "task.max_seq_len=100"], "does not split into groups"),
    (["model=tiny_llama", "method.s2_attn=true", "method.s2_group_fraction=0.3"], "does not split into groups"),
    (["method.trainable_extra=[embeddings]"], "method.trainable_extra"),
    (["method=adapter", "method.adapter_nonlinearity=softmax"], "method.adapter_nonlinearity"),
])
def test_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_cfg(["method=lora", "task=glue/sst2"] + overrides))
    assert "Fix:" in str(err.value)
