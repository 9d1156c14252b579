"""Prompt + response encoding for causal-LM tasks: the loss falls on the response tokens only."""

from __future__ import annotations

import torch

from lorafa_repro.models import BOS_ID, EOS_ID, PAD_ID, byte_tokenizer
from lorafa_repro.tasks.causal_lm import IGNORE_INDEX, causal_collate, encode_prompt_response, pad_rows


def _bytes(text: str) -> list[int]:
    """One id per UTF-8 byte, no specials (the byte tokenizer has no merges)."""
    ids = byte_tokenizer("decoder")(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    return ids


def test_labels_mask_the_prompt_token_by_token() -> None:
    tok = byte_tokenizer("decoder")
    row = encode_prompt_response(tok, "Q: hi\nA:", " yo", max_prompt_len=64, max_response_len=64)
    prompt = [BOS_ID] + _bytes("Q: hi\nA:")
    response = _bytes(" yo") + [EOS_ID]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert row["attention_mask"] == [1] * len(prompt + response)


def test_long_prompts_lose_their_front_and_long_responses_their_end() -> None:
    tok = byte_tokenizer("decoder")
    row = encode_prompt_response(tok, "abcdef### R:", "123456", max_prompt_len=5, max_response_len=4)
    assert row["input_ids"] == _bytes("## R:") + _bytes("123") + [EOS_ID]  # marker kept, EOS always last
    assert row["labels"][:5] == [IGNORE_INDEX] * 5 and row["labels"][5:] == _bytes("123") + [EOS_ID]


def test_padding_sides_and_label_fill() -> None:
    rows = [{"input_ids": [7, 8, 9], "attention_mask": [1, 1, 1], "labels": [-100, 8, 9]},
            {"input_ids": [7], "attention_mask": [1], "labels": [7]}]
    right = pad_rows(rows, pad_id=PAD_ID)
    assert right["input_ids"].tolist() == [[7, 8, 9], [7, PAD_ID, PAD_ID]]
    assert right["labels"].tolist() == [[-100, 8, 9], [7, -100, -100]]
    left = pad_rows(rows, pad_id=PAD_ID, side="left")
    assert left["input_ids"].tolist() == [[7, 8, 9], [PAD_ID, PAD_ID, 7]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_collated_loss_counts_response_tokens_only() -> None:
    """The model's mean loss over the batch equals the mean over response positions computed by hand."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = byte_tokenizer("decoder")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=261, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD_ID))
    rows = [encode_prompt_response(tok, p, r, max_prompt_len=32, max_response_len=8)
            for p, r in (("long prompt here:", "ok"), ("p:", "a longer answer"))]
    batch = causal_collate(tok)(rows)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1], -1)
    target = batch["labels"][:, 1:]
    keep = target != IGNORE_INDEX
    by_hand = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].mean()
    loss = model(**batch).loss
    assert torch.allclose(loss, by_hand, atol=1e-6)
    n_response = sum(len(r["labels"]) - r["labels"].count(IGNORE_INDEX) for r in rows)
    assert int(keep.sum()) == n_response  # every response token predicted once, no prompt token
