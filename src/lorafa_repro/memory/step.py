"""The measured step: one training step of a table cell, shared by every memory backend.

Everything a backend needs to build and run the step lives here, and nothing here knows about backends:
  ProbeConfig          one cell (model, method, batch, dtype, semantics, ...)
  model_config         the transformers config of a shipped name, a local directory / config.json / .gguf, or a Hub id
  build_base_model     that architecture at any depth, on any device (``meta`` for a weightless model); family,
                       depth keys and block stacks come from the config and the built model, not from a table
  apply_probe_method   the method applied as the training runs apply it (4-bit: real NF4, or 16-bit stand-ins)
  make_batch           random token ids shaped like one batch of the cell
  make_optimizer       the method's optimizer in steady state (states allocated)
  train_step           forward, backward, clipping, optimizer step, with a callback at each phase boundary
  device_semantics     what autograd saves follows CUDA's kernels (default) or the CPU's (semantics.py)
  fake_from_meta, transformer_blocks, quantized_weight_numels, param_counts: model helpers of the
                       fake-tensor backends (simulate, analytic) and of the memory planner

Backends (cuda.py, cpu.py, simulate.py, analytic.py) import this module and nothing else of memory/;
probe.py imports the backends and only dispatches.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import PretrainedConfig

from lorafa_repro.errors import ConfigError
from lorafa_repro.memory.semantics import SEMANTICS, device_semantics
from lorafa_repro.models import count_parameters, enable_gradient_checkpointing

GIB = 2**30
DTYPES = ("fp32", "bf16", "mixed")
BACKENDS = ("auto", "cuda", "simulate", "analytic", "cpu")
#: phase boundaries of one step, in order; the interval that ends at a boundary is named in INTERVALS
BOUNDARIES = ("step_start", "after_forward", "after_backward", "after_optimizer_step")
INTERVALS = {"after_forward": "forward", "after_backward": "backward", "after_optimizer_step": "optimizer"}
#: config keys that may hold the number of transformer blocks (transformers' ``attribute_map`` maps
#: ``n_layer`` / ``n_layers`` to ``num_hidden_layers`` where a model names it so); which of them a model
#: really uses is checked on the built model (:func:`check_depth`)
DEPTH_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer", "n_layers")


@dataclass(frozen=True)
class ProbeConfig:
    """One table cell: which model, method and step to measure.

    ``model``: a shipped architecture name, or any Hugging Face config (:func:`model_config`: a directory
    with config.json, a config.json path, a .gguf file, a Hub id); family, blocks and depth come from it.

    ``seq_len``: tokens per example for encoders, source tokens for T5 and LLaMA. ``target_len``:
    T5 target tokens (``None`` = ``seq_len``); for LLaMA the response tokens appended to the source
    (``None`` = 0), so a causal-LM example has ``seq_len + target_len`` tokens.
    ``dtype``: fp32 (weights and compute), bf16 (weights, grads, optimizer states and compute in
    bf16), mixed (fp32 weights + bf16 autocast, the suite's GPU default; the simulator's fake tensors
    are CPU tensors, so it applies CPU autocast's op lists, which differ a little from CUDA's).
    ``attn``: the attention implementation; ``eager`` is what 2023 transformers ran for all three
    families (and the only one T5 has).
    ``layers``: override the depth (used by the simulator's extrapolation); ``None`` = the real depth.
    ``gradient_checkpointing``: activation recomputation per transformer block (transformers'
    ``gradient_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``; the training runs'
    ``trainer.gradient_checkpointing``): forward keeps only each block's input, backward recomputes one
    block at a time. Off in Table 4 (the paper's LoRA-FA claim is "no recomputation").
    """

    model: str
    method: str
    rank: int | None = 8
    alpha: float = 16.0
    batch_size: int = 64
    seq_len: int = 128
    target_len: int | None = None
    dtype: str = "fp32"
    attn: str = "eager"
    target_modules: tuple[str, ...] | None = None
    lora_dropout: float = 0.0
    num_labels: int = 2
    layers: int | None = None
    gradient_checkpointing: bool = False
    semantics: str = "cuda"
    max_grad_norm: float | None = 1.0
    budget_gb: float = 40.0
    # method options (methods.apply_method): LongLoRA's S2-Attn in training (decoders; ``attn`` is the kernel
    # of its group attention) and extra trained modules (``embed``, ``norm``); Houlsby adapter settings
    s2_attn: bool = False
    s2_group_fraction: float = 0.25
    s2_shift: str = "offset"
    trainable_extra: tuple[str, ...] = ()
    adapter_nonlinearity: str = "gelu"
    adapter_train_norms: bool = True
    adapter_train_embed_norm: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics {self.semantics!r} not in {SEMANTICS}")
        from lorafa_repro.methods import get_method

        spec = get_method(self.method)
        if spec.uses_adapters and (self.rank is None or self.rank <= 0):
            raise ValueError(f"{self.method} needs a rank > 0, got {self.rank}. Fix: a rank >= 1 (--rank 8)")
        if not spec.uses_adapters and self.rank is not None:
            object.__setattr__(self, "rank", None)  # FT has no rank; keep cells comparable

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules else None
        d["trainable_extra"] = list(self.trainable_extra)
        return d


# ----------------------------------------------------------------------------------------------
# Model, batch and step: shared by every backend that runs the step (cuda, simulate, cpu)
# ----------------------------------------------------------------------------------------------

def _short(e: Exception, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


@lru_cache(maxsize=64)
def _load_config(model: str) -> PretrainedConfig:
    from transformers import AutoConfig

    from lorafa_repro.models import shipped_config, shipped_config_names

    path = Path(model).expanduser()
    try:
        if model in shipped_config_names() and not path.exists():
            return shipped_config(model)
        if path.is_file() and path.suffix == ".gguf":  # a GGUF checkpoint: only its metadata is read
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.is_file():  # a config.json (any name)
            data = json.loads(path.read_text())
            model_type = data.pop("model_type", None)
            if model_type is None:
                raise ValueError(f"{path} has no 'model_type'")
            return AutoConfig.for_model(model_type, **data)
        # a local directory with config.json, or a Hub id (AutoConfig fetches config.json only, no weights)
        return AutoConfig.from_pretrained(str(path) if path.exists() else model)
    except Exception as e:  # noqa: BLE001 - every failure is the same user error: no usable config
        raise ConfigError(f"cannot read a transformers config from {model!r} ({type(e).__name__}: {_short(e)}). "
                          "Fix: pass a shipped name (" + ", ".join(shipped_config_names()) + "), a directory "
                          "holding config.json, a config.json path, a .gguf file, or a Hub id") from None


def model_config(model: str) -> PretrainedConfig:
    """The transformers config of ``model``: a shipped architecture name, a local directory with a
    config.json, a config.json path, a ``.gguf`` file (its metadata) or a Hugging Face Hub id (only
    config.json is fetched). A fresh copy on every call (callers override fields)."""
    return copy.deepcopy(_load_config(model))


def config_arch(cfg: PretrainedConfig) -> str:
    """encoder | encoder_decoder | decoder, from the config: ``is_encoder_decoder``, else the head class
    the checkpoint names (``architectures``: ...ForCausalLM / ...LMHeadModel = decoder), else the auto
    mappings (a model with a masked-LM head, BERT/RoBERTa, is an encoder even though transformers also
    builds it as a causal LM)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder_decoder"
    heads = [a for a in (getattr(cfg, "architectures", None) or []) if isinstance(a, str)]
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in heads):
        return "decoder"
    if any(a.endswith(("ForMaskedLM", "ForSequenceClassification", "Model", "ForPreTraining")) for a in heads):
        return "encoder" if cfg.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "decoder"
    if cfg.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"

    raise ConfigError(f"model_type {cfg.model_type!r} is neither an encoder-decoder, a causal LM nor a masked-LM "
                      "encoder in this transformers version. Fix: pass a text model transformers can build with "
                      "AutoModelForCausalLM / AutoModelForSeq2SeqLM / AutoModelForSequenceClassification")


def model_arch(model: str) -> str:
    """encoder | encoder_decoder | decoder (:func:`config_arch` of :func:`model_config`)."""
    return config_arch(model_config(model))


def check_positions(cfg: ProbeConfig) -> None:
    """ConfigError when one example's tokens exceed the model's learned position table (:func:`~lorafa_repro.
    models.position_limit`); fake tensors would not notice, a real step fails with an index error."""
    from lorafa_repro.models import position_limit
    from lorafa_repro.errors import ConfigError

    hf = model_config(cfg.model)
    limit = position_limit(hf)
    if limit is None:
        return
    arch = config_arch(hf)
    target = cfg.target_len if cfg.target_len is not None else (cfg.seq_len if arch == "encoder_decoder" else 0)
    tokens = cfg.seq_len + target if arch == "decoder" else max(cfg.seq_len, target)
    if tokens > limit:
        raise ConfigError(f"{tokens} tokens per example but {cfg.model!r} has {limit} usable positions (a real step "
                          f"would index past its position table). Fix: a sequence length <= {limit} (--seq-len)")


def depth_keys(cfg: PretrainedConfig) -> list[str]:
    """The config keys (of DEPTH_KEYS) this config sets: the depth of each block stack."""
    keys, seen = [], set()
    for k in DEPTH_KEYS:
        v = getattr(cfg, k, None)
        canonical = cfg.attribute_map.get(k, k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0 and canonical not in seen:
            keys.append(canonical)
            seen.add(canonical)
    return keys


def model_depth(model: str) -> int:
    """Number of transformer blocks per stack (the deepest stack for an encoder-decoder)."""
    cfg = model_config(model)
    keys = depth_keys(cfg)
    if not keys:

        raise ConfigError(f"{model!r}: no depth key ({', '.join(DEPTH_KEYS)}) in its config. Fix: pass a config "
                          "that states its number of layers")
    return max(int(getattr(cfg, k)) for k in keys)


def uniform_depth(model: str) -> bool:
    """True when every block stack has the same depth (the depth extrapolation changes all stacks together;
    an encoder-decoder with unequal stacks is simulated at its real depth)."""
    cfg = model_config(model)
    return len({int(getattr(cfg, k)) for k in depth_keys(cfg)}) <= 1


def with_depth(cfg: PretrainedConfig, layers: int) -> PretrainedConfig:
    """``cfg`` with every depth key set to ``layers``; per-layer lists (``layer_types``: sliding-window /
    full attention per layer, and the like) cut to their first ``layers`` entries."""
    old = {k: int(getattr(cfg, k)) for k in depth_keys(cfg)}
    for k, v in list(vars(cfg).items()):
        if isinstance(v, (list, tuple)) and len(v) in old.values() and len(v) > layers and not k.startswith("_") \
                and k not in ("architectures", "id2label", "label2id"):
            setattr(cfg, k, type(v)(v[:layers]))
    for k in old:
        setattr(cfg, k, layers)
    return cfg


#: config keys giving the number of routed experts per MoE layer (Mixtral, Qwen2-MoE/Qwen3-MoE, DeepSeek, ...)
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def moe_experts(cfg: PretrainedConfig) -> int:
    """Routed experts per MoE layer, 0 for a dense model. Every expert's weights are resident (counted
    with the parameters); what a step allocates per expert does not depend on the routing, because
    transformers' grouped kernel sizes its buffers by tokens x top_k (each token's top_k experts),
    whichever experts they are - so the simulation's balanced-or-not routing of random tokens gives
    the same bytes as any real routing."""
    return max([int(v) for k in EXPERT_KEYS if isinstance(v := getattr(cfg, k, None), int)] or [0])


def check_depth(model: nn.Module, layers: int, source: str) -> None:
    """Every block stack of ``model`` (:func:`transformer_blocks`) has ``layers`` blocks: the depth keys
    really set the model's depth (else the extrapolation would be wrong)."""
    stacks = {stack: n for stack, _, n in transformer_blocks(model).values()}
    if not stacks or any(n != layers for n in stacks.values()):

        raise ConfigError(f"{source}: setting the depth keys to {layers} gave block stacks {stacks or 'none'}; "
                          "its depth is not held by any of memory.step.DEPTH_KEYS. Fix: add this architecture's depth "
                          "key to DEPTH_KEYS")


def compute_dtype(dtype: str) -> torch.dtype:
    """dtype of matmuls: bf16 for ``bf16`` and ``mixed``, else fp32."""
    return torch.float32 if dtype == "fp32" else torch.bfloat16


def simulated_method(method: str) -> str:
    """The method whose graph a 4-bit method is simulated with: ``qlora`` -> ``lora``,
    ``qlora_fa`` -> ``lora_fa`` (same adapters; the base weights are held at the compute dtype and their
    bytes corrected to NF4 afterwards, see simulate.py)."""
    from lorafa_repro.methods import METHODS, get_method

    spec = get_method(method)
    if not spec.quantize_4bit:
        return method
    sibling = method[1:] if method.startswith("q") else None
    if sibling not in METHODS or METHODS[sibling].quantize_4bit:
        raise ValueError(f"4-bit method {method!r} has no unquantized sibling to simulate with")
    return sibling


def build_base_model(cfg: ProbeConfig) -> nn.Module:
    """The architecture of ``cfg.model`` (:func:`model_config`) at ``cfg.layers`` depth, random init, on the
    current default device (call inside ``torch.device("meta")`` for a weightless model). The family picks the
    head: encoders a sequence-classification head, decoders a causal-LM head, encoder-decoders seq2seq."""
    from lorafa_repro.models import model_from_config

    hf = model_config(cfg.model)
    arch = config_arch(hf)
    if cfg.layers is not None:
        with_depth(hf, cfg.layers)
    if arch == "encoder":
        hf.num_labels = cfg.num_labels
    weight_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    try:
        model = model_from_config(hf, arch=arch, task_kind="classification" if arch == "encoder" else "lm",
                                  dtype=weight_dtype, attn_implementation=cfg.attn)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a config it cannot build
        raise ConfigError(f"transformers cannot build {cfg.model!r} (model_type {hf.model_type!r}, family {arch}) "
                          f"with attn_implementation={cfg.attn!r}: {type(e).__name__}: {_short(e)}. "
                          "Fix: check the config (and --attn eager|sdpa), or upgrade transformers for a newer architecture") from None
    if cfg.layers is not None:
        check_depth(model, cfg.layers, cfg.model)
    experts = moe_experts(hf)
    if experts and cfg.dtype != "bf16":
        raise ConfigError(f"{cfg.model!r} is a mixture-of-experts model ({experts} experts per layer): transformers "
                          "runs its experts with torch._grouped_mm, which takes only bf16 inputs (and fp32 autocast "
                          "does not cast them). Fix: plan it with --dtype bf16")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def apply_probe_method(model: nn.Module, cfg: ProbeConfig, *, simulate_4bit: bool) -> nn.Module:
    """``methods.apply_method`` with the cell's settings. ``simulate_4bit``: a 4-bit method is applied
    as its unquantized sibling, with the linears it quantizes (``methods.quantize.nf4_targets``) cast to the
    compute dtype first (stand-ins for the NF4 weights; simulate.py corrects their bytes) and the ones a
    4-bit load keeps in fp32 (T5's ``wo``) cast to fp32, as the real 4-bit method holds them."""
    from lorafa_repro.methods import apply_method, get_method
    from lorafa_repro.methods.quantize import kept_in_fp32, nf4_targets

    method = cfg.method
    if simulate_4bit and get_method(method).quantize_4bit:
        method = simulated_method(method)
        for name in nf4_targets(model):
            model.get_submodule(name).to(compute_dtype(cfg.dtype))
        for name in kept_in_fp32(model):
            model.get_submodule(name).float()
    targets = list(cfg.target_modules) if cfg.target_modules else None
    if get_method(method).uses_adapters and not targets:
        from lorafa_repro.methods.targets import block_linears

        if not block_linears(model):
            raise ConfigError(f"{cfg.model!r} has no nn.Linear in its blocks to put {method} adapters on (GPT-2 "
                              "style Conv1D layers?). Fix: plan this model with --methods ft, or pass target_modules")
    return apply_method(model, method, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                        target_modules=targets, compute_dtype=compute_dtype(cfg.dtype), s2_attn=cfg.s2_attn,
                        s2_group_fraction=cfg.s2_group_fraction, s2_shift=cfg.s2_shift,
                        trainable_extra=list(cfg.trainable_extra),
                        adapter_nonlinearity=cfg.adapter_nonlinearity, adapter_train_norms=cfg.adapter_train_norms,
                        adapter_train_embed_norm=cfg.adapter_train_embed_norm)


def build_on_device(cfg: ProbeConfig, device: torch.device) -> nn.Module:
    """The cell's model built on ``device`` with the real method applied (4-bit: real NF4), in train mode."""
    with torch.device(device):
        model = build_base_model(cfg)
    model = apply_probe_method(model, cfg, simulate_4bit=False)
    model.train()
    return model


def make_batch(cfg: ProbeConfig, vocab_size: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Random token ids shaped like one training batch of the cell.

    Encoder inputs carry an attention mask with one padded position: real batches are padded, and
    transformers skips building the attention mask when it is all ones, a data-dependent branch that
    fake tensors cannot take - with one pad both the real and the simulated step build the mask.
    """
    b, s = cfg.batch_size, cfg.seq_len
    arch = model_arch(cfg.model)
    ids = torch.randint(5, vocab_size, (b, s), device=device)
    mask = torch.ones(b, s, dtype=torch.long, device=device)
    mask[0, -1] = 0
    if arch == "encoder":
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.randint(0, cfg.num_labels, (b,), device=device)}
    if arch == "encoder_decoder":
        t = cfg.target_len if cfg.target_len is not None else s
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(5, vocab_size, (b, t), device=device)}
    total = s + (cfg.target_len or 0)
    ids = torch.randint(5, vocab_size, (b, total), device=device)
    return {"input_ids": ids, "labels": ids.clone()}


def make_optimizer(model: nn.Module, cfg: ProbeConfig, *, foreach: bool = True) -> torch.optim.Optimizer:
    """The method's optimizer (``methods.build_optimizer``), in steady state: one ``step()`` on zero
    gradients creates its states, so the measured step starts with them allocated, as every step of
    a real run after the first does. ``foreach``: AdamW's multi-tensor path (the CUDA default)."""
    from lorafa_repro.methods import build_optimizer

    opt = build_optimizer(model, cfg.method, lr=1e-4, weight_decay=0.0, rank=cfg.rank, alpha=cfg.alpha)
    for group in opt.param_groups:
        if "foreach" in group:
            group["foreach"] = foreach
        if group.get("fused"):  # training on CPU fuses AdamW (build_optimizer); the step measured is CUDA's default
            group["fused"] = None
    return warm_up(opt)


def warm_up(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Allocate the optimizer's states with one step on zero gradients (steady state of a real run)."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               autocast_dtype: torch.dtype | None, max_grad_norm: float | None,
               on_boundary: Callable[[str], None], semantics: str = "cuda") -> None:
    """One training step as the suite's trainer runs it, calling ``on_boundary`` at each of BOUNDARIES;
    ``semantics``: whose saved tensors the step's ops keep (:func:`device_semantics`)."""
    with device_semantics(semantics):
        _train_step(model, batch, optimizer, autocast_dtype=autocast_dtype, max_grad_norm=max_grad_norm,
                    on_boundary=on_boundary)


def _train_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, *,
                autocast_dtype: torch.dtype | None, max_grad_norm: float | None,
                on_boundary: Callable[[str], None]) -> None:
    device_type = next(iter(batch.values())).device.type
    autocast = (torch.autocast(device_type=device_type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    on_boundary("step_start")
    with autocast:
        loss = model(**batch).loss
    on_boundary("after_forward")
    loss.backward()
    del loss
    on_boundary("after_backward")
    if max_grad_norm:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    on_boundary("after_optimizer_step")


def run_cell_step(model: nn.Module, cfg: ProbeConfig, batch: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer, on_boundary: Callable[[str], None]) -> None:
    """:func:`train_step` with the cell's autocast, clipping and semantics."""
    train_step(model, batch, optimizer, autocast_dtype=torch.bfloat16 if cfg.dtype == "mixed" else None,
               max_grad_norm=cfg.max_grad_norm, on_boundary=on_boundary, semantics=cfg.semantics)


# ----------------------------------------------------------------------------------------------
# Model helpers of the fake-tensor backends (simulate, analytic) and the memory planner
# ----------------------------------------------------------------------------------------------

def fake_from_meta(model: nn.Module, mode: Any, device: str = "cpu") -> nn.Module:
    """Replace every meta parameter/buffer by a fake tensor of ``mode`` (a ``FakeTensorMode``; same shape,
    dtype, requires_grad); shared tensors (tied embeddings) stay shared."""
    made: dict[int, torch.Tensor] = {}
    with mode:
        for mod in model.modules():
            for store, is_param in ((mod._parameters, True), (mod._buffers, False)):
                for name, t in list(store.items()):
                    if t is None:
                        continue
                    if id(t) not in made:
                        fake = torch.empty(t.shape, dtype=t.dtype, device=device)
                        made[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) if is_param else fake
                    store[name] = made[id(t)]
    return model


def transformer_blocks(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """Module name of every transformer block -> (stack name, index, stack length).

    A stack is an ``nn.ModuleList`` whose children all have one class (``encoder.layer``,
    ``model.layers``, T5's ``encoder.block``/``decoder.block``); stacks nested in a block are ignored.
    """
    out: dict[str, tuple[str, int, int]] = {}
    stacks: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(c) for c in mod}) != 1 or any(name.startswith(s + ".") for s in stacks):
            continue
        stacks.append(name)
        for i, _ in enumerate(mod):
            out[f"{name}.{i}"] = (name, i, len(mod))
    return out


def quantized_weight_numels(cfg: ProbeConfig) -> list[int]:
    """Sizes of the weights a 4-bit method quantizes, at the cell's depth (methods.quantize.nf4_targets)."""
    from lorafa_repro.methods.quantize import nf4_targets

    with torch.device("meta"):
        model = build_base_model(cfg)
    return [model.get_submodule(n).weight.numel() for n in nf4_targets(model)]


def param_counts(cfg: ProbeConfig) -> dict[str, int]:
    """Trainable / total parameters of the cell (meta model; 4-bit weights counted as their logical size)."""
    with torch.device("meta"):
        model = build_base_model(cfg)
    model = apply_probe_method(model, cfg, simulate_4bit=True)
    return count_parameters(model)
