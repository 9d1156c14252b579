"""Model and tokenizer loading: shipped architecture configs (random init, no download), any Hugging Face
Hub id or local directory (real weights), and a byte-level tokenizer that needs no download."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

# The byte tokenizer's special tokens; bytes follow at ids 5..260.
BYTE_SPECIALS = ("<pad>", "</s>", "<unk>", "<s>", "<mask>")
PAD_ID, EOS_ID, UNK_ID, BOS_ID, MASK_ID = range(5)
BYTE_VOCAB_SIZE = len(BYTE_SPECIALS) + 256


def shipped_config_names() -> list[str]:
    root = resources.files("lorafa_repro") / "model_configs"
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def shipped_config(name: str, **overrides: Any) -> PretrainedConfig:
    """An architecture config shipped in the package (``roberta-base``, ``tiny-llama``, ...)."""
    if name not in shipped_config_names():
        raise ValueError(f"no shipped config {name!r}; have {shipped_config_names()}")
    data = json.loads((resources.files("lorafa_repro") / "model_configs" / f"{name}.json").read_text())
    data.update(overrides)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


@lru_cache(maxsize=None)
def _byte_backend_json(arch: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # 256 printable stand-ins for the 256 byte values
    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = [(t, i) for i, t in enumerate(BYTE_SPECIALS)]
    if arch == "encoder":  # RoBERTa: <s> A </s></s> B </s>
        single, pair = "<s> $A </s>", "<s> $A </s> </s> $B </s>"
    elif arch == "encoder_decoder":  # T5: A </s> B </s>
        single, pair = "$A </s>", "$A </s> $B </s>"
    else:  # LLaMA: <s> A
        single, pair = "<s> $A", "<s> $A $B"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    tok.add_special_tokens(list(BYTE_SPECIALS))
    return tok.to_str()


def byte_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (261 ids) with the special-token layout the given architecture expects."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_byte_backend_json(arch)),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>", mask_token="<mask>",
        cls_token="<s>", sep_token="</s>", padding_side="left" if arch == "decoder" else "right",
    )


def _auto_class(arch: str, task_kind: str):
    if task_kind == "classification":
        return AutoModelForSequenceClassification
    return AutoModelForSeq2SeqLM if arch == "encoder_decoder" else AutoModelForCausalLM


def build_config(model_cfg: Any, *, num_labels: int | None = None) -> PretrainedConfig:
    """The transformers config for a model entry; ``num_labels`` for classification heads."""
    extra: dict[str, Any] = {}
    if num_labels is not None:
        extra["num_labels"] = num_labels
        if num_labels == 1:
            extra["problem_type"] = "regression"
    if model_cfg.source == "shipped":
        cfg = shipped_config(model_cfg.path, **extra)
        if model_cfg.tokenizer == "byte":  # align special ids with the byte tokenizer
            cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = PAD_ID, EOS_ID, BOS_ID
            if cfg.is_encoder_decoder:
                cfg.decoder_start_token_id = PAD_ID
        return apply_rope_scaling(cfg, getattr(model_cfg, "rope_scaling_factor", None))
    kwargs = {"gguf_file": model_cfg.gguf_file} if model_cfg.gguf_file else {}
    cfg = AutoConfig.from_pretrained(model_cfg.path, **kwargs, **extra)
    return apply_rope_scaling(cfg, getattr(model_cfg, "rope_scaling_factor", None))


#: model types whose rotary embedding reads ``config.rope_parameters`` the LLaMA way
ROPE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def apply_rope_scaling(config: PretrainedConfig, factor: float | None) -> PretrainedConfig:
    """Position interpolation (Chen et al. 2023, used by LongLoRA): linear RoPE scaling by ``factor``, i.e.
    position p is rotated as p / factor, so a context ``factor`` x the training context maps onto the trained
    range of angles. Sets transformers' ``config.rope_parameters`` (rope_type ``linear``, the base theta kept);
    ``None`` leaves the config as it is. LLaMA-architecture configs with plain (``default``) RoPE only."""
    if factor is None:
        return config
    if factor < 1:
        raise ValueError(f"model.rope_scaling_factor must be >= 1, got {factor}. Fix: model.rope_scaling_factor=2.0")
    model_type = getattr(config, "model_type", None)
    if model_type not in ROPE_MODEL_TYPES:
        raise ValueError(f"model.rope_scaling_factor needs a LLaMA-architecture decoder ({', '.join(ROPE_MODEL_TYPES)}),"
                         f" got {model_type}. Fix: model.rope_scaling_factor=null")
    params = dict(getattr(config, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"model.rope_scaling_factor: the model already scales RoPE ({params}). "
                         "Fix: model.rope_scaling_factor=null")
    params.update(rope_type="linear", factor=float(factor))
    config.rope_parameters = params
    return config


#: model types whose learned position ids start after the padding id (RoBERTa's ``create_position_ids``):
#: ``max_position_embeddings - pad_token_id - 1`` usable positions (roberta-base: 514 - 1 - 1 = 512)
PADDED_POSITION_TYPES = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")
#: model types with a learned table of ``max_position_embeddings`` absolute positions from 0
ABSOLUTE_POSITION_TYPES = ("bert", "distilbert", "electra", "albert", "gpt2", "gpt_neo", "biogpt", "xlm")


def position_limit(config: PretrainedConfig) -> int | None:
    """The most tokens one sequence may hold for a model with a learned position table (a longer one indexes
    past the table); ``None`` for rotary or relative positions (LLaMA, T5) and model types not listed above."""
    model_type = getattr(config, "model_type", None)
    table = getattr(config, "max_position_embeddings", None)
    if table is None:
        return None
    if model_type in PADDED_POSITION_TYPES:
        pad = getattr(config, "pad_token_id", None)
        return int(table) - (pad if pad is not None else 1) - 1
    if model_type in ABSOLUTE_POSITION_TYPES:
        return int(table)
    return None


def build_tokenizer(model_cfg: Any) -> PreTrainedTokenizerFast:
    if model_cfg.tokenizer == "byte":
        return byte_tokenizer(model_cfg.arch)
    name = model_cfg.tokenizer or model_cfg.path
    kwargs = {"gguf_file": model_cfg.gguf_file} if model_cfg.gguf_file and name == model_cfg.path else {}
    tok = AutoTokenizer.from_pretrained(name, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _fill_special_ids(model: nn.Module, arch: str) -> nn.Module:
    """Give the model a pad id (its eos when it has none) and T5's decoder start convention (pad)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    if arch == "encoder_decoder" and getattr(model.config, "decoder_start_token_id", None) is None:
        model.config.decoder_start_token_id = model.config.pad_token_id
    return model


def model_from_config(config: PretrainedConfig, *, arch: str, task_kind: str, dtype: torch.dtype = torch.float32,
                      **kwargs: Any) -> nn.Module:
    """Random init of ``config`` with the head for ``task_kind``, on the current default device
    (inside ``torch.device("meta")`` for a weightless model). ``kwargs`` go to ``from_config``."""
    return _fill_special_ids(_auto_class(arch, task_kind).from_config(config, dtype=dtype, **kwargs), arch)


def build_model(model_cfg: Any, *, task_kind: str, num_labels: int | None = None,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """Random init from a shipped config, or real weights from the Hub / a local directory."""
    config = build_config(model_cfg, num_labels=num_labels)
    if model_cfg.source == "shipped":
        return model_from_config(config, arch=model_cfg.arch, task_kind=task_kind, dtype=dtype)
    kwargs = {"gguf_file": model_cfg.gguf_file} if model_cfg.gguf_file else {}
    model = _auto_class(model_cfg.arch, task_kind).from_pretrained(model_cfg.path, config=config, dtype=dtype,
                                                                   **kwargs)
    return _fill_special_ids(model, model_cfg.arch)


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Activation recomputation per transformer block, the non-reentrant ``torch.utils.checkpoint``
    (no need for inputs that require grad, so frozen embeddings are fine; dropout masks are replayed from
    the saved RNG state). Call on the base model, before a method wraps it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for mod in model.modules():  # transformers turns the KV cache off with a warning otherwise (T5's stacks
        config = getattr(mod, "config", None)  # hold their own config copies)
        if getattr(config, "use_cache", False):
            config.use_cache = False
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (4-bit packed weights counted as their logical size)."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        if p.dtype == torch.uint8 and hasattr(p, "quant_state"):  # bnb Params4bit: 2 values per byte
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total}


def model_dir_exists(path: str) -> bool:
    return Path(path).is_dir()
