"""Memory probe cells for Houlsby adapters and S2-Attn (issue 10): simulate against real CPU allocations, the
analytic adapter term by hand, Table 4's extra rows."""

from __future__ import annotations

import pytest
import torch

from lorafa_repro.memory.probe import ProbeConfig, probe
from lorafa_repro.memory.table4 import table_cells

TINY = dict(rank=4, batch_size=8, seq_len=32, target_len=16)


@pytest.mark.parametrize("model,extra", [
    pytest.param("tiny-roberta", {}, marks=pytest.mark.slow),  # ~4 s; the analytic adapter test below stays fast
    ("tiny-llama", {"s2_attn": True, "trainable_extra": ("embed", "norm")}),
])
def test_simulate_matches_real_cpu_allocations(model: str, extra: dict) -> None:
    method = "adapter" if not extra else "lora_fa"
    cfg = ProbeConfig(model=model, method=method, **TINY, **extra)
    sim, real = probe(cfg, "simulate"), probe(cfg, "cpu")
    assert sim["peak_bytes"] == pytest.approx(real["peak_bytes"], rel=1e-3)
    assert sim["params"] == real["params"]


@pytest.mark.slow  # ~10 s
def test_s2_attn_lowers_the_eager_attention_peak() -> None:
    """Groups of a quarter of the sequence: the eager score matrices are 4x smaller in training."""
    cfg = dict(model="tiny-llama", method="lora", rank=4, batch_size=4, seq_len=256, target_len=0)
    full, s2 = (probe(ProbeConfig(**cfg, s2_attn=on), "simulate") for on in (False, True))
    assert s2["breakdown"]["activations"] < 0.7 * full["breakdown"]["activations"]


@pytest.mark.parametrize(("nonlinearity", "saved_r"), [("gelu", 2), ("relu", 1)])
def test_analytic_counts_adapter_activations_by_hand(nonlinearity: str, saved_r: int) -> None:
    """tiny-roberta: hidden 32, 2 layers; per adapter the down input (b s d), the up input (b s r) and, for GELU,
    GELU's input (b s r) too (ReLU's backward reads its output, which is up's input), fp32."""
    b, s, d, r, layers = 8, 32, 32, 4, 2
    out = probe(ProbeConfig(model="tiny-roberta", method="adapter", adapter_nonlinearity=nonlinearity, **TINY),
                "analytic")
    assert out["breakdown"]["activations"] == 4 * layers * 2 * (b * s * d + saved_r * b * s * r)
    trainable = out["params"]["trainable"]
    assert out["breakdown"]["gradients"] == 4 * trainable


def held_after_forward(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes the CPU allocator holds after ``module`` ran on a fresh copy of ``x`` (what the graph keeps), less
    the output."""
    from lorafa_repro.memory.cpu import CpuAllocationLog

    log = CpuAllocationLog()
    with log.recording():
        out = module(x * 1.0)  # a fresh input, kept only if the graph saves it (as a block's dropout output)
    allocs, _ = log.timeline()
    return sum(size for _, size in allocs) - out.numel() * out.element_size()


@pytest.mark.parametrize("nonlinearity", ["gelu", "silu", "relu", "tanh"])
def test_analytic_adapter_term_equals_what_the_cpu_allocator_holds(nonlinearity: str) -> None:
    """The analytic backend's activations for method=adapter (only the adapters keep tensors there: every base
    linear is frozen) divided by the 4 adapters of tiny-roberta equal the bytes one adapter keeps after its
    forward, measured by the CPU allocator at the same b x s, d and r."""
    from lorafa_repro.methods.adapter import BottleneckAdapter

    b, s, d, r = TINY["batch_size"], TINY["seq_len"], 32, TINY["rank"]
    out = probe(ProbeConfig(model="tiny-roberta", method="adapter", adapter_nonlinearity=nonlinearity, **TINY),
                "analytic")
    torch.manual_seed(0)
    held = held_after_forward(BottleneckAdapter(d, r, nonlinearity), torch.randn(b, s, d))
    assert out["breakdown"]["activations"] == 4 * held


def test_table4_has_adapter_rows() -> None:
    cells = [c for c in table_cells() if c.method == "adapter"]
    assert {c.model for c in cells} == {c.model for c in table_cells() if c.method == "lora"}
    assert all(c.rank == next(x.rank for x in table_cells() if x.model == c.model and x.method == "lora")
               for c in cells)
