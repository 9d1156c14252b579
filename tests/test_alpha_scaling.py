"""method.alpha_scaling (issue #20): standard = alpha / r, rslora = alpha / sqrt(r), for every LoRA-family method,
in the forward pass, in lora_fa_v2's projected-gradient optimizer, and in PEFT's saved adapter format."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import RobertaForSequenceClassification

from conftest import compose_cfg
from lorafa_repro.methods import adapter_scale, apply_method, build_optimizer, method_options
from lorafa_repro.models import shipped_config

RANK, ALPHA = 4, 8.0  # rank 4: alpha / r = 2 and alpha / sqrt(r) = 4 differ
SCALINGS = ("standard", "rslora")


def _randomize_b(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)


def test_adapter_scale_formula() -> None:
    for rank in (1, 4, 64):
        assert adapter_scale(16.0, rank, "standard") == pytest.approx(16.0 / rank)
        assert adapter_scale(16.0, rank, "rslora") == pytest.approx(16.0 / math.sqrt(rank))
    with pytest.raises(ValueError, match="alpha_scaling"):
        adapter_scale(16.0, 4, "sqrt")


@pytest.mark.parametrize("method", ["lora", "lora_fa", "lora_fa_v2"])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_forward_adds_scale_times_bax(method: str, scaling: str) -> None:
    """One adapted linear: output - W x - b == scale * B A x, the scale from the formula (lora_fa: fused node)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(lin=nn.Linear(6, 5)))
    base = copy.deepcopy(model)
    adapted = apply_method(model, method, rank=RANK, alpha=ALPHA, target_modules=["lin"], modules_to_save=[],
                           alpha_scaling=scaling)
    _randomize_b(adapted)
    layer = next(m for m in adapted.modules() if isinstance(m, LoraLayer))
    x = torch.randn(3, 6)
    delta = adapted(x) - base(x)
    bax = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(delta, adapter_scale(ALPHA, RANK, scaling) * bax)


@pytest.mark.parametrize("method", ["lora", "lora_fa", "lora_fa_v2", "qlora", "qlora_fa"])
def test_every_adapted_layer_carries_the_scale(method: str) -> None:
    for scaling in SCALINGS:
        torch.manual_seed(0)
        model = RobertaForSequenceClassification(shipped_config("tiny-roberta", num_labels=2))
        adapted = apply_method(model, method, rank=RANK, alpha=ALPHA, alpha_scaling=scaling)
        scales = [m.scaling["default"] for m in adapted.modules() if isinstance(m, LoraLayer)]
        assert scales and all(s == pytest.approx(adapter_scale(ALPHA, RANK, scaling)) for s in scales), scales


@pytest.mark.parametrize("scaling", SCALINGS)
def test_lora_fa_v2_projection_uses_the_scale(scaling: str) -> None:
    """PEFT's LoRA-FA optimizer divides B's projected gradient by s^2: s must be the module's alpha_scaling."""
    torch.manual_seed(0)
    model = apply_method(RobertaForSequenceClassification(shipped_config("tiny-roberta", num_labels=2)),
                         "lora_fa_v2", rank=RANK, alpha=ALPHA, alpha_scaling=scaling)
    opt = build_optimizer(model, "lora_fa_v2", lr=1e-3, weight_decay=0.0, rank=RANK, alpha=ALPHA)
    group = opt.param_groups[0]
    b_scales = [s for n, s in zip(group["names"], group["scaling_factors"]) if "lora_B" in n]
    assert b_scales and all(s == pytest.approx(adapter_scale(ALPHA, RANK, scaling)) for s in b_scales)


@pytest.mark.parametrize("method", ["lora", "lora_fa"])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_saved_adapter_loads_in_peft_with_identical_logits(method: str, scaling: str, tmp_path) -> None:
    torch.manual_seed(0)
    base = RobertaForSequenceClassification(shipped_config("tiny-roberta", num_labels=2)).eval()
    model = apply_method(copy.deepcopy(base), method, rank=RANK, alpha=ALPHA, alpha_scaling=scaling).eval()
    _randomize_b(model)
    ids = torch.randint(5, 200, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["use_rslora"] is (scaling == "rslora")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_config_reaches_apply_method() -> None:
    cfg = compose_cfg(["method=lora_fa", "method.alpha_scaling=rslora", "model=tiny_roberta"])
    assert method_options(cfg.method)["alpha_scaling"] == "rslora"


def test_rslora_on_a_method_without_lora_scale_is_refused() -> None:
    model = RobertaForSequenceClassification(shipped_config("tiny-roberta", num_labels=2))
    for method in ("ft", "adapter"):
        with pytest.raises(ValueError, match="no LoRA scale"):
            apply_method(model, method, rank=RANK, alpha=ALPHA, alpha_scaling="rslora")
