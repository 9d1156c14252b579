"""MMLU k-shot evaluation of any Hugging Face causal LM, with the standard Hendrycks / lm-evaluation-harness prompt.

    python -m lorafa_repro.mmlu --model <hub id or dir> [--gguf-file F] [--adapter <peft dir>] --data-dir <dir>
        [--subjects ...] [--k-shot 5] [--limit-per-subject N] [--name <label>] --out <file.json>

Prompt (Hendrycks' ``evaluate.py`` and lm-eval's ``mmlu`` task, identical): the line
"The following are multiple choice questions (with answers) about <subject with spaces>.\\n\\n", then the first k
dev examples of the subject, each "<question>\\nA. <c0>\\nB. <c1>\\nC. <c2>\\nD. <c3>\\nAnswer: <letter>\\n\\n", then
the test question in the same form ending in "Answer:".

Prediction: the answer letter whose token has the highest next-token logit after the prompt. The letter tokens
are those lm-eval scores: the continuation " A" ... " D" split off the tokenization of prompt + " A" (lm-eval's
``_encode_pair``). For LLaMA's SentencePiece tokenizer that is the single token "▁A" (tokenizing "A"
alone gives the same id, because SentencePiece prefixes a space); for byte-level BPE tokenizers (GPT-2, SmolLM2)
it is "ĠA" (space + A), which is *not* the id of "A" alone. A tokenizer that splits " A" into several tokens
(the suite's byte tokenizer: a space byte, then "A") is handled exactly: the shared leading tokens (the space)
join the prompt and the letters are compared at the next position. Since every continuation then is one token,
the highest logit is the highest log-likelihood, i.e. lm-eval's ``acc`` prediction.

A prompt longer than ``max_len`` tokens keeps fewer few-shot examples: the first k-1, k-2, ... dev examples
(the last ones, next to the question, are dropped first), as Hendrycks' ``evaluate.py`` does; a zero-shot prompt
that is still too long keeps its last ``max_len`` tokens.

Speed: questions of one subject share their few-shot prefix; its keys/values are computed once per subject and
reused (``past_key_values``) for every batch of question suffixes, which are length-sorted and left-padded, so
only the last position's logits are computed.

Averages: ``micro`` = correct / questions over everything evaluated (lm-eval's ``mmlu`` group score, size-
weighted), ``macro`` = mean of the per-subject accuracies (the QLoRA repository's MMLU callback). Categories
(STEM, humanities, social sciences, other; lm-eval's grouping) are size-weighted, as lm-eval's groups are.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

LETTERS = ("A", "B", "C", "D")

#: subject -> category (lm-eval's lm_eval/tasks/mmlu/_generate_configs.py, after Hendrycks et al.)
SUBJECTS: dict[str, str] = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}
CATEGORIES = ("stem", "humanities", "social_sciences", "other")
HUB_DATASET = "cais/mmlu"


class MMLUDataError(FileNotFoundError):
    """MMLU data is missing or malformed; the message ends with the fix."""


@dataclass(frozen=True)
class Question:
    subject: str
    index: int  # row within the subject's split file
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0..3


# ----------------------------------------------------------------------------------------------- data


MMLU_FIX = "Fix: point the MMLU data folder at a complete copy (e.g. ../shared/data/mmlu) or repair the file"


def _read_csv(path: Path, subject: str) -> list[Question]:
    """Either format on disk: a header ``question,choice0..3,answer`` with 0-3 answers (cais/mmlu content), or
    Hendrycks' headerless six columns with an A-D answer. A malformed row is an MMLUDataError naming the file and
    line; blank lines are skipped."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as e:
        raise MMLUDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}). {MMLU_FIX}") from None
    except csv.Error as e:
        raise MMLUDataError(f"{path}: not a readable CSV file ({e}). {MMLU_FIX}") from None
    if rows and [c.strip().lower() for c in rows[0][1]] == ["question", "choice0", "choice1", "choice2", "choice3",
                                                            "answer"]:
        rows = rows[1:]
    out = []
    for i, (line, row) in enumerate(rows):
        if len(row) != 6:
            raise MMLUDataError(f"{path}, line {line}: {len(row)} columns, expected 6 (question, 4 choices, "
                                f"answer). {MMLU_FIX}")
        a = row[5].strip()
        answer = LETTERS.index(a) if a in LETTERS else int(a) if a in ("0", "1", "2", "3") else None
        if answer is None:
            raise MMLUDataError(f"{path}, line {line}: answer {a!r} is neither A-D nor 0-3. {MMLU_FIX}")
        out.append(Question(subject, i, row[0], (row[1], row[2], row[3], row[4]), answer))
    return out


def check_subjects(subjects: Iterable[str] | None) -> list[str]:
    names = list(SUBJECTS) if subjects is None else list(subjects)
    if not names:
        raise ValueError("no MMLU subjects given. Fix: name at least one (e.g. abstract_algebra), or leave the "
                         "subjects unset for all 57")
    bad = [s for s in names if s not in SUBJECTS]
    if bad:
        raise ValueError(f"unknown MMLU subject(s) {bad}. Fix: use names such as abstract_algebra, anatomy "
                         f"(the 57 in lorafa_repro.mmlu.SUBJECTS)")
    return names


def _folder(data_dir: str | Path, split: str) -> str:
    """The folder (and file suffix) of ``split``: Hendrycks' copy names the validation split ``val``."""
    return "val" if split == "validation" and (Path(data_dir) / "val").is_dir() else split


def check_k_shot(dev: dict[str, list[Question]], k_shot: int) -> None:
    """Raise MMLUDataError when a subject has fewer dev examples than ``k_shot`` (the prompt's shots)."""
    for subject, shots in dev.items():
        if len(shots) < k_shot:
            raise MMLUDataError(f"MMLU subject {subject} has {len(shots)} dev examples, {k_shot}-shot needs "
                                f"{k_shot}. Fix: a k-shot <= {len(shots)} (--k-shot / task.mmlu_k_shot; the "
                                "standard is 5) or the full dev split")


def check_local_mmlu(data_dir: str | Path, split: str = "test", subjects: Iterable[str] | None = None,
                     k_shot: int = 0) -> None:
    """Raise MMLUDataError (naming the file, line and fix) when a subject's dev or ``split`` file is missing,
    unreadable, malformed or empty, or its dev split is shorter than ``k_shot``: every file an evaluation would
    read is parsed here, before any model is loaded."""
    root = Path(data_dir)
    names = check_subjects(subjects)
    for subject in names:
        for s in dict.fromkeys(("dev", _folder(root, split))):
            path = root / s / f"{subject}_{s}.csv"
            if not path.is_file():
                raise MMLUDataError(f"MMLU file {path} not found. Fix: point the MMLU data folder at a copy with "
                                    "dev/ and test/ CSVs (e.g. ../shared/data/mmlu), or null for the Hub's cais/mmlu")
            if s != "dev" and not _read_csv(path, subject):
                raise MMLUDataError(f"MMLU file {path} holds no questions. {MMLU_FIX}")
    check_k_shot(load_split(root, "dev", names), k_shot)


def load_split(data_dir: str | Path | None, split: str, subjects: Iterable[str] | None = None,
               limit_per_subject: int | None = None) -> dict[str, list[Question]]:
    """``{subject: questions}`` from local CSVs (``<dir>/<split>/<subject>_<split>.csv``) or, with
    ``data_dir=None``, the Hub's ``cais/mmlu`` (split "dev", "validation" or "test"); the first
    ``limit_per_subject`` questions of each subject when given."""
    names = check_subjects(subjects)
    out: dict[str, list[Question]] = {}
    for subject in names:
        if data_dir is None:
            out[subject] = _load_hub(subject, split)
        else:
            folder = _folder(data_dir, split)
            path = Path(data_dir) / folder / f"{subject}_{folder}.csv"
            if not path.is_file():
                check_local_mmlu(data_dir, folder, [subject])
            out[subject] = _read_csv(path, subject)
        if limit_per_subject is not None:
            out[subject] = out[subject][:limit_per_subject]
    return out


def load_mmlu(data_dir: str | Path | None, split: str = "test", subjects: Iterable[str] | None = None,
              limit_per_subject: int | None = None, k_shot: int = 5
              ) -> tuple[dict[str, list[Question]], dict[str, list[Question]]]:
    """``(questions of split, dev examples)`` for ``subjects``, checked against ``k_shot`` (MMLUDataError)."""
    names = check_subjects(subjects)
    dev = load_split(data_dir, "dev", names)
    check_k_shot(dev, k_shot)
    return load_split(data_dir, split, names, limit_per_subject), dev


def _load_hub(subject: str, split: str) -> list[Question]:
    from datasets import load_dataset

    try:
        ds = load_dataset(HUB_DATASET, subject, split=split)
    except Exception as e:  # offline, or the Hub refuses
        raise MMLUDataError(f"could not load {HUB_DATASET}/{subject} ({split}) from the Hub: {e}. Fix: pass a local "
                            "MMLU folder (e.g. ../shared/data/mmlu)") from None
    return [Question(subject, i, r["question"], tuple(r["choices"]), int(r["answer"])) for i, r in enumerate(ds)]


# ----------------------------------------------------------------------------------------------- prompts


def subject_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_question(q: Question) -> str:
    """lm-eval's ``doc_to_text``: the stripped question, the four lettered choices, "Answer:"."""
    lines = [q.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)]
    return "\n".join(lines) + "\nAnswer:"


def build_prompt(q: Question, shots: Sequence[Question]) -> str:
    """The k-shot prompt for ``q`` (k = len(shots)); it ends with "Answer:" and the letter follows after a space."""
    examples = "".join(f"{format_question(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return subject_description(q.subject) + examples + format_question(q)


# ----------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    question: Question
    input_ids: list[int]  # prompt tokens (+ any token the four continuations share), the model's input
    letter_ids: tuple[int, int, int, int]  # next-token ids of " A" ... " D"
    shots: int  # few-shot examples kept


def letter_continuations(tokenizer: Any, prompt: str) -> tuple[list[int], tuple[int, int, int, int]]:
    """lm-eval's split of prompt + " X": context = tokens(prompt), continuation = tokens(prompt + " X") past it.
    Returns (context + the continuations' shared leading tokens, the four distinct last tokens)."""
    context = tokenizer(prompt)["input_ids"]
    wholes = tokenizer([f"{prompt} {letter}" for letter in LETTERS])["input_ids"]
    conts = [w[len(context):] for w in wholes]
    shared = 0
    while all(len(c) > shared + 1 for c in conts) and len({c[shared] for c in conts}) == 1:
        shared += 1
    lasts = tuple(c[shared] for c in conts if len(c) == shared + 1)
    if len(lasts) != 4 or len(set(lasts)) != 4:
        raise ValueError(f"the answer letters do not end in one distinct token each after the prompt "
                         f"(continuations {conts}); this evaluator compares one next-token logit per letter")
    return context + conts[0][:shared], lasts  # type: ignore[return-value]


def encode_questions(tokenizer: Any, test: dict[str, list[Question]], dev: dict[str, list[Question]], *,
                     k_shot: int = 5, max_len: int = 2048) -> list[Encoded]:
    """Encode every question with as many of its subject's first ``k_shot`` dev examples as fit ``max_len``."""
    out = []
    for subject, questions in test.items():
        shots = dev.get(subject, [])[:k_shot]
        if len(shots) < k_shot:
            raise MMLUDataError(f"subject {subject} has {len(shots)} dev examples, {k_shot}-shot needs {k_shot}. "
                                "Fix: lower --k-shot or use the full dev split")
        for q in questions:
            for k in range(k_shot, -1, -1):
                ids, letters = letter_continuations(tokenizer, build_prompt(q, shots[:k]))
                if len(ids) <= max_len:
                    break
            out.append(Encoded(q, ids[-max_len:], letters, k))
    return out


# ----------------------------------------------------------------------------------------------- scoring


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs):
            return i
    return n


def _expand_cache(cache: Any, batch: int) -> Any:
    from transformers import DynamicCache

    fresh = DynamicCache()
    if hasattr(cache, "layers"):  # transformers >= 4.54
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:
        pairs = list(zip(cache.key_cache, cache.value_cache))
    for layer_idx, (k, v) in enumerate(pairs):
        fresh.update(k.expand(batch, *k.shape[1:]).contiguous(), v.expand(batch, *v.shape[1:]).contiguous(),
                     layer_idx)
    return fresh


def _forward_names(model: nn.Module) -> tuple[str, bool]:
    """The KV-cache keyword (``cache`` from transformers 5.2x, ``past_key_values`` before) and whether the
    forward takes ``logits_to_keep``; a PEFT wrapper forwards both to its base model."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


@torch.no_grad()
def letter_logits(model: nn.Module, encoded: Sequence[Encoded], *, batch_size: int = 16,
                  device: torch.device | str = "cpu", autocast: Callable[[], Any] | None = None,
                  share_prefix: bool = True, pad_id: int = 0) -> torch.Tensor:
    """``[len(encoded), 4]`` next-token logits of the four letters after each prompt.

    Questions are grouped by subject and number of shots; with ``share_prefix`` the group's common token prefix
    runs once and its KV cache is reused by every batch of suffixes. Batches are length-sorted and left-padded
    with explicit position ids (so every row's last token is the last column and only its logits are computed;
    padding is masked out)."""
    import contextlib

    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext
    cache_kw, keep_kw = _forward_names(model)
    was_training = model.training
    model.eval()
    out = torch.empty(len(encoded), 4)
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, e in enumerate(encoded):
        groups[(e.question.subject, e.shots)].append(i)
    for idxs in groups.values():
        seqs = [encoded[i].input_ids for i in idxs]
        plen = min(_common_prefix_len(seqs), min(len(s) for s in seqs) - 1) if share_prefix else 0
        cache = None
        if plen > 0:
            prefix = torch.tensor([seqs[0][:plen]], device=device)
            with autocast():
                res = model(input_ids=prefix, use_cache=True, **({"logits_to_keep": 1} if keep_kw else {}))
            cache = getattr(res, "cache", None) or res.past_key_values
        order = sorted(range(len(idxs)), key=lambda j: -len(seqs[j]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            suffixes = [seqs[j][plen:] for j in chunk]
            width = max(len(s) for s in suffixes)
            ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes], device=device)
            pad = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
            mask = torch.cat([torch.ones(len(chunk), plen, dtype=pad.dtype, device=device), pad], dim=1)
            positions = (plen + pad.cumsum(1) - 1).clamp(min=0)
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
            if cache is not None:
                kwargs.update({cache_kw: _expand_cache(cache, len(chunk)), "use_cache": True})
            else:
                kwargs["use_cache"] = False
            if keep_kw:
                kwargs["logits_to_keep"] = 1
            with autocast():
                last = model(**kwargs).logits[:, -1].float()
            letter_ids = torch.tensor([encoded[idxs[j]].letter_ids for j in chunk], device=device)
            picked = last.gather(1, letter_ids).cpu()
            for row, j in enumerate(chunk):
                out[idxs[j]] = picked[row]
    model.train(was_training)
    return out


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """micro (size-weighted, lm-eval's ``mmlu``), macro (mean over subjects, QLoRA's callback), per-subject and
    per-category (size-weighted) accuracy from per-question records with ``subject`` and ``correct``."""
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_subject[r["subject"]].append(bool(r["correct"]))
    subjects = {s: {"acc": sum(v) / len(v), "n": len(v)} for s, v in sorted(by_subject.items())}
    categories = {}
    for cat in CATEGORIES:
        hits = [c for s, v in by_subject.items() if SUBJECTS.get(s) == cat for c in v]
        if hits:
            categories[cat] = {"acc": sum(hits) / len(hits), "n": len(hits),
                               "subjects": sum(SUBJECTS.get(s) == cat for s in by_subject)}
    n = len(records)
    return {"micro": sum(bool(r["correct"]) for r in records) / n if n else float("nan"),
            "macro": sum(v["acc"] for v in subjects.values()) / len(subjects) if subjects else float("nan"),
            "n_questions": n, "n_subjects": len(subjects), "subjects": subjects, "categories": categories}


def evaluate_mmlu(model: nn.Module, tokenizer: Any, *, data_dir: str | Path | None, split: str = "test",
                  subjects: Iterable[str] | None = None, limit_per_subject: int | None = None, k_shot: int = 5,
                  max_len: int = 2048, batch_size: int = 16, device: torch.device | str = "cpu",
                  autocast: Callable[[], Any] | None = None, share_prefix: bool = True,
                  data: tuple[dict[str, list[Question]], dict[str, list[Question]]] | None = None) -> dict[str, Any]:
    """Load (or take ``data``, :func:`load_mmlu`'s pair), encode and score; returns :func:`summarize`'s dict plus
    ``predictions`` (one record per question: subject, index, answer, prediction, correct, shots, the four letter
    logits) and ``seconds``."""
    t0 = time.perf_counter()
    test, dev = data if data is not None else load_mmlu(data_dir, split, subjects, limit_per_subject, k_shot)
    encoded = encode_questions(tokenizer, test, dev, k_shot=k_shot, max_len=max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logits = letter_logits(model, encoded, batch_size=batch_size, device=device, autocast=autocast,
                           share_prefix=share_prefix, pad_id=pad_id)
    preds = logits.argmax(-1).tolist()
    records = [{"subject": e.question.subject, "index": e.question.index, "answer": LETTERS[e.question.answer],
                "prediction": LETTERS[p], "correct": p == e.question.answer, "shots": e.shots,
                "logits": [round(x, 4) for x in row]}
               for e, p, row in zip(encoded, preds, logits.tolist())]
    summary = summarize(records)
    summary.update(k_shot=k_shot, split=split, max_len=max_len, seconds=time.perf_counter() - t0,
                   predictions=records)
    return summary


# ----------------------------------------------------------------------------------------------- CLI


def load_model(model: str, *, gguf_file: str | None = None, adapter: str | None = None,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """Any causal LM (Hub id or local dir; a GGUF file dequantized on load), optionally with a PEFT adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(model, **kwargs)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **kwargs)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    return net.to(device).eval(), tok


PROG = "python -m lorafa_repro.mmlu"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from lorafa_repro.cli import ArgumentParser, check_output_path, fail, user_errors

    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face Hub id or local directory; a Hub id that a pip "
                   "package of `make install-extras` carries (HuggingFaceTB/SmolLM2-135M-Instruct) loads from it")
    p.add_argument("--gguf-file", default=None, help="a GGUF file inside --model (dequantized to --dtype on load)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory to apply")
    p.add_argument("--data-dir", default=None, help="local MMLU folder (dev/, test/ CSVs; either format); "
                                                    "omit for the Hub's cais/mmlu")
    p.add_argument("--split", default="test", choices=("test", "validation", "dev"))
    p.add_argument("--subjects", nargs="+", default=None, help="default: all 57")
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--limit-per-subject", type=int, default=None)
    p.add_argument("--max-len", type=int, default=2048, help="prompt token budget; beyond it fewer few-shot "
                                                              "examples: the first k dev examples that fit")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-share-prefix", action="store_true", help="run every full prompt (for timing comparisons)")
    p.add_argument("--name", default=None, help="model label stored in the output (analysis/table3.py matches "
                                                "it with the training runs' model.name); default: --model's last "
                                                "path part")
    p.add_argument("--out", required=True, help="output JSON file")
    a = p.parse_args(argv)
    if a.k_shot < 0 or (a.limit_per_subject is not None and a.limit_per_subject <= 0):
        p.error("--k-shot must be >= 0 and --limit-per-subject > 0")
    if a.batch_size < 1 or a.max_len < 1:
        p.error("--batch-size and --max-len must be >= 1")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible")
    with user_errors(PROG, MMLUDataError, ValueError):  # everything checkable, before the model loads
        check_output_path(a.out, "--out")
        data = load_mmlu(a.data_dir, a.split, a.subjects, a.limit_per_subject, a.k_shot)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto"
                                                                               else a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
        a.dtype, torch.bfloat16 if device == "cuda" else torch.float32)
    from lorafa_repro.local_models import check_reachable, resolve
    from lorafa_repro.results import env_info, write_json_atomic

    path, gguf_file = resolve(a.model, a.gguf_file)  # a pip-packaged model (make install-extras) by its Hub id
    try:
        check_reachable(path, override="--model")
    except FileNotFoundError as e:
        fail(PROG, str(e))
    t0 = time.perf_counter()
    try:
        model, tok = load_model(path, gguf_file=gguf_file, adapter=a.adapter, device=device, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:  # transformers / PEFT: no such model, no config, bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(PROG, f"cannot load model {a.model!r}{f' with adapter {a.adapter!r}' if a.adapter else ''} "
                   f"({type(e).__name__}: {first}). Fix: --model <a Hub id or a local folder with config.json and "
                   "weights>, --gguf-file <a .gguf inside it>, --adapter <a PEFT adapter folder>")
    load_s = time.perf_counter() - t0
    res = evaluate_mmlu(model, tok, data_dir=a.data_dir, split=a.split, subjects=a.subjects,
                        limit_per_subject=a.limit_per_subject, k_shot=a.k_shot, max_len=a.max_len,
                        batch_size=a.batch_size, device=device, share_prefix=not a.no_share_prefix, data=data)
    out = {"kind": "mmlu_eval", "name": a.name or Path(a.model.rstrip("/")).name, "model": a.model,
           "loaded_from": path, "gguf_file": gguf_file, "adapter": a.adapter,
           "data_dir": a.data_dir, "dtype": str(dtype).replace("torch.", ""), "device": device,
           "load_s": load_s, **res, "env": env_info()}
    write_json_atomic(a.out, out)
    print(f"MMLU {a.k_shot}-shot on {res['n_questions']} questions ({res['n_subjects']} subjects): "
          f"micro {100 * res['micro']:.2f}  macro {100 * res['macro']:.2f}  ({res['seconds']:.1f} s) -> {a.out}")
    return out


if __name__ == "__main__":
    main()
