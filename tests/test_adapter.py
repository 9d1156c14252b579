"""Houlsby adapters (methods/adapter.py): placement and formula per family, init, trainables, save/load."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lorafa_repro import apply_method
from lorafa_repro.methods.adapter import adapter_sites, load_adapter, save_adapter
from lorafa_repro.models import model_from_config, shipped_config

FAMILIES = {"bert": ("tiny-bert", "encoder", "classification"),
            "roberta": ("tiny-roberta", "encoder", "classification"), "t5": ("tiny-t5", "encoder_decoder", "lm"),
            "llama": ("tiny-llama", "decoder", "lm")}
ENCODERS = ("bert", "roberta")


def tiny(family: str, seed: int = 0) -> nn.Module:
    name, arch, kind = FAMILIES[family]
    torch.manual_seed(seed)
    return model_from_config(shipped_config(name), arch=arch, task_kind=kind).eval()


def batch(family: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 250, (2, 10), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "labels": torch.tensor([0, 1]) if family in ENCODERS else ids}


def randomize_adapters(model: nn.Module) -> None:
    """Adapters far from identity, so a misplaced or wrong adapter changes the output."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapters." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_roberta_block_equals_houlsby_formula_by_hand() -> None:
    """One adapted RoBERTa layer, written out: LN(h + A(dropout(dense(attn))) ...), A(x) = x + U relu(D x)."""
    model = apply_method(tiny("roberta"), "adapter", rank=3, alpha=None, adapter_nonlinearity="relu")
    randomize_adapters(model)
    layer = model.roberta.encoder.layer[0]
    x = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def adapter(a, h):
        return h + torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias

    with torch.no_grad():
        att = layer.attention
        sa = att.self
        q, k, v = (lin(x).view(2, 5, -1, sa.attention_head_size).transpose(1, 2)
                   for lin in (sa.query, sa.key, sa.value))
        ctx = torch.softmax(q @ k.transpose(-1, -2) / sa.attention_head_size**0.5, -1) @ v
        ctx = ctx.transpose(1, 2).reshape(2, 5, -1)
        h1 = att.output.LayerNorm(adapter(layer.adapters["attn"], att.output.dense(ctx)) + x)
        ffn = layer.output.dense(layer.intermediate(h1))
        expected = layer.output.LayerNorm(adapter(layer.adapters["ffn"], ffn) + h1)
        got = layer(x)
        got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the unadapted layer differs: the adapters are really on the path
    assert (layer.output.LayerNorm(ffn + h1) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_near_identity_init_and_trainables(family: str) -> None:
    base = tiny(family)
    b = batch(family)
    with torch.no_grad():
        y0 = base(**b).logits
    model = apply_method(tiny(family), "adapter", rank=4, alpha=None)
    with torch.no_grad():
        y1 = model(**b).logits
    assert (y0 - y1).abs().max() < 1e-3
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    n_blocks = len([n for n in trained if n.endswith("adapters.attn.down.weight")])
    expected_blocks = {"bert": 2, "roberta": 2, "t5": 4, "llama": 2}[family]  # T5: encoder + decoder blocks
    assert n_blocks == expected_blocks
    assert all(".adapters." in n or "norm" in n.lower() or n.startswith(("classifier", "bert.pooler")) for n in trained)
    assert any("norm" in n.lower() for n in trained)
    assert (family not in ENCODERS) or any(n.startswith("classifier") for n in trained)
    # frozen norms by option
    frozen = apply_method(tiny(family), "adapter", rank=4, alpha=None, adapter_train_norms=False,
                          adapter_train_embed_norm=False)
    assert not any("norm" in n.lower() for n, p in frozen.named_parameters() if p.requires_grad)
    # gradients reach the first block's adapter
    model.train()
    model(**b).loss.backward()
    first = next(p for n, p in model.named_parameters() if n.endswith("adapters.attn.up.weight"))
    assert first.grad is not None and first.grad.abs().sum() > 0


#: the blocks' norm layers and the embeddings' LayerNorm of each family, by parameter name
BLOCK_NORMS = {"bert": r"bert\.encoder\.layer\.\d\.(attention\.)?output\.LayerNorm\.",
               "roberta": r"roberta\.encoder\.layer\.\d\.(attention\.)?output\.LayerNorm\.",
               "t5": r"(encoder|decoder)\.block\.\d\.layer\.\d\.layer_norm\.",
               "llama": r"model\.layers\.\d\.(input|post_attention)_layernorm\."}
EMBED_NORMS = {"bert": "bert.embeddings.LayerNorm.", "roberta": "roberta.embeddings.LayerNorm."}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("norms", [True, False])
@pytest.mark.parametrize("embed_norm", [True, False])
def test_exactly_the_expected_parameters_train(family: str, norms: bool, embed_norm: bool) -> None:
    """Adapters, the head, the blocks' norms (option) and the embeddings' LayerNorm (option; BERT/RoBERTa only:
    T5's and LLaMA's final norms stay frozen), nothing else; Houlsby's count 2L(2dm + d + m) per stack."""
    model = apply_method(tiny(family), "adapter", rank=4, alpha=None, adapter_train_norms=norms,
                         adapter_train_embed_norm=embed_norm)
    names = [n for n, _ in model.named_parameters()]
    wanted = {n for n in names if ".adapters." in n or n.startswith(("classifier.", "bert.pooler."))
              or (norms and re.match(BLOCK_NORMS[family], n))
              or (embed_norm and family in EMBED_NORMS and n.startswith(EMBED_NORMS[family]))}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    assert sum(n.startswith(EMBED_NORMS.get(family, "-")) for n in wanted) == (2 if embed_norm and family in
                                                                               EMBED_NORMS else 0)
    d, m, blocks = model.config.hidden_size if family != "t5" else model.config.d_model, 4, len(
        [n for n in names if n.endswith("adapters.attn.down.weight")])
    assert sum(p.numel() for n, p in model.named_parameters() if ".adapters." in n) == blocks * 2 * (2 * d * m + d + m)
    model.train()
    model(**batch(family)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in wanted)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_sites_per_family(family: str) -> None:
    model = tiny(family)
    block = model.encoder.block[0] if family == "t5" else model.model.layers[0]
    layout, attn, ffn = adapter_sites(block)
    assert layout == family
    if family == "t5":
        assert attn is block.layer[0].dropout and ffn is block.layer[-1].dropout
    else:
        assert attn is block.self_attn.o_proj and ffn is block.mlp.down_proj


def test_unknown_architecture_error() -> None:
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 4})()
            self.blocks = nn.ModuleList([Block(), Block()])

    with pytest.raises(ValueError, match="does not know where the attention and FFN outputs of a Block.*Fix:"):
        apply_method(Net(), "adapter", rank=2, alpha=None, modules_to_save=[])


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_save_load_round_trip(family: str, tmp_path) -> None:
    model = apply_method(tiny(family), "adapter", rank=4, alpha=None, adapter_nonlinearity="tanh")
    randomize_adapters(model)
    b = batch(family)
    with torch.no_grad():
        want = model(**b).logits
    save_adapter(model, tmp_path / "adapter.pt")
    saved = torch.load(tmp_path / "adapter.pt", weights_only=True)["state_dict"]
    assert sum(v.numel() for v in saved.values()) < 0.2 * sum(p.numel() for p in model.parameters())
    fresh = load_adapter(tiny(family), tmp_path / "adapter.pt")  # same base seed, adapters inserted and loaded
    with torch.no_grad():
        got = fresh(**b).logits
    torch.testing.assert_close(got, want)
    other = load_adapter(tiny(family, seed=1), tmp_path / "adapter.pt")  # a different base: different output
    with torch.no_grad():
        assert (other(**b).logits - want).abs().max() > 1e-3


def test_adapter_learns_a_batch() -> None:
    from lorafa_repro.methods import build_optimizer

    model = apply_method(tiny("roberta"), "adapter", rank=4, alpha=None).train()
    g = torch.Generator().manual_seed(3)
    ids, y = torch.randint(5, 250, (16, 12), generator=g), torch.randint(0, 2, (16,), generator=g)
    opt = build_optimizer(model, "adapter", lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(10):
        loss = model(input_ids=ids, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_run_with_method_adapter_end_to_end(synthetic_glue, tmp_path) -> None:
    from conftest import compose_cfg
    from lorafa_repro.run import run

    cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=16",
                       "trainer.max_steps=3", "method=adapter", "method.rank=4", "method.adapter_nonlinearity=relu",
                       "method.adapter_train_norms=false", f"task.data_dir={synthetic_glue}"])
    result = run(cfg, tmp_path)
    assert result["status"] == "success"
    d, r, blocks, head = 32, 4, 2, 32 * 32 + 32 + 32 * 2 + 2  # tiny-roberta: hidden 32, 2 layers
    embed_norm = 2 * d  # trained by default (method.adapter_train_embed_norm=true), the blocks' norms are off here
    assert result["params"]["trainable"] == blocks * 2 * (d * r + r + r * d + d) + head + embed_norm
