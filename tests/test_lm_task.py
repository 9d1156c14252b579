"""Plain language modelling (tasks/lm.py), RoPE position interpolation (models.apply_rope_scaling) and the
untrained evaluation entry point (lorafa_repro.evaluate), on a tiny LLaMA and synthetic text."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from lorafa_repro.models import apply_rope_scaling, byte_tokenizer, model_from_config, shipped_config
from lorafa_repro.schema import ConfigError, validate
from lorafa_repro.tasks.lm import chunk_ids, corpus_nll, split_chunks


def synthetic_text(n_words: int = 3000, seed: int = 0) -> str:
    words = ["the", "house", "votes", "on", "a", "report", "about", "fish", "and", "rules", "today"]
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n_words)) + ".\n"


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    (tmp_path / "corpus.txt").write_text(synthetic_text(), encoding="utf-8")
    return tmp_path


def lm_cfg(data_dir: Path, *extra: str):
    return compose_cfg(["model=tiny_llama", "task=lm/text", f"task.data_dir={data_dir}", "task.train_file=corpus.txt",
                        "trainer=tiny", *extra])


def test_chunks_are_exact_and_the_split_is_disjoint(text_dir: Path) -> None:
    assert chunk_ids(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # tail 9 dropped, no padding
    assert split_chunks(10, 2, None) == (range(0, 8), range(8, 10))
    assert split_chunks(10, 2, 3) == (range(0, 3), range(8, 10))
    assert split_chunks(30, None, None) == (range(0, 27), range(27, 30))  # a tenth held out
    with pytest.raises(Exception, match="Fix:"):
        split_chunks(2, 2, None)

    from lorafa_repro.tasks import build_task

    cfg = lm_cfg(text_dir, "task.max_seq_len=64", "task.max_eval_samples=3")
    task, tok = build_task(cfg.task), byte_tokenizer("decoder")
    ids = tok(synthetic_text(), add_special_tokens=False)["input_ids"]
    rows = task.train_dataset(tok)
    n = len(ids) // 64
    assert len(rows) == n - 3 and all(len(r["input_ids"]) == 64 and r["labels"] == r["input_ids"] for r in rows)
    assert [t for r in rows for t in r["input_ids"]] == ids[: (n - 3) * 64]  # consecutive, from the start
    held = task.eval_chunks(tok, 64)
    assert [off for off, _ in held] == [(n - 3) * 64, (n - 2) * 64, (n - 1) * 64]
    assert [t for _, c in held for t in c] == ids[(n - 3) * 64 : n * 64]  # the end, disjoint from training
    assert [c for _, c in task.eval_chunks(tok, 96)] == chunk_ids(ids[(n - 3) * 64 : n * 64], 96)
    batch = task.collate_fn(tok)(rows[:2])
    assert batch["input_ids"].shape == (2, 64) and "attention_mask" not in batch


def test_perplexity_is_exp_of_the_mean_token_nll(text_dir: Path, tmp_path: Path) -> None:
    # corpus level: 13 nats over 6 tokens, not the mean of chunk losses (2.5) nor of chunk perplexities
    got = corpus_nll([10.0, 3.0], [5, 1])
    assert got["eval_loss"] == pytest.approx(13 / 6) and got["perplexity"] == pytest.approx(math.exp(13 / 6))

    from lorafa_repro.tasks import build_task

    cfg = lm_cfg(text_dir, "task.max_seq_len=32", "task.max_eval_samples=4", "task.eval_seq_lens=[16]")
    task, tok = build_task(cfg.task), byte_tokenizer("decoder")
    torch.manual_seed(0)
    model = model_from_config(shipped_config("tiny-llama"), arch="decoder", task_kind="lm")
    m = task.evaluate(model, tok, batch_size=3, device=torch.device("cpu"), autocast=contextlib.nullcontext,
                      predictions_path=tmp_path / "p.jsonl")
    by_hand = {}
    for L in (32, 16):
        nll, count, chunk_ppl = 0.0, 0, []
        for _, c in task.eval_chunks(tok, L):
            x = torch.tensor([c])
            with torch.no_grad():
                logp = model(input_ids=x).logits[0, :-1].log_softmax(-1)
            tok_nll = -logp.gather(1, x[0, 1:, None]).squeeze(1)
            nll, count = nll + float(tok_nll.sum()), count + L - 1
            chunk_ppl.append(math.exp(float(tok_nll.mean())))
        by_hand[L] = math.exp(nll / count)
        assert abs(sum(chunk_ppl) / len(chunk_ppl) - by_hand[L]) > 1e-4  # the wrong twin really differs
    assert m["perplexity"] == pytest.approx(by_hand[32], rel=1e-5) and m["score"] == -m["perplexity"]
    assert m["perplexity_16"] == pytest.approx(by_hand[16], rel=1e-5)
    assert m["eval_tokens"] == 4 * 31 and m["eval_chunks"] == 4
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 4 + 8 and lines[0]["tokens"] == 31 and lines[-1]["seq_len"] == 16
    assert model.training  # evaluate restores the mode


def test_rope_scaling_interpolates_positions() -> None:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    plain = shipped_config("tiny-llama")
    scaled = apply_rope_scaling(shipped_config("tiny-llama"), 2.0)
    assert scaled.rope_parameters["rope_type"] == "linear" and scaled.rope_parameters["factor"] == 2.0
    assert scaled.rope_parameters["rope_theta"] == plain.rope_parameters["rope_theta"]
    x = torch.zeros(1, 1, 16)
    p = torch.arange(0, 50)[None]
    cos_p, sin_p = LlamaRotaryEmbedding(plain)(x, p)
    cos_2p, sin_2p = LlamaRotaryEmbedding(scaled)(x, 2 * p)
    torch.testing.assert_close(cos_2p, cos_p)  # position 2p, scaled by 2 = position p, unscaled
    torch.testing.assert_close(sin_2p, sin_p)
    assert not torch.allclose(LlamaRotaryEmbedding(plain)(x, 2 * p)[1], sin_p)
    assert apply_rope_scaling(shipped_config("tiny-llama"), None).rope_parameters["rope_type"] == "default"
    with pytest.raises(ValueError, match="Fix:"):
        apply_rope_scaling(shipped_config("tiny-roberta"), 2.0)


def test_rope_scaling_and_lm_config_errors(text_dir: Path) -> None:
    base = lm_cfg(text_dir)

    def with_(**changes):  # one composition, then edits (composing costs ~1 s each)
        cfg = copy.deepcopy(base)
        for key, value in changes.items():
            OmegaConf.update(cfg, key.replace("__", "."), value)
        return cfg

    validate(base)
    with pytest.raises(ConfigError, match=">= 1.*Fix:"):
        validate(with_(model__rope_scaling_factor=0.5))
    with pytest.raises(ConfigError, match="decoder.*Fix:"):
        validate(compose_cfg(["model=tiny_roberta", "model.rope_scaling_factor=2.0"]))
    with pytest.raises(ConfigError, match="not found.*Fix:"):
        validate(with_(task__train_file="missing.txt"))
    with pytest.raises(ConfigError, match="L >= 2"):
        validate(with_(task__eval_seq_lens=[1]))
    with pytest.raises(ConfigError, match="both null.*Fix:"):
        validate(with_(task__data_dir=None, task__hub_dataset=None))


def test_longlora_run_on_text_lowers_loss_and_perplexity(text_dir: Path, tmp_path: Path) -> None:
    from lorafa_repro.evaluate import evaluate_untrained
    from lorafa_repro.run import run

    common = ("task.max_seq_len=64", "task.max_eval_samples=2", "model.rope_scaling_factor=2.0",
              "trainer.max_steps=40", "trainer.batch_size=4", "optim.lr=1e-2", "method=lora",
              "method.s2_attn=true", "method.trainable_extra=[embed,norm]")
    before = evaluate_untrained(lm_cfg(text_dir, *common), tmp_path / "before")
    assert before["status"] == "success" and before["kind"] == "eval"
    after = run(lm_cfg(text_dir, *common), tmp_path / "train")
    assert after["status"] == "success"
    assert after["metrics"]["last_loss"] < after["metrics"]["first_loss"] - 0.3
    assert after["metrics"]["final"]["perplexity"] < 0.75 * before["metrics"]["final"]["perplexity"]
    assert after["config"]["model"]["rope_scaling_factor"] == 2.0
    again = evaluate_untrained(lm_cfg(text_dir, *common, "skip_if_done=true", "method=lora_fa",
                                      "trainer.max_steps=3"), tmp_path / "before")
    assert again["created_at"] == before["created_at"]  # a finished evaluation of the same config is reused


def test_an_evaluation_locks_its_folder_and_never_replaces_another_config_silently(text_dir: Path,
                                                                                    tmp_path: Path) -> None:
    from lorafa_repro.evaluate import evaluate_untrained
    from lorafa_repro.rundir import RunDirError, locked

    common = ("task.max_seq_len=64", "task.max_eval_samples=2")
    out = tmp_path / "eval"
    first = evaluate_untrained(lm_cfg(text_dir, *common), out)
    with pytest.raises(RunDirError, match=r"holds a finished evaluation \(success\) of another config: "
                                          r"task.max_seq_len: 64 -> 32.*Fix: on_config_change=rerun"):
        evaluate_untrained(lm_cfg(text_dir, "task.max_seq_len=32", "task.max_eval_samples=2"), out)
    assert json.loads((out / "result.json").read_text())["created_at"] == first["created_at"]  # kept
    second = evaluate_untrained(lm_cfg(text_dir, "task.max_seq_len=32", "task.max_eval_samples=2",
                                       "on_config_change=rerun"), out)
    assert second["config"]["task"]["max_seq_len"] == 32
    moved = list((out / "replaced").glob("*/result.json"))
    assert [json.loads(p.read_text())["created_at"] for p in moved] == [first["created_at"]]
    with locked(out), pytest.raises(RunDirError, match="in use by another run"):  # held, as by a second process
        evaluate_untrained(lm_cfg(text_dir, *common, "skip_if_done=true"), out)
