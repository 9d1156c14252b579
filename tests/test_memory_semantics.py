"""CUDA saved-tensor semantics in the simulator (issue #12): a hand count on a toy block with dropout, and
a real step for every method on every shipped family (4-bit methods on T5 included)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lorafa_repro.memory import simulate as S
from lorafa_repro.memory.saved import measure_saved_bytes
from lorafa_repro.memory.semantics import device_semantics
from lorafa_repro.memory.step import ProbeConfig, build_on_device, make_batch, make_optimizer, run_cell_step, warm_up
from lorafa_repro.methods import METHODS

N, D = 512, 64  # tokens, width of the toy block


class DropoutBlock(nn.Module):
    """x -> Linear -> Dropout(0.1) -> Linear -> sum: the dropout is the only op whose saved tensor depends on
    the device (CUDA: a 1-byte bool mask; CPU: a 4-byte fp32 noise tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(D, D, bias=False)
        self.drop = nn.Dropout(0.1)
        self.down = nn.Linear(D, D, bias=False)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=self.down(self.drop(self.up(x))).sum())


#: saved for backward beyond parameters and the input x: the dropout's mask (CUDA, 1 B) or noise (CPU, 4 B)
#: per element, and the dropout output (fp32) that ``down`` keeps for dW. The ``up`` output is not kept.
HAND_COUNT = {"cuda": N * D * 1 + N * D * 4, "cpu": N * D * 4 + N * D * 4}


@pytest.mark.parametrize("semantics", ["cuda", "cpu"])
def test_toy_block_saved_bytes_equal_the_hand_count(semantics: str) -> None:
    """``saved_tensors_hooks`` count on real tensors: exactly the hand count, per semantics."""
    model = DropoutBlock().train()
    with device_semantics(semantics):
        report = measure_saved_bytes(model, torch.randn(N, D))
    assert report.activation_bytes == HAND_COUNT[semantics]


@pytest.mark.parametrize("semantics", ["cuda", "cpu"])
def test_toy_block_simulated_activations_equal_the_hand_count(semantics: str) -> None:
    """The simulator's activations after forward (fake tensors, MemTracker) are the hand count plus the
    4-byte loss; a CPU-only saved tensor (fp32 noise) reappearing under CUDA semantics fails this."""
    with torch.device("meta"):
        model = DropoutBlock()
    out = S.simulate_module(model, lambda: {"x": torch.empty(N, D)},
                            lambda m: warm_up(torch.optim.AdamW(m.parameters(), foreach=True)), semantics=semantics)
    assert out["marks"]["after_forward"]["activations"] == HAND_COUNT[semantics] + 4


def test_semantics_are_restored_and_cuda_only_differs_in_dropout() -> None:
    """Routing is scoped to the step, and without dropout the two semantics save the same bytes."""
    import torch.nn.functional as F

    before = F.dropout
    with device_semantics("cuda"):
        assert F.dropout is not before
    assert F.dropout is before
    model = DropoutBlock().eval()  # dropout off
    counts = {}
    for sem in ("cuda", "cpu"):
        with device_semantics(sem):
            counts[sem] = measure_saved_bytes(model, torch.randn(N, D)).activation_bytes
    assert counts["cuda"] == counts["cpu"] == N * D * 4


# ---- a real step for every method on every shipped family ------------------------------------------------

FAMILIES = ("tiny-roberta", "tiny-t5", "tiny-llama")


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_a_real_step_on_every_family(model: str, method: str) -> None:
    """Build, apply the method (real NF4 for 4-bit methods), two real CPU steps: finite loss, trained
    parameters move, frozen ones do not."""
    cfg = ProbeConfig(model=model, method=method, rank=4, batch_size=2, seq_len=8, target_len=4)
    net = build_on_device(cfg, torch.device("cpu"))
    opt = make_optimizer(net, cfg)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    batch = make_batch(cfg, net.config.vocab_size, "cpu")
    trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad and p.is_floating_point()}
    for _ in range(2):
        run_cell_step(net, cfg, batch, opt, lambda _b: None)
    with torch.no_grad():
        assert torch.isfinite(net(**batch).loss)
    params = dict(net.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in trained.items()), "no trained parameter moved"
    assert all(torch.equal(params[n], v) for n, v in frozen.items()), "a frozen parameter moved"


@pytest.mark.parametrize("method", ["qlora", "qlora_fa"])
def test_4bit_methods_keep_t5_wo_in_fp32(method: str) -> None:
    """T5's ``wo`` stays an fp32 nn.Linear (transformers' _keep_in_fp32_modules) with an adapter; every
    other block linear is NF4; the simulator's stand-ins hold the same set (fp32 wo, NF4 bytes for the rest)."""
    import bitsandbytes as bnb

    from lorafa_repro.methods.quantize import kept_in_fp32, nf4_targets
    from lorafa_repro.memory.step import build_base_model, quantized_weight_numels

    cfg = ProbeConfig(model="tiny-t5", method=method, rank=4, batch_size=2, seq_len=8, target_len=4)
    base = build_base_model(cfg)
    kept = kept_in_fp32(base)
    assert kept and all(n.endswith(".wo") for n in kept)
    net = build_on_device(cfg, torch.device("cpu"))
    wo = [m for n, m in net.named_modules() if n.endswith("DenseReluDense.wo.base_layer")]
    assert len(wo) == len(kept)
    assert all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in wo)
    assert not any(n.endswith(".wo") for n, m in net.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    numels = quantized_weight_numels(cfg)
    assert len(numels) == len(nf4_targets(base)) == sum(
        isinstance(m, bnb.nn.Linear4bit) for m in net.modules())


def test_sdpa_with_dropout_saves_what_cudas_fused_kernel_saves() -> None:
    """SDPA with dropout: CUDA's fused kernel keeps q, k, v, the output and the fp32 logsumexp (dropout is
    regenerated in-kernel); the CPU's math path keeps the b*h*s*s probabilities, their noise and more."""
    import torch.nn.functional as F

    b, h, s, d = 2, 4, 64, 16

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d, bias=False)

        def forward(self, x: torch.Tensor) -> SimpleNamespace:
            q, k, v = self.qkv(x).view(b, s, 3, 1, d).expand(b, s, 3, h, d).unbind(2)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 dropout_p=0.1)
            return SimpleNamespace(loss=out.sum())

    counts = {}
    for sem in ("cuda", "cpu"):
        with device_semantics(sem):
            counts[sem] = measure_saved_bytes(Attn(), torch.randn(b, s, d)).activation_bytes
    qkv_out = 4 * (b * s * 3 * d)  # the qkv projection's output: q, k and v are views of it
    assert counts["cuda"] == qkv_out + 4 * b * h * s * d + 4 * b * h * s  # + attention output + logsumexp
    assert counts["cpu"] > counts["cuda"] + 4 * b * h * s * s  # at least the probabilities on top
