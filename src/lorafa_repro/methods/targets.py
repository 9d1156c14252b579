"""Which linear layers get adapters: "all linear layers of the transformer blocks" by default."""

from __future__ import annotations

from torch import nn

# Top-level heads: never adapted; trained in full for a fresh classification head.
HEAD_NAMES = ("classifier", "score", "lm_head", "pooler", "qa_outputs")


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def block_linears(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` inside the transformer blocks (heads excluded)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and not _is_head(n)]


def resolve_target_modules(model: nn.Module, target_modules: list[str] | str | None) -> list[str]:
    """Turn suffixes (``["query", "value"]``), ``"all-linear"`` or ``None`` into full module names."""
    linears = block_linears(model)
    if target_modules is None or target_modules == "all-linear" or target_modules == ["all-linear"]:
        return linears
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    found = [n for n in linears if any(n == t or n.endswith("." + t) for t in wanted)]
    if not found:
        raise ValueError(
            f"target_modules {wanted} match no linear layer; this model's layer names end in "
            f"{sorted({n.rsplit('.', 1)[-1] for n in linears})}"
        )
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in found)]
    if missing:
        raise ValueError(f"target_modules {missing} match no linear layer of this model")
    return found


def head_modules(model: nn.Module) -> list[str]:
    """Names of the task head's modules, trained in full with every method: the new classifier (``classifier``,
    ``score``) and, when the classifier reads a pooler, that pooler (BERT's ``bert.pooler``, DeBERTa's ``pooler``).
    BERT's pooler is the first layer of its classification head, as ``dense`` is inside RoBERTa's
    ``classifier``; frozen (PEFT's default for BERT), LoRA on all-MiniLM-L6-v2 never learned STS-B in 200 steps
    (Pearson 0.04 against FT's 0.83; 0.85 with the pooler trained, results/claims/README.md)."""
    heads = [n for n, _ in model.named_children() if n in ("classifier", "score")]
    if "classifier" not in heads:
        return heads
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, None) if base_name else None
    if isinstance(getattr(model, "pooler", None), nn.Module):
        heads.append("pooler")
    elif base is not None and isinstance(getattr(base, "pooler", None), nn.Module):
        heads.append(f"{base_name}.pooler")
    return heads
