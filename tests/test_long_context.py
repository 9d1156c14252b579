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


def tiny_llama(attn: str = "eager", **overrides):
    torch.manual_seed(0)
    config = shipped_config("tiny-llama", **overrides)
    return model_from_config(config, arch="decoder", task_kind="lm", attn_implementation=attn)


IDS = torch.randint(5, 250, (2, 16), generator=torch.Generator().manual_seed(2))
#: (query heads, key/value heads): multi-head, grouped-query, odd, odd multi-query
HEADS = {"mha-4": (4, 4), "gqa-4/2": (4, 2), "odd-5": (5, 5), "mqa-3/1": (3, 1)}


def heads(n_heads: int, n_kv: int, layers: int) -> dict[str, int]:
    """tiny-llama overrides for ``n_heads`` query heads of 8 dimensions, ``n_kv`` key/value heads."""
    return dict(num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=8, hidden_size=8 * n_heads,
                num_hidden_layers=layers)


def group_masks(n_heads: int, n: int, group: int, shift: str) -> torch.Tensor:
    """(H, N, N) bool, True where position i may attend to j: S2-Attn as the LongLoRA paper describes it, written
    out per head and position pair. Heads H//2.. (ceil(H/2) heads, LongLoRA's code) are shifted by G/2."""
    allowed = torch.zeros(n_heads, n, n, dtype=torch.bool)
    for h in range(n_heads):
        for i in range(n):
            for j in range(n):
                if h < n_heads // 2 or group == n:  # groups [0, G), [G, 2G), ...
                    ok = j <= i and i // group == j // group
                elif shift == "offset":  # groups [0, G/2), [G/2, 3G/2), ..., [N - G/2, N)
                    ok = j <= i and (i + group // 2) // group == (j + group // 2) // group
                else:  # roll: token t sits at (t - G/2) mod N, groups and the causal order are of that sequence
                    pi, pj = (i - group // 2) % n, (j - group // 2) % n
                    ok = pj <= pi and pi // group == pj // group
                allowed[h, i, j] = ok
    return allowed


def masked_attention(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def causal(q, k, v):
    s = q.shape[-2]
    return masked_attention(q, k, v, torch.ones(s, s, dtype=torch.bool).tril())


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
@pytest.mark.parametrize("shift", ["offset", "roll"])
@pytest.mark.parametrize(("heads", "group"), [(4, 4), (5, 4), (4, 8), (1, 4)])
def test_matches_explicit_group_masks(impl: str, shift: str, heads: int, group: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 16, 3, generator=g) for _ in range(3))
    got = s2_attention(q, k, v, group, scaling=3 ** -0.5, impl=impl, shift=shift)
    torch.testing.assert_close(got, masked_attention(q, k, v, group_masks(heads, 16, group, shift)))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_roll_matches_paper_pseudo_code_and_hand_checked_groups(impl: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 3, generator=g) for _ in range(3))
    torch.testing.assert_close(s2_attention(q, k, v, 4, scaling=3 ** -0.5, impl=impl, shift="roll"),
                               pseudo_code(q, k, v, 4))
    # odd H: the pseudo-code's chunk(2) shifts the last floor(H/2) heads, LongLoRA's code (and ours) ceil(H/2)
    q, k, v = (torch.randn(2, 5, 8, 3, generator=g) for _ in range(3))
    ours, paper = s2_attention(q, k, v, 4, scaling=3 ** -0.5, impl=impl, shift="roll"), pseudo_code(q, k, v, 4)
    torch.testing.assert_close(ours[:, 3:], paper[:, 3:])
    assert (ours[:, 2] - paper[:, 2]).abs().max() > 1e-2  # head 2: shifted here, not in the pseudo-code
    # hand-checked: N=8, G=4, q=0 (uniform attention over what a token sees), v = one-hot of the position
    v1 = torch.eye(8).expand(1, 4, 8, 8)
    zeros = torch.zeros(1, 4, 8, 8)
    plain = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [4], 5: [4, 5], 6: [4, 5, 6], 7: [4, 5, 6, 7]}
    # roll: tokens reordered 2 3 4 5 | 6 7 0 1, causal inside each group (the last group wraps around: 0 sees 6, 7)
    rolled = {2: [2], 3: [2, 3], 4: [2, 3, 4], 5: [2, 3, 4, 5], 6: [6], 7: [6, 7], 0: [6, 7, 0], 1: [6, 7, 0, 1]}
    # offset: groups 0 1 | 2 3 4 5 | 6 7
    offset = {0: [0], 1: [0, 1], 2: [2], 3: [2, 3], 4: [2, 3, 4], 5: [2, 3, 4, 5], 6: [6], 7: [6, 7]}
    for shift, shifted in (("roll", rolled), ("offset", offset)):
        out = s2_attention(zeros, zeros, v1, 4, scaling=1.0, impl=impl, shift=shift)
        for heads, seen in (((0, 1), plain), ((2, 3), shifted)):
            for h in heads:
                for t, js in seen.items():
                    want = torch.zeros(8)
                    want[js] = 1 / len(js)
                    torch.testing.assert_close(out[0, h, t], want)


def dependence(model, ids: torch.Tensor, read) -> torch.Tensor:
    """(..., N_out, N_in) bool: whether ``read(model, ids)`` (a (N_out, ...) tensor per sequence) at each position
    changes when one input token is replaced, for every token (all in one batch: row 0 the original)."""
    n = ids.shape[0]
    batch = ids.repeat(n + 1, 1)
    for t in range(n):
        batch[t + 1, t] = 5 + (ids[t] - 4) % 240  # another token
    with torch.no_grad():
        out = read(model, batch)  # (n + 1, N_out, ...)
    changed = (out[1:] != out[:1]).flatten(2).any(-1) if out.dim() > 2 else out[1:] != out[:1]
    return changed.T  # changed[t, i] -> [i, t]


def attn_heads_input(n_heads: int):
    """Reads the first layer's per-head attention output (o_proj's input), as (B, H, N, D) -> [B, N, H, D]."""
    def read(model, batch):
        got = {}
        proj = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.o_proj"))
        handle = proj.register_forward_pre_hook(lambda m, a: got.setdefault("x", a[0]))
        try:
            model(input_ids=batch)
        finally:
            handle.remove()
        return got["x"].unflatten(-1, (n_heads, -1))
    return read


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shift", ["offset", "roll"])
@pytest.mark.parametrize("variant", list(HEADS))
def test_group_locality_per_head_in_the_model(attn: str, shift: str, variant: str) -> None:
    """One layer: which tokens each head's output at each position depends on is exactly the head's groups
    (grouped-query and odd head counts included); in eval every head is plain causal attention."""
    n_heads, n_kv = HEADS[variant]
    model = apply_method(tiny_llama(attn, **heads(n_heads, n_kv, 1)), "lora", rank=4, alpha=16, s2_attn=True, s2_shift=shift)
    read = attn_heads_input(n_heads)
    per_head = torch.stack([dependence(model.train(), IDS[0], lambda m, b, h=h: read(m, b)[:, :, h])
                            for h in range(n_heads)])
    assert torch.equal(per_head, group_masks(n_heads, 16, 4, shift))
    full = torch.stack([dependence(model.eval(), IDS[0], lambda m, b, h=h: read(m, b)[:, :, h])
                        for h in range(n_heads)])
    assert torch.equal(full, torch.ones(n_heads, 16, 16, dtype=torch.bool).tril())


def reach(allowed: torch.Tensor, layers: int) -> torch.Tensor:
    """(N, N): which input tokens each position can depend on after ``layers`` layers of attention ``allowed``
    (any head) plus the position-wise parts."""
    step = allowed.any(0)
    out = torch.eye(step.shape[0], dtype=torch.bool)
    for _ in range(layers):
        out = (step.int() @ out.int()) > 0
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(("shift", "group_fraction"), [("offset", 0.25), ("roll", 0.25), ("offset", 0.5),
                                                       ("roll", 0.5)])
def test_causality_of_the_training_logits(attn: str, shift: str, group_fraction: float) -> None:
    """Replace token t: with ``offset`` no logit at a position < t moves (exactly); with ``roll`` the logits
    that move are the ones the wrap-around predicts through the layers, some of them before t (the leak)."""
    layers, n = 3, 16
    model = apply_method(tiny_llama(attn, **heads(4, 2, layers)), "lora", rank=4, alpha=16, s2_attn=True,
                         s2_shift=shift, s2_group_fraction=group_fraction).train()
    got = dependence(model, IDS[0], lambda m, b: m(input_ids=b).logits)
    assert torch.equal(got, reach(group_masks(4, n, int(n * group_fraction), shift), layers))
    leaks = got.triu(1)  # position i < t depends on token t
    if shift == "offset":
        assert not leaks.any()
    else:
        g2 = int(n * group_fraction) // 2
        assert leaks[:g2, n - g2:].all()  # the first G/2 positions see the last G/2 tokens in the first layer
        if group_fraction == 0.5:  # G = N/2: the whole second half reaches the start
            assert leaks[0, n // 2:].all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shift", ["offset", "roll"])
def test_one_group_equals_full_causal_attention_and_eval_is_full(attn: str, shift: str) -> None:
    base = tiny_llama(attn).train()
    with torch.no_grad():
        want = base(input_ids=IDS).logits
    one = apply_method(tiny_llama(attn), "ft", rank=None, alpha=None, s2_attn=True, s2_group_fraction=1.0,
                       s2_shift=shift).train()
    assert one.config._attn_implementation == f"s2_{attn}"
    with torch.no_grad():
        torch.testing.assert_close(one(input_ids=IDS).logits, want)
    quarter = apply_method(tiny_llama(attn), "ft", rank=None, alpha=None, s2_attn=True, s2_shift=shift).train()
    with torch.no_grad():
        sparse = quarter(input_ids=IDS).logits
        assert (sparse - want).abs().max() > 1e-3  # groups of 4: really sparse in training
        torch.testing.assert_close(quarter.eval()(input_ids=IDS).logits, base.eval()(input_ids=IDS).logits,
                                   rtol=0, atol=0)


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


@pytest.mark.parametrize("method", ["ft", "lora", "lora_fa", "qlora"])
@pytest.mark.parametrize("extra", [[], ["embed", "norm"]])
def test_exactly_the_expected_parameters_train(method: str, extra: list[str]) -> None:
    """LongLoRA(-FA): the method's own parameters plus embed/norm, nothing else (no lm_head, no frozen A)."""
    model = apply_method(tiny_llama(), method, rank=4, alpha=16, s2_attn=True, trainable_extra=extra)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    names = [n for n, _ in model.named_parameters()]
    if method == "ft":
        assert trained == set(names)
        return
    lora = {n for n in names if ".lora_B." in n or (".lora_A." in n and method != "lora_fa")}
    assert len({n for n in names if ".lora_B." in n}) == 2 * 7  # every linear of both blocks
    wanted = lora | {n for n in names if ("embed" in extra and "embed_tokens" in n)
                     or ("norm" in extra and n.rsplit(".", 2)[-2].endswith("norm"))}
    assert trained == wanted
    assert len(wanted - lora) == (1 + 2 * 2 + 1 if extra else 0)  # embeddings, 2 norms per block, final norm


def test_longlora_fa_keeps_only_xa_under_s2() -> None:
    """LongLoRA-FA (LoRA-FA + S2-Attn + embed/norm): the adapted linears save XA only, i.e. the saved activations
    equal the analytic floor (everything else measured + X A per LoRA layer); LongLoRA (LoRA) saves more."""
    from lorafa_repro.memory.saved import analytic_floor_bytes, measure_saved_bytes

    batch = {"input_ids": IDS, "labels": IDS}
    for method, at_floor in (("lora_fa", True), ("lora", False)):
        model = apply_method(tiny_llama(), method, rank=4, alpha=16, s2_attn=True,
                             trainable_extra=["embed", "norm"]).train()
        saved = measure_saved_bytes(model, batch).activation_bytes
        assert (saved == analytic_floor_bytes(model, batch)) == at_floor, method


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
    (["model=tiny_llama", "method.s2_attn=true", "method.s2_shift=wrap"], "method.s2_shift"),
    (["method=adapter", "method.adapter_nonlinearity=softmax"], "method.adapter_nonlinearity"),
])
def test_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_cfg(["method=lora", "task=glue/sst2"] + overrides))
    assert "Fix:" in str(err.value)
