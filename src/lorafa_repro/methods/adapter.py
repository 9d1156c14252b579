"""Houlsby bottleneck adapters (Houlsby et al., ICML 2019, arXiv 1902.00751), written in the suite.

Per transformer block, two adapters ``h -> h + up(f(down(h)))`` (``down``: d -> r, ``up``: r -> d, ``f`` a
nonlinearity), only they (plus, by option, the block's normalization layers and the embeddings' LayerNorm, and
the task head) are trained.

What trains besides the adapters and the head (Houlsby et al. §2.1: "we also train the layer normalization
parameters per layer"; adapter-bert's ``layer_norm`` puts every LayerNorm of BERT, the embeddings' one included,
in the collection its optimizer trains):

  ``adapter_train_norms`` (default true)       every normalization layer inside the blocks.
  ``adapter_train_embed_norm`` (default true)  the embeddings' LayerNorm (BERT/RoBERTa ``embeddings.LayerNorm``),
                                               as adapter-bert trains it. T5 and LLaMA have none (their final
                                               norm is not an embedding norm and stays frozen): no effect there.

Where they sit (Houlsby et al. §2.1 and Figure 2: "the adapter module is added twice to each Transformer
layer: after the projection following multi-headed attention and after the two feed-forward layers"; the
authors' code, google-research/adapter-bert ``modeling.py``, applies the adapter to the sub-layer output after
its dropout and before ``layer_norm(output + layer_input)``). Per family:

  BERT / RoBERTa  after ``attention.output.dropout`` and ``output.dropout``: the adapter sees exactly what the
                  residual + LayerNorm of the block would have seen (post-LN, as in the paper).
  T5              after the ``dropout`` of the self-attention sub-layer (``layer[0]``) and of the FFN sub-layer
                  (``layer[-1]``), before the residual add (T5 is pre-LN; no adapter after cross-attention,
                  as in AdapterHub's Houlsby config, ``cross_adapter=False``).
  LLaMA-like      after ``self_attn.o_proj`` and ``mlp.down_proj`` (no dropout there), before the residual add.

An adapter is attached as a forward hook on that module, so the base model's parameter names and state dict
stay as they were; the adapters live in ``<block>.adapters.{attn,ffn}``. Near-identity init: ``down`` and
``up`` drawn from N(0, 1e-3^2) truncated at 2 std, biases zero (adapter-bert's ``init_scale=1e-3``), so the
adapted model equals the base model up to ~1e-6 at step 0.

Why not the AdapterHub ``adapters`` library: it pins transformers 4.57 and the suite runs 5.x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

INIT_STD = 1e-3
NONLINEARITIES: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh,
}
#: nonlinearities whose backward reads their input (an adapter then keeps three tensors: down's input, f's input,
#: up's input); ReLU and tanh backward from their output, which is up's input, kept anyway (two tensors)
SAVES_INPUT = frozenset({"gelu", "swish", "silu"})
#: dotted paths (inside one block) of the module whose output the attention / FFN adapter transforms
SITES: tuple[tuple[str, str, str], ...] = (
    ("bert", "attention.output.dropout", "output.dropout"),
    ("t5", "layer.0.dropout", "layer.-1.dropout"),
    ("llama", "self_attn.o_proj", "mlp.down_proj"),
)
ADAPTER_PREFIX = "adapters."


class BottleneckAdapter(nn.Module):
    """``h + up(f(down(h)))``; ``hook`` applies it to a module's output (forward-hook signature)."""

    def __init__(self, d: int, r: int, nonlinearity: str = "gelu", *, device: Any = None, dtype: Any = None):
        super().__init__()
        self.down = nn.Linear(d, r, device=device, dtype=dtype)
        self.act = NONLINEARITIES[nonlinearity]()
        self.up = nn.Linear(r, d, device=device, dtype=dtype)
        if self.down.weight.device.type != "meta":
            for lin in (self.down, self.up):
                nn.init.trunc_normal_(lin.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return self(output)


def _transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every child of an ``nn.ModuleList`` whose children share one class (stacks nested in a block skipped)."""
    blocks: list[tuple[str, nn.Module]] = []
    stacks: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0 or len({type(c) for c in mod}) != 1:
            continue
        if any(name.startswith(s + ".") for s in stacks):
            continue
        stacks.append(name)
        blocks += [(f"{name}.{i}", child) for i, child in enumerate(mod)]
    return blocks


def _get(block: nn.Module, path: str) -> nn.Module | None:
    mod: Any = block
    for part in path.split("."):
        if isinstance(mod, nn.ModuleList) and part.lstrip("-").isdigit():
            mod = mod[int(part)]
        elif hasattr(mod, part) and isinstance(getattr(mod, part), nn.Module):
            mod = getattr(mod, part)
        else:
            return None
    return mod


def adapter_sites(block: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """(layout name, attention-output module, FFN-output module) of one transformer block."""
    for layout, attn, ffn in SITES:
        a, f = _get(block, attn), _get(block, ffn)
        if a is not None and f is not None and a is not f:
            return layout, a, f
    raise ValueError(
        f"method=adapter does not know where the attention and FFN outputs of a {type(block).__name__} block are "
        f"(known layouts: {', '.join(f'{n} ({a}, {f})' for n, a, f in SITES)}). "
        "Fix: use a BERT/RoBERTa, T5 or LLaMA-architecture model, or add the block's layout to "
        "lorafa_repro.methods.adapter.SITES"
    )


def _hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    for key in ("hidden_size", "d_model"):
        if cfg is not None and getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise ValueError(f"cannot read the hidden size of {type(model).__name__} (config.hidden_size / d_model)")


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) or "Norm" in type(mod).__name__


def embedding_norms(model: nn.Module) -> list[nn.Module]:
    """The normalization layers of the module that holds the input embeddings, when that module is an embeddings
    module (BERT/RoBERTa ``embeddings.LayerNorm``), not the model itself (LLaMA, T5: none)."""
    emb = model.get_input_embeddings()
    blocks = {id(b) for _, b in _transformer_blocks(model)}
    for parent in model.modules():
        if any(c is emb for c in parent.children()):
            if any(id(m) in blocks for m in parent.modules()):
                return []
            return [m for m in parent.children() if _is_norm(m)]
    return []


def apply_adapter(model: nn.Module, *, rank: int, modules_to_save: list[str] | None = None,
                  adapter_nonlinearity: str = "gelu", adapter_train_norms: bool = True,
                  adapter_train_embed_norm: bool = True, **_: object) -> nn.Module:
    """Insert two Houlsby adapters of bottleneck ``rank`` per block; freeze everything else except the
    adapters, the heads in ``modules_to_save``, (``adapter_train_norms``) the blocks' norm layers and
    (``adapter_train_embed_norm``) the embeddings' LayerNorm (module docstring)."""
    if adapter_nonlinearity not in NONLINEARITIES:
        raise ValueError(f"adapter nonlinearity {adapter_nonlinearity!r} not in {sorted(NONLINEARITIES)}")
    blocks = _transformer_blocks(model)
    if not blocks:
        raise ValueError(f"method=adapter found no transformer blocks (nn.ModuleList) in {type(model).__name__}")
    d = _hidden_size(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, block in blocks:
        _, attn_site, ffn_site = adapter_sites(block)
        ref = next(block.parameters())
        pair = nn.ModuleDict({k: BottleneckAdapter(d, rank, adapter_nonlinearity, device=ref.device, dtype=ref.dtype)
                              for k in ("attn", "ffn")})
        block.add_module("adapters", pair)
        attn_site.register_forward_hook(pair["attn"].hook)
        ffn_site.register_forward_hook(pair["ffn"].hook)
        if adapter_train_norms:
            for mod in block.modules():
                if _is_norm(mod):
                    for p in mod.parameters(recurse=False):
                        p.requires_grad_(True)
    for mod in embedding_norms(model) if adapter_train_embed_norm else []:
        for p in mod.parameters():
            p.requires_grad_(True)
    for name in modules_to_save or []:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    model.lorafa_adapter_config = {"rank": rank, "nonlinearity": adapter_nonlinearity,
                                   "train_norms": adapter_train_norms, "train_embed_norm": adapter_train_embed_norm}
    return model


def adapter_linear_names(model: nn.Module) -> list[str]:
    """Full names of the adapters' ``down`` / ``up`` linears (empty for a model without adapters)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and f".{ADAPTER_PREFIX}" in f".{n}" and n.rsplit(".", 1)[-1] in ("down", "up")]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters only (adapters, and norms / head when trained): a small state dict."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write :func:`adapter_state_dict` plus the adapter config (rank, nonlinearity, which norms train)."""
    torch.save({"config": getattr(model, "lorafa_adapter_config", {}), "state_dict": adapter_state_dict(model)},
               Path(path))


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Insert adapters into a fresh base ``model`` as saved, then load the saved weights (strict on the saved
    keys: each must exist in the model)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    cfg = blob["config"]
    if not hasattr(model, "lorafa_adapter_config"):
        from lorafa_repro.methods.targets import head_modules

        apply_adapter(model, rank=cfg["rank"], adapter_nonlinearity=cfg["nonlinearity"],
                      adapter_train_norms=cfg["train_norms"],
                      adapter_train_embed_norm=cfg.get("train_embed_norm", False),  # files saved before the option
                      modules_to_save=head_modules(model))
    own = dict(model.named_parameters())
    missing = [k for k in blob["state_dict"] if k not in own]
    if missing:
        raise ValueError(f"saved adapter keys not in this model: {missing[:5]}. Fix: load into the same base model")
    with torch.no_grad():
        for k, v in blob["state_dict"].items():
            own[k].copy_(v)
    return model
