"""The instruct task family (Alpaca template, response-only loss) and the MMLU k-shot evaluator."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import numpy as np
import torch

from lorafa_repro import mmlu
from lorafa_repro.models import BOS_ID, EOS_ID, byte_tokenizer
from lorafa_repro.schema import ConfigError, validate
from lorafa_repro.tasks.causal_lm import IGNORE_INDEX
from lorafa_repro.tasks.instruct import build_prompt

from conftest import SHARED_DATA, compose_cfg

SUBJECT_SIZES = {"anatomy": 4, "marketing": 8, "philosophy": 3}  # stem, other, humanities


def _tiny_llama(seed: int = 0, init: float = 0.02) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=261, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, initializer_range=init,
                      pad_token_id=0, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _write_mmlu(root: Path, answers: dict[str, list[int]], *, hendrycks: bool = False) -> Path:
    """Synthetic MMLU in either on-disk format: cais header + 0-3, or Hendrycks' headerless A-D."""
    rng = random.Random(1)
    for split in ("dev", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject, test_answers in answers.items():
            rows = test_answers if split == "test" else [rng.randrange(4) for _ in range(5)]
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                if not hendrycks:
                    w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
                for i, a in enumerate(rows):
                    q = f" {split} q{i} on {subject}, {'x' * rng.randrange(1, 9)}? "
                    w.writerow([q, f"a{i}", "b, b", "c", f"d{rng.randrange(9)}", "ABCD"[a] if hendrycks else a])
    return root


def _answers() -> dict[str, list[int]]:
    rng = random.Random(0)
    return {s: [rng.randrange(4) for _ in range(n)] for s, n in SUBJECT_SIZES.items()}


# ----------------------------------------------------------------------------------------------- prompts


def test_alpaca_prompt_with_and_without_input() -> None:
    assert build_prompt("Add 2 and 3.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response: ")
    assert build_prompt("Translate.", "Hallo") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write "
        "a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n### Input:\n"
        "Hallo\n\n### Response: ")
    assert build_prompt("Do it.", "ctx", template="plain") == "Do it.\n\nctx"


def test_mmlu_prompt_matches_the_hendrycks_format() -> None:
    shot = mmlu.Question("high_school_us_history", 0, " Who? ", ("A1", "B1", "C1", "D1"), 2)
    q = mmlu.Question("high_school_us_history", 0, "When?\n", ("1", "2", "3", "4"), 0)
    assert mmlu.build_prompt(q, [shot, shot]) == (
        "The following are multiple choice questions (with answers) about high school us history.\n\n"
        "Who?\nA. A1\nB. B1\nC. C1\nD. D1\nAnswer: C\n\n"
        "Who?\nA. A1\nB. B1\nC. C1\nD. D1\nAnswer: C\n\n"
        "When?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")


def test_both_csv_formats_load_the_same_questions(tmp_path: Path) -> None:
    a = mmlu.load_split(_write_mmlu(tmp_path / "cais", _answers()), "test", list(SUBJECT_SIZES))
    b = mmlu.load_split(_write_mmlu(tmp_path / "hendrycks", _answers(), hendrycks=True), "test",
                        list(SUBJECT_SIZES))
    assert a == b and [q.answer for q in a["anatomy"]] == _answers()["anatomy"]
    assert a["anatomy"][0].choices[1] == "b, b"  # quoted comma survives
    with pytest.raises(mmlu.MMLUDataError, match="Fix:"):
        mmlu.load_split(tmp_path / "cais", "test", ["virology"])
    with pytest.raises(ValueError, match="Fix:"):
        mmlu.check_subjects(["anatomyy"])


@pytest.mark.shared_data
def test_real_mmlu_folders_agree_on_dev() -> None:
    """../shared/data/mmlu (header, 0-3) and the Hendrycks 2020-09 snapshot (A-D) hold the same dev answers."""
    if not (SHARED_DATA / "mmlu").is_dir() or not (SHARED_DATA / "mmlu_hendrycks_2020-09").is_dir():
        pytest.skip(f"MMLU folders not found under {SHARED_DATA}")
    a = mmlu.load_split(SHARED_DATA / "mmlu", "dev")
    b = mmlu.load_split(SHARED_DATA / "mmlu_hendrycks_2020-09", "dev")
    assert all(len(v) == 5 for v in a.values()) and a["abstract_algebra"] == b["abstract_algebra"]
    # 14 subjects' dev rows got wording edits later ("as of 2020"), one got an answer fixed; every other answer
    # maps 0-3 <-> A-D the same way
    assert sum(a[s] == b[s] for s in a) == 43
    assert [s for s in a if [q.answer for q in a[s]] != [q.answer for q in b[s]]] == ["machine_learning"]
    assert len(mmlu.load_split(SHARED_DATA / "mmlu", "test", ["abstract_algebra"])["abstract_algebra"]) == 100


# ----------------------------------------------------------------------------------------------- evaluator


def test_letter_tokens_follow_lm_eval_split() -> None:
    """The byte tokenizer turns " A" into two tokens (space, A): the shared space joins the prompt."""
    tok = byte_tokenizer("decoder")
    ids, letters = mmlu.letter_continuations(tok, "Q\nAnswer:")
    space, a = tok(" A", add_special_tokens=False)["input_ids"]
    assert ids == [BOS_ID] + tok("Q\nAnswer: ", add_special_tokens=False)["input_ids"] and ids[-1] == space
    assert letters == tuple(tok(x, add_special_tokens=False)["input_ids"][0] for x in "ABCD") and letters[0] == a


def test_too_long_prompts_keep_the_first_k_dev_examples(tmp_path: Path) -> None:
    """Over the budget, the prompt keeps the first k dev examples that fit (Hendrycks' evaluate.py): the last
    examples, next to the question, are the ones dropped."""
    root = _write_mmlu(tmp_path, _answers())
    tok = byte_tokenizer("decoder")
    test, dev = mmlu.load_split(root, "test", ["marketing"]), mmlu.load_split(root, "dev", ["marketing"])
    q = test["marketing"][0]
    lens = [len(mmlu.letter_continuations(tok, mmlu.build_prompt(q, dev["marketing"][:k]))[0]) for k in range(6)]
    enc = mmlu.encode_questions(tok, {"marketing": [q]}, dev, k_shot=5, max_len=lens[3])
    assert enc[0].shots == 3 and len(enc[0].input_ids) == lens[3]
    # as in Hendrycks' evaluate.py, the first k dev examples stay: the prompt is exactly the 3-shot prompt
    assert tok.decode(enc[0].input_ids[1:]) == mmlu.build_prompt(q, dev["marketing"][:3]) + " "


def test_shared_prefix_and_full_prompts_give_the_same_logits(tmp_path: Path) -> None:
    root = _write_mmlu(tmp_path, _answers())
    tok, model = byte_tokenizer("decoder"), _tiny_llama(init=0.5)
    test, dev = mmlu.load_split(root, "test", list(SUBJECT_SIZES)), mmlu.load_split(root, "dev", list(SUBJECT_SIZES))
    enc = mmlu.encode_questions(tok, test, dev)
    shared = mmlu.letter_logits(model, enc, batch_size=3, share_prefix=True)
    full = mmlu.letter_logits(model, enc, batch_size=5, share_prefix=False)
    one = torch.stack([model(input_ids=torch.tensor([e.input_ids])).logits[0, -1, list(e.letter_ids)]
                       for e in enc])  # no batching, no padding, no cache
    torch.testing.assert_close(shared, one, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full, one, atol=1e-4, rtol=1e-4)


def test_a_model_always_answering_c_scores_the_share_of_c(tmp_path: Path) -> None:
    """micro = all C answers / all questions; macro = mean over subjects of each one's C share (they differ)."""
    answers = {"anatomy": [2, 2, 0, 1], "marketing": [2, 0, 1, 3, 0, 1, 3, 0], "philosophy": [1, 3, 0]}
    root = _write_mmlu(tmp_path, answers)
    tok, model = byte_tokenizer("decoder"), _tiny_llama()
    c_id = tok("C", add_special_tokens=False)["input_ids"][0]

    def rig(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., c_id] += 1e4
        return logits

    model.lm_head.register_forward_hook(rig)
    res = mmlu.evaluate_mmlu(model, tok, data_dir=root, subjects=list(answers), batch_size=3)
    assert {p["prediction"] for p in res["predictions"]} == {"C"}
    assert res["micro"] == pytest.approx(3 / 15)
    assert res["macro"] == pytest.approx((2 / 4 + 1 / 8 + 0 / 3) / 3)
    assert res["subjects"]["marketing"] == {"acc": 1 / 8, "n": 8}
    assert res["categories"]["stem"]["acc"] == pytest.approx(0.5)
    assert res["categories"]["humanities"]["acc"] == 0.0
    assert len(res["predictions"]) == 15 and res["n_subjects"] == 3


def test_cli_writes_every_average_and_the_predictions(tmp_path: Path) -> None:
    root = _write_mmlu(tmp_path / "mmlu", _answers())
    model_dir = tmp_path / "model"
    _tiny_llama(init=0.5).save_pretrained(model_dir)
    byte_tokenizer("decoder").save_pretrained(model_dir)
    out = mmlu.main(["--model", str(model_dir), "--data-dir", str(root), "--subjects", "anatomy", "marketing",
                     "--limit-per-subject", "3", "--batch-size", "4", "--device", "cpu",
                     "--out", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["n_questions"] == 6 and len(saved["predictions"]) == 6
    assert set(saved) >= {"micro", "macro", "subjects", "categories", "predictions", "seconds"}
    assert saved["micro"] == pytest.approx(sum(p["correct"] for p in saved["predictions"]) / 6)
    assert out["macro"] == saved["macro"]


# ----------------------------------------------------------------------------------------------- task + training


def _instruct_overrides(tmp_path: Path, records: list[dict], **extra: str) -> list[str]:
    (tmp_path / "inst.json").write_text(json.dumps(records))
    root = _write_mmlu(tmp_path / "mmlu", _answers())
    base = {"model": "tiny_llama", "trainer": "tiny", "task": "instruct/alpaca", "task.data_dir": str(tmp_path),
            "task.train_file": "inst.json", "task.mmlu_dir": str(root),
            "task.mmlu_subjects": "[anatomy,marketing]", "task.max_source_len": "64", "task.max_target_len": "16"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_instruct_task_masks_the_prompt_token_by_token(tmp_path: Path) -> None:
    """Bilingual records read through configured field names; labels are -100 exactly on the prompt."""
    from lorafa_repro.tasks import build_task

    records = [{"en_instruction": "Say hi.", "en_input": "", "en_output": "hi", "instruction": "说", "output": "嗨"},
               {"en_instruction": "Echo.", "en_input": "ab", "en_output": "ab", "instruction": "", "output": ""}]
    cfg = compose_cfg(_instruct_overrides(tmp_path, records, **{"task.instruction_field": "en_instruction",
                                                                 "task.input_field": "en_input",
                                                                 "task.output_field": "en_output",
                                                                 "task.max_source_len": "1000"}))
    validate(cfg)
    tok = byte_tokenizer("decoder")
    rows = build_task(cfg.task).train_dataset(tok)
    for rec, row in zip(records, rows):
        prompt = [BOS_ID] + tok(build_prompt(rec["en_instruction"], rec["en_input"]),
                                add_special_tokens=False)["input_ids"]
        response = tok(rec["en_output"], add_special_tokens=False)["input_ids"] + [EOS_ID]
        assert row["input_ids"] == prompt + response
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert "### Input:" in tok.decode(rows[1]["input_ids"]) and "### Input:" not in tok.decode(rows[0]["input_ids"])


def test_bad_instruct_values_fail_before_loading(tmp_path: Path) -> None:
    records = [{"instruction": "a", "input": "", "output": "b"}]
    for extra, match in (({"task.template": "chat"}, "task.template"), ({"task.mmlu_average": "mean"}, "macro"),
                         ({"task.mmlu_subjects": "[anatomyy]"}, "anatomyy"),
                         ({"task.train_file": "nope.json"}, "not found"),
                         ({"task.mmlu_subjects": "[virology]"}, "virology_dev.csv")):
        with pytest.raises(ConfigError, match="Fix:") as e:
            validate(compose_cfg(_instruct_overrides(tmp_path, records, **extra)))
        assert match in str(e.value)
    with pytest.raises(ConfigError, match="decoder"):
        validate(compose_cfg(_instruct_overrides(tmp_path, records, model="tiny_roberta")))


def test_training_evaluates_a_subset_periodically_and_the_full_set_at_the_end(tmp_path: Path) -> None:
    from lorafa_repro.run import run

    records = [{"instruction": f"Count {i}", "input": "" if i % 2 else "x", "output": f"{i} {i + 1}"}
               for i in range(16)]
    cfg = compose_cfg(_instruct_overrides(tmp_path, records, method="lora_fa", **{
        "trainer.max_steps": "2", "trainer.eval_every": "1", "trainer.batch_size": "4",
        "task.mmlu_eval_limit_per_subject": "2"}))
    result = run(cfg, tmp_path / "out")
    final = result["metrics"]["final"]
    assert result["status"] == "success" and final["mmlu_questions"] == 12  # 4 anatomy + 8 marketing
    assert final["score"] == final["mmlu_macro"] == final["mmlu_5shot_macro"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["eval_mmlu_questions"] for x in lines if "eval_score" in x] == [4, 12]
    preds = (tmp_path / "out" / final["predictions_file"]).read_text().splitlines()
    assert len(preds) == 12 and json.loads(preds[0])["subject"] == "anatomy"

    # Table 3 from these files: the untuned model's evaluation beside it gives the gain and its paired SE
    table3 = _analysis("table3")
    base = {"kind": "mmlu_eval", "name": "tiny-llama (random init)", "micro": 0.5, "macro": 0.25,
            "n_questions": 12, "predictions": [dict(json.loads(x), correct=i < 3) for i, x in enumerate(preds)]}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tiny.json").write_text(json.dumps(base))
    table = table3.render(tmp_path / "out", tmp_path / "base", tmp_path / "t3")
    row = table[table["model"] == "tiny-llama (random init)"].iloc[0]
    assert row["ours_mmlu"] == round(100 * final["score"], 1) and row["base_mmlu"] == 25.0
    assert row["ours_gain"] == round(100 * final["score"] - 25.0, 1) and row["gain_se"] is not None
    md = (tmp_path / "t3" / "table3.md").read_text()
    assert "| llama-7b | alpaca | lora_fa | 83 / - | 37.4 / - | 2.3 / - |" in md  # random init never fills it


def _analysis(name: str):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gain_standard_error_is_paired() -> None:
    """sqrt(b + c - (b - c)^2 / n) / n over discordant questions, not the unpaired sqrt(p1 q1 / n + p2 q2 / n)."""
    tuned = dict(enumerate([True, True, False, False, True]))
    base = dict(enumerate([False, True, True, False, True]))
    se = _analysis("table3").paired_se(tuned, base)
    assert se == pytest.approx(2 ** 0.5 / 5)  # b = c = 1; the unpaired value would be 0.3098
    assert _analysis("table3").paired_se(tuned, {**base, 9: True}) is None  # different question sets


# ----------------------------------------------------------------------------------------------- lm-eval


def test_predictions_equal_lm_eval_harness(tmp_path: Path) -> None:
    """lm-eval 0.4's 5-shot MMLU on the same in-memory model and local data predicts what we predict."""
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -e '.[mmlu]')")
    from lorafa_repro.mmlu_lmeval import run_lm_eval

    root = _write_mmlu(tmp_path, _answers())
    tok, model = byte_tokenizer("decoder"), _tiny_llama(seed=3, init=0.5)
    subjects = list(SUBJECT_SIZES)
    test, dev = mmlu.load_split(root, "test", subjects), mmlu.load_split(root, "dev", subjects)
    ours = mmlu.evaluate_mmlu(model, tok, data_dir=root, subjects=subjects, batch_size=4)
    theirs = run_lm_eval(model, tok, test, dev, k_shot=5, batch_size=4)
    mine = {(p["subject"], p["index"]): p["prediction"] for p in ours["predictions"]}
    assert len(mine) == 15 and mine == theirs["predictions"]
    assert len(set(mine.values())) > 1  # a model that always says the same letter would prove little
    for subject, questions in test.items():  # the very same prompt strings
        for q in questions:
            assert theirs["contexts"][(subject, q.index)] == mmlu.build_prompt(q, dev[subject][:5])


LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("method", ["ft", "lora", "lora_fa", "qlora", "qlora_fa", "lora_fa_v2"])
def test_every_method_trains_every_llama_linear(method: str) -> None:
    """On an instruction batch (response-only labels), each of q, k, v, o, gate, up, down gets a gradient in
    every block: on its weight (ft) or on its adapter (B always; A too unless the method freezes it)."""
    from types import SimpleNamespace

    from lorafa_repro import apply_method
    from lorafa_repro.models import build_model
    from lorafa_repro.tasks.causal_lm import causal_collate, encode_prompt_response

    tok = byte_tokenizer("decoder")
    torch.manual_seed(0)
    cfg = SimpleNamespace(source="shipped", path="tiny-llama", tokenizer="byte", arch="decoder", gguf_file=None)
    model = apply_method(build_model(cfg, task_kind="causal"), method, rank=4, alpha=8,
                         target_modules=list(LLAMA_LINEARS))
    rows = [encode_prompt_response(tok, build_prompt("Say hi.", ""), "hi there", max_prompt_len=128,
                                   max_response_len=16)]
    model(**causal_collate(tok)(rows)).loss.backward()
    suffix = "weight" if method == "ft" else "lora_B.default.weight"
    for layer in range(2):
        for lin in LLAMA_LINEARS:
            grads = [p.grad for n, p in model.named_parameters()
                     if f"layers.{layer}." in n and f".{lin}." in n and n.endswith(suffix)]
            assert len(grads) == 1 and grads[0] is not None and grads[0].abs().sum() > 0, (layer, lin)


@pytest.mark.parametrize("method", ["ft", "lora", "lora_fa", "lora_fa_v2", "qlora", "qlora_fa", "adapter"])
def test_every_method_runs_a_training_run_on_llama(tmp_path: Path, method: str) -> None:
    """run() end to end on tiny LLaMA for every registered method (4-bit ones included): two logged steps
    with finite losses, a trainable subset of the weights (all of them for FT), and the final MMLU evaluation
    on every question. (The loss going down is tested per method on GLUE and WMT16.)"""
    from lorafa_repro.methods import METHODS
    from lorafa_repro.run import run

    assert set(METHODS) <= {"ft", "lora", "lora_fa", "lora_fa_v2", "qlora", "qlora_fa", "adapter"}, \
        "a new method: add it to this test"
    records = [{"instruction": f"Count {i}", "input": "", "output": f"{i} {i + 1}"} for i in range(8)]
    cfg = compose_cfg(_instruct_overrides(tmp_path, records, method=method, **{
        "trainer.max_steps": "2", "trainer.batch_size": "4", "task.mmlu_eval_limit_per_subject": "1",
        "optim.lr": "1e-2", "optim.warmup_ratio": "0.0"}))
    result = run(cfg, tmp_path / "out")
    assert result["status"] == "success"
    losses = [json.loads(x)["loss"] for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    trainable, total = result["params"]["trainable"], result["params"]["total"]
    assert trainable == total if method == "ft" else 0 < trainable < total
    assert result["metrics"]["final"]["mmlu_questions"] == 12
