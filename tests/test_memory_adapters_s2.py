"""Memory probe cells for Houlsby adapters and S2-Attn (issue 10): simulate against real CPU allocations, the
analytic adapter term by hand, Table 4's extra rows."""

from __future__ import annotations

import pytest

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


def test_analytic_counts_adapter_activations_by_hand() -> None:
    """tiny-roberta: hidden 32, 2 layers; per adapter the down input (b s d) and up input (b s r), fp32."""
    b, s, d, r, layers = 8, 32, 32, 4, 2
    out = probe(ProbeConfig(model="tiny-roberta", method="adapter", **TINY), "analytic")
    assert out["breakdown"]["activations"] == 4 * layers * 2 * (b * s * d + b * s * r)
    trainable = out["params"]["trainable"]
    assert out["breakdown"]["gradients"] == 4 * trainable


def test_table4_has_adapter_rows() -> None:
    cells = [c for c in table_cells() if c.method == "adapter"]
    assert {c.model for c in cells} == {c.model for c in table_cells() if c.method == "lora"}
    assert all(c.rank == next(x.rank for x in table_cells() if x.model == c.model and x.method == "lora")
               for c in cells)
