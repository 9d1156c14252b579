"""The method registry on tiny models: what each method trains and freezes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorafa_repro import apply_method
from lorafa_repro.methods import METHODS, build_optimizer, resolve_target_modules
from lorafa_repro.models import build_model, count_parameters


def tiny(arch: str = "encoder", kind: str = "classification"):
    path = {"encoder": "tiny-roberta", "encoder_decoder": "tiny-t5", "decoder": "tiny-llama"}[arch]
    cfg = SimpleNamespace(source="shipped", path=path, tokenizer="byte", arch=arch, gguf_file=None)
    torch.manual_seed(0)
    return build_model(cfg, task_kind=kind, num_labels=2 if kind == "classification" else None)


def _batch(model, kind: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 260, (4, 12), generator=g)
    if kind == "classification":
        return {"input_ids": ids, "labels": torch.tensor([0, 1, 0, 1])}
    return {"input_ids": ids, "labels": ids.clone()}


def test_registry_has_every_method() -> None:
    assert set(METHODS) == {"ft", "lora", "lora_fa", "qlora", "lora_fa_v2", "qlora_fa", "adapter"}
    assert [m for m, spec in METHODS.items() if spec.quantize_4bit] == ["qlora", "qlora_fa"]


def test_default_targets_are_all_block_linears_not_heads() -> None:
    m = tiny()
    targets = resolve_target_modules(m, None)
    assert targets and all("classifier" not in t for t in targets)
    assert any(t.endswith("attention.self.query") for t in targets)
    assert any(t.endswith("intermediate.dense") for t in targets)
    assert resolve_target_modules(m, ["query", "value"]) == [t for t in targets if t.endswith(("query", "value"))]
    with pytest.raises(ValueError, match="match no linear layer"):
        resolve_target_modules(m, ["q_proj"])


def test_trainable_parameters_order() -> None:
    counts = {name: count_parameters(apply_method(tiny(), name, rank=4, alpha=8))["trainable"]
              for name in ("ft", "lora", "lora_fa")}
    assert counts["lora_fa"] < counts["lora"] < counts["ft"]


@pytest.mark.parametrize("arch,kind", [("encoder", "classification"), ("encoder_decoder", "seq2seq"),
                                       ("decoder", "causal")])
def test_lora_fa_freezes_a_and_trains_b(arch: str, kind: str) -> None:
    model = apply_method(tiny(arch, kind), "lora_fa", rank=4, alpha=8, dropout=0.1)
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert a_before and b_before
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    opt = build_optimizer(model, "lora_fa", lr=1e-2, weight_decay=0.1)
    batch = _batch(model, kind)
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    for n, before in a_before.items():
        assert torch.equal(params[n], before), f"{n} changed"
    assert all(not torch.equal(params[n], before) for n, before in b_before.items())


def test_qlora_base_weights_are_4bit_and_train() -> None:
    import bitsandbytes as bnb

    model = apply_method(tiny("decoder", "causal"), "qlora", rank=4, alpha=8)
    base = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert base, "no 4-bit layers"
    for m in base:
        assert m.weight.dtype == torch.uint8 and m.weight.quant_type == "nf4"
        assert m.weight.quant_state.nested, "double quantization is off"
        assert not m.weight.requires_grad
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # PEFT's 4-bit LoRA layer (merge dequantizes and requantizes), not a plain lora.Linear around Linear4bit
    from peft.tuners.lora.bnb import Linear4bit as PeftLoraLinear4bit

    assert any(isinstance(m, PeftLoraLinear4bit) for m in model.modules())
    opt = build_optimizer(model, "qlora", lr=1e-2, weight_decay=0.0)
    batch = _batch(model, "causal")
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_classification_head_is_trained_with_adapters() -> None:
    model = apply_method(tiny(), "lora", rank=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable)


def test_bad_rank_raises() -> None:
    with pytest.raises(ValueError, match="rank > 0"):
        apply_method(tiny(), "lora", rank=0)
    with pytest.raises(ValueError, match="unknown method"):
        apply_method(tiny(), "dora")
