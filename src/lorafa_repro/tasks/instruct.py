"""Instruction tuning of a causal LM (Table 3): Alpaca or a seeded random FLAN v2 subset, scored by MMLU k-shot.

Training examples are prompt + response with the loss on the response only (``tasks/causal_lm.py``): the
Alpaca template below (the QLoRA repository's ``ALPACA_PROMPT_DICT``, i.e. Stanford Alpaca's with a space after
"### Response:"), with or without an input, prompt cut to ``task.max_source_len`` tokens from the front and
response to ``task.max_target_len`` (EOS included). ``task.template=plain`` uses the instruction (and the input
after a blank line) as the prompt verbatim, the form FLAN v2 records already have.

Data: ``task.data_dir`` + ``task.train_file`` (a JSON list or JSONL, field names from ``task.instruction_field``
/ ``input_field`` / ``output_field``; the bilingual Alpaca files use ``en_instruction`` / ``en_input`` /
``en_output``), or with ``data_dir=null`` the Hub dataset ``task.hub_dataset`` (``tatsu-lab/alpaca``;
``SirNeural/flan_v2`` for FLAN v2, fields ``inputs`` / ``targets``). ``task.max_train_samples`` draws a random
subset with the run's seed (FLAN v2: 50,000, as the paper did).

Evaluation: MMLU (``lorafa_repro.mmlu``) on ``task.mmlu_dir`` (null = Hub ``cais/mmlu``). Every ``eval_every``
steps on ``task.mmlu_eval_subjects`` / ``mmlu_eval_limit_per_subject`` (null = the final set); the last
evaluation (:meth:`InstructTask.evaluate_final`) on ``task.mmlu_subjects`` / ``mmlu_limit_per_subject`` (null =
all 57 subjects, every question). ``score`` is the ``task.mmlu_average`` (macro by default; see docs/mmlu.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lorafa_repro import mmlu
from lorafa_repro.results import write_jsonl_atomic
from lorafa_repro.tasks.causal_lm import causal_collate, encode_prompt_response
from lorafa_repro.tasks.glue_data import DataNotFoundError, read_utf8

#: the task names; each one's Hub source, fields and template are in conf/task/instruct/<name>.yaml
TASKS = ("alpaca", "flan_v2")
AVERAGES = ("macro", "micro")

# QLoRA repository (artidoro/qlora, qlora.py ALPACA_PROMPT_DICT)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: "
)
TEMPLATES = ("alpaca", "plain")


def task_names() -> list[str]:
    return list(TASKS)


def check_config(task_cfg: Any) -> None:
    """Value checks OmegaConf's types cannot do (called by schema.validate before anything is loaded)."""
    c = task_cfg
    if c.template not in TEMPLATES:
        raise ValueError(f"task.template must be one of {', '.join(TEMPLATES)}, got {c.template!r}. "
                         "Fix: task.template=alpaca")
    if c.mmlu_average not in AVERAGES:
        raise ValueError(f"task.mmlu_average must be macro or micro, got {c.mmlu_average!r}. "
                         "Fix: task.mmlu_average=macro")
    for key in ("max_source_len", "max_target_len"):
        if c[key] <= 0:
            raise ValueError(f"task.{key} must be > 0, got {c[key]}. Fix: task.{key}=128")
    if c.mmlu_k_shot < 0:
        raise ValueError(f"task.mmlu_k_shot must be >= 0, got {c.mmlu_k_shot}. Fix: task.mmlu_k_shot=5")
    for key in ("mmlu_limit_per_subject", "mmlu_eval_limit_per_subject"):
        if c[key] is not None and c[key] <= 0:
            raise ValueError(f"task.{key} must be > 0 or null, got {c[key]}. Fix: task.{key}=null")
    for key in ("mmlu_subjects", "mmlu_eval_subjects"):
        if c[key] is not None:
            try:
                mmlu.check_subjects(c[key])
            except ValueError as e:
                raise ValueError(f"task.{key}: {e}") from None
    if c.data_dir is None and not c.hub_dataset:
        raise ValueError("task.data_dir and task.hub_dataset are both null. Fix: task.data_dir=<folder> "
                         "task.train_file=<file>, or task.hub_dataset=tatsu-lab/alpaca")


def max_tokens(task_cfg: Any) -> int:
    """A training row is prompt + response; an MMLU prompt is up to max_seq_len tokens."""
    return max(task_cfg.max_source_len + task_cfg.max_target_len, task_cfg.max_seq_len)


def build_prompt(instruction: str, input_text: str | None = None, *, template: str = "alpaca") -> str:
    """The prompt a record's response follows (Alpaca: the input section only when the input is non-empty)."""
    has_input = bool(input_text and input_text.strip())
    if template == "alpaca":
        if has_input:
            return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    if template == "plain":
        return f"{instruction}\n\n{input_text}" if has_input else instruction
    raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def _train_path(data_dir: str | Path, task_cfg: Any) -> Path:
    return Path(data_dir) / task_cfg.train_file


def check_local_data(name: str, data_dir: Path, task_cfg: Any = None) -> None:
    if task_cfg is None or not task_cfg.get("train_file"):
        raise DataNotFoundError(f"task {name}: a local data_dir needs task.train_file. "
                                "Fix: task.train_file=alpaca_data_1k.json (a JSON list or JSONL file in data_dir)")
    path = _train_path(data_dir, task_cfg)
    if not path.is_file():
        raise DataNotFoundError(f"instruction data {path} not found. Fix: task.data_dir=<folder holding "
                                f"{task_cfg.train_file}> (e.g. ../shared/data/alpaca) or task.data_dir=null "
                                "for the Hub")
    records = read_records(path)
    if not records:
        raise DataNotFoundError(f"instruction data {path} holds no records. Fix: task.train_file=<a non-empty "
                                "JSON list or JSONL file> (e.g. alpaca_data_1k.json)")
    if task_cfg.get("mmlu_dir"):
        check_mmlu_data(task_cfg)


def _eval_subjects(c: Any) -> Any:
    return c.mmlu_eval_subjects if c.mmlu_eval_subjects is not None else c.mmlu_subjects


def check_mmlu_data(c: Any) -> None:
    """Raise DataNotFoundError when a local MMLU folder lacks, or holds a malformed copy of, a file the final or
    periodic evaluation reads, or a dev split shorter than task.mmlu_k_shot."""
    for subjects in (c.mmlu_subjects, _eval_subjects(c)):
        try:
            mmlu.check_local_mmlu(c.mmlu_dir, c.mmlu_split, subjects, k_shot=c.mmlu_k_shot)
        except (mmlu.MMLUDataError, ValueError) as e:
            raise DataNotFoundError(str(e)) from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSON Lines; a file that is neither is a DataNotFoundError naming the line."""
    fix = "Fix: task.train_file=<a UTF-8 JSON list of objects or JSONL file>"
    text = read_utf8(path, fix)
    is_list = text.lstrip().startswith("[")
    docs = [(1, text)] if is_list else [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    records: list[Any] = []
    for first_line, doc in docs:
        try:
            parsed = json.loads(doc)
        except json.JSONDecodeError as e:
            raise DataNotFoundError(f"{path}, line {first_line + e.lineno - 1}: not JSON ({e.msg}). {fix}") from None
        records += parsed if is_list else [parsed]
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise DataNotFoundError(f"{path}: record {bad[0]} is not a JSON object. {fix}")
    return records


def build(task_cfg: Any, *, seed: int = 0) -> "InstructTask":
    return InstructTask(task_cfg, seed=seed)


class InstructTask:
    kind = "causal"
    num_labels = None

    def __init__(self, cfg: Any, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.main_metric = f"mmlu_{cfg.mmlu_k_shot}shot_{cfg.mmlu_average}"
        self._train: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ data
    def records(self) -> list[tuple[str, str]]:
        """(prompt, response) pairs, the seeded random subset when ``max_train_samples`` is set."""
        c = self.cfg
        fields = (c.instruction_field, c.input_field, c.output_field)
        if c.data_dir is not None:
            raw = read_records(_train_path(c.data_dir, c))
        else:
            raw = self._hub_records()
        if c.max_train_samples is not None and c.max_train_samples < len(raw):
            raw = random.Random(self.seed).sample(raw, c.max_train_samples)
        out = []
        for i, r in enumerate(raw):
            missing = [f for f in (fields[0], fields[2]) if f not in r]
            if missing:
                raise DataNotFoundError(f"record {i} lacks field(s) {missing} (has {sorted(r)}). Fix: set "
                                        "task.instruction_field / task.input_field / task.output_field")
            inp = r.get(fields[1]) if fields[1] else None
            out.append((build_prompt(r[fields[0]], inp, template=c.template), str(r[fields[2]])))
        return out

    def _hub_records(self) -> list[dict[str, Any]]:
        from datasets import load_dataset

        c = self.cfg
        try:
            ds = load_dataset(c.hub_dataset, split="train")
        except Exception as e:
            raise DataNotFoundError(f"could not load {c.hub_dataset} from the Hub: {e}. Fix: task.data_dir=<folder> "
                                    "task.train_file=<json/jsonl file> (e.g. ../shared/data/alpaca)") from None
        if c.max_train_samples is not None and c.max_train_samples < len(ds):  # seeded subset before conversion
            ds = ds.shuffle(seed=self.seed).select(range(c.max_train_samples))
        return list(ds)

    def prepare(self, tokenizer: Any) -> None:
        self.train_dataset(tokenizer)
        if self.cfg.mmlu_dir is not None:  # fail on missing MMLU files before a model is built
            check_mmlu_data(self.cfg)

    def train_dataset(self, tokenizer: Any) -> list[dict[str, Any]]:
        if self._train is None:
            self._train = [encode_prompt_response(tokenizer, p, r, max_prompt_len=self.cfg.max_source_len,
                                                  max_response_len=self.cfg.max_target_len)
                           for p, r in self.records()]
        return self._train

    def collate_fn(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        return causal_collate(tokenizer)

    # ------------------------------------------------------------------ evaluation
    def _mmlu(self, model: nn.Module, tokenizer: Any, *, subjects: Any, limit: int | None, batch_size: int,
              device: torch.device, autocast: Callable[[], Any], predictions_path: Path | None) -> dict[str, Any]:
        c = self.cfg
        res = mmlu.evaluate_mmlu(model, tokenizer, data_dir=c.mmlu_dir, split=c.mmlu_split,
                                 subjects=list(subjects) if subjects is not None else None, limit_per_subject=limit,
                                 k_shot=c.mmlu_k_shot, max_len=c.max_seq_len, batch_size=batch_size, device=device,
                                 autocast=autocast)
        if predictions_path is not None:
            write_jsonl_atomic(predictions_path, res["predictions"])
        metrics: dict[str, Any] = {"score": res[c.mmlu_average], "mmlu_micro": res["micro"],
                                   "mmlu_macro": res["macro"], "mmlu_questions": res["n_questions"],
                                   "mmlu_subjects": res["n_subjects"], "mmlu_seconds": res["seconds"]}
        metrics[self.main_metric] = res[c.mmlu_average]
        metrics.update({f"mmlu_{cat}": v["acc"] for cat, v in res["categories"].items()})
        return metrics

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        """The periodic MMLU evaluation (the ``mmlu_eval_*`` subset; the final set when those are null)."""
        c = self.cfg
        subjects = _eval_subjects(c)
        limit = c.mmlu_eval_limit_per_subject if c.mmlu_eval_limit_per_subject is not None \
            else c.mmlu_limit_per_subject
        return self._mmlu(model, tokenizer, subjects=subjects, limit=limit, batch_size=batch_size, device=device,
                          autocast=autocast, predictions_path=predictions_path)

    def evaluate_final(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                       autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        """The last evaluation: ``mmlu_subjects`` / ``mmlu_limit_per_subject`` (null = the full test split)."""
        c = self.cfg
        return self._mmlu(model, tokenizer, subjects=c.mmlu_subjects, limit=c.mmlu_limit_per_subject,
                          batch_size=batch_size, device=device, autocast=autocast, predictions_path=predictions_path)
