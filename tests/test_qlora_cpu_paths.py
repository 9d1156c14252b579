"""QLoRA and QLoRA-FA on both of bitsandbytes' CPU paths (issue #17).

bitsandbytes picks its CPU path from an ISA probe: with AVX512-BF16 (``has_avx512bf16``, read by
``Linear4bit.__init__``) it repacks 4-bit weights for a fused bf16 kernel at the first evaluation. The probe is
forced each way here, so both branches run on any x86 CPU: a model must train, evaluate and train again on either,
for the tiny test shapes (hidden 32 < blocksize 64, which bnb's repacking cannot hold) and for shapes the repacking
accepts (in_features a multiple of 64, out_features of 32), and give the same numbers on both
(methods/quantize.py's docstring says why the suite keeps one path).
"""

from __future__ import annotations

import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch

from lorafa_repro import apply_method
from lorafa_repro.models import model_from_config, shipped_config

SHAPES = {"tiny": {}, "packable": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}}


def _train_eval_train(method: str, shape: str, avx512bf16: bool, monkeypatch: pytest.MonkeyPatch
                      ) -> tuple[list[float], torch.Tensor]:
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: avx512bf16)
    config = shipped_config("tiny-roberta", num_labels=2, **SHAPES[shape])
    torch.manual_seed(0)
    model = model_from_config(config, arch="encoder", task_kind="classification")
    model = apply_method(model, method, rank=4, alpha=8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 260, (4, 12), generator=g)
    labels = torch.tensor([0, 1, 0, 1])
    losses = []

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    step()
    step()
    model.eval()
    with torch.no_grad():  # the evaluation bnb's AVX512-BF16 path repacks the weights at
        logits = model(input_ids=ids).logits
    step()  # training after an evaluation: the weights must be what trained, with autograd
    packed = [n for n, m in model.named_modules() if isinstance(m, bnb_modules.Linear4bit)
              and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert not packed, f"weights left in bnb's CPU inference layout: {packed}"
    return losses, logits


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method", ["qlora", "qlora_fa"])
def test_4bit_methods_train_evaluate_and_train_alike_with_and_without_avx512bf16(
        method: str, shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with_isa = _train_eval_train(method, shape, True, monkeypatch)
    without = _train_eval_train(method, shape, False, monkeypatch)
    assert with_isa[0] == without[0]  # bit for bit: one code path whatever the CPU says
    assert torch.equal(with_isa[1], without[1])
    assert with_isa[0][2] < with_isa[0][0]  # it learns through the evaluation


def test_every_4bit_layer_opts_out_of_the_packed_cpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    config = shipped_config("tiny-llama", **SHAPES["packable"])
    model = model_from_config(config, arch="decoder", task_kind="causal_lm")
    model = apply_method(model, "qlora", rank=4, alpha=8)
    layers = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert len(layers) == 2 * 7  # q k v o gate up down in each of 2 blocks
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
