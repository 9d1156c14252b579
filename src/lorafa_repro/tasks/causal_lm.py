"""Prompt + response encoding for decoder-only (causal LM) tasks, shared by every task family that trains a
causal LM (instruction tuning, decoder-only translation): the loss falls on the response tokens only.

Prompt and response are tokenized apart (as the QLoRA repository does), so the boundary between them is
exact: ``labels`` are ``IGNORE_INDEX`` (-100) on every prompt token and equal ``input_ids`` on the response,
which ends with the tokenizer's EOS. A prompt longer than ``max_prompt_len`` loses tokens from its *front*,
so the template's closing marker ("### Response:") that the response follows is kept; a response longer than
``max_response_len`` (EOS included) is cut at the end.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

IGNORE_INDEX = -100


def encode_prompt(tokenizer: Any, prompt: str, *, max_prompt_len: int) -> list[int]:
    """The prompt's token ids (with the tokenizer's own leading special tokens), front-truncated."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return ids[-max_prompt_len:] if len(ids) > max_prompt_len else ids


def encode_prompt_response(tokenizer: Any, prompt: str, response: str, *, max_prompt_len: int,
                           max_response_len: int) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` (-100 on the prompt) for one training example."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; a causal-LM response needs one to end on")
    prompt_ids = encode_prompt(tokenizer, prompt, max_prompt_len=max_prompt_len)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][: max_response_len - 1]
    response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}


def pad_rows(rows: list[dict[str, list[int]]], *, pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch of encoded rows to its longest: ``input_ids`` with ``pad_id``, ``attention_mask`` with 0,
    ``labels`` (when present) with -100. ``side="left"`` for batched generation from prompts."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out: dict[str, torch.Tensor] = {}
    for key in (k for k in ("input_ids", "attention_mask", "labels") if k in rows[0]):
        padded = []
        for r in rows:
            pad = [fill[key]] * (width - len(r[key]))
            padded.append(pad + r[key] if side == "left" else r[key] + pad)
        out[key] = torch.tensor(padded, dtype=torch.long)
    return out


def causal_collate(tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """The training collate function for rows made by :func:`encode_prompt_response` (right padding)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_rows([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows], pad_id=pad_id)

    return collate
