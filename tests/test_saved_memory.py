"""memory/saved.py: bytes saved for backward, deduplicated by storage, by kind and by module."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model
from torch import nn

from lorafa_repro.memory.saved import analytic_floor, analytic_floor_bytes, measure_saved_bytes
from lorafa_repro.methods.lora_fa import apply_lora_fa
from lorafa_repro.methods.lora import lora_config


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 2.0  # saves nothing (scalar multiply)
        return h * h  # saves h twice: one storage


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def test_same_storage_counted_once() -> None:
    x = torch.randn(5, 7, requires_grad=True)
    report = measure_saved_bytes(Square(), x)
    assert report.activation_bytes == 5 * 7 * 4
    assert report.n_storages == 1


def test_view_counts_whole_storage() -> None:
    class SliceSquare(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 2.0
            v = h[:, :2]
            return v * v

    x = torch.randn(10, 6, requires_grad=True)
    assert measure_saved_bytes(SliceSquare(), x).activation_bytes == 10 * 6 * 4


def test_kinds_and_modules_full_training() -> None:
    model = TwoLinears()
    x = torch.randn(3, 8)
    report = measure_saved_bytes(model, {"x": x}, loss_fn=lambda out, _: out.sum())
    # first: x (batch input; W not needed as x needs no grad). relu: its output. second: relu output + W2.
    assert report.by_kind["input"] == x.numel() * 4
    assert report.by_kind["parameter"] == model.second.weight.numel() * 4
    assert report.activation_bytes == 3 * 16 * 4  # relu output, shared by relu and second: counted once
    assert set(report.activation_by_module) <= {"first", "second", "<root>"}
    assert sum(report.activation_by_module.values()) == report.activation_bytes
    assert report.total_bytes == sum(report.by_kind.values())


def test_frozen_linear_saves_only_its_weight() -> None:
    lin = nn.Linear(8, 16).requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    report = measure_saved_bytes(lin, x)
    assert report.activation_bytes == 0
    assert report.by_kind["parameter"] == lin.weight.numel() * 4


def test_autocast_weight_copy_is_param_cast() -> None:
    lin = nn.Linear(8, 16, bias=False).requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = measure_saved_bytes(lin, x)
    assert report.by_kind["param_cast"] == lin.weight.numel() * 2
    assert report.by_kind["activation"] == 0


def test_default_loss_uses_output_loss() -> None:
    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.lin(x)
            return {"loss": (out**2).mean()}

    report = measure_saved_bytes(WithLoss(), {"x": torch.randn(2, 4)})
    assert report.activation_by_module.get("<root>", 0) == 2 * 4 * 4  # pow saves out


def test_analytic_floor_single_lora_linear() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).requires_grad_(False)
    x = torch.randn(6, 32, requires_grad=True)
    targets = ["0", "2"]
    fa = apply_lora_fa(copy.deepcopy(base), target_modules=targets, rank=2, alpha=4, dropout=0.1)
    floor = analytic_floor(fa, x)
    gelu_input = 6 * 32 * 4  # GELU saves its input; everything else is XA
    assert floor.xa_bytes == 2 * 6 * 2 * 4 and floor.n_layer_calls == 2
    assert floor.rest_bytes == gelu_input
    assert analytic_floor_bytes(fa, x) == floor.total_bytes == measure_saved_bytes(fa, x).activation_bytes
    # PEFT LoRA (A trained, dropout) keeps far more: X of both layers, dropout masks and outputs.
    lora = get_peft_model(copy.deepcopy(base), lora_config(target_modules=targets, rank=2, alpha=4,
                                                              dropout=0.1))
    assert measure_saved_bytes(lora, x).activation_bytes > floor.total_bytes
    # The floor patch is temporary: the model runs its LoRA-FA forward again afterwards.
    assert measure_saved_bytes(fa, x).activation_bytes == floor.total_bytes
    assert not any("forward" in vars(m) for m in fa.modules())
