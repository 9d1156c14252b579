"""The same MMLU questions through lm-evaluation-harness (lm-eval 0.4), for cross-checks and speed comparisons.

The questions (any of our loaders' output) are written as JSON Lines in the ``cais/mmlu`` schema and read by one
lm-eval task per subject that ``include``s lm-eval's own MMLU template (``tasks/mmlu/default/
_default_template_yaml``: doc_to_text, choices, first-n few-shot sampler from the dev split) and its own subject
description, with only ``dataset_path: json`` + ``data_files`` changed. The model is passed in memory
(``HFLM(pretrained=model, tokenizer=tokenizer)``). lm-eval's prediction per question is the argmax of its
four continuation log-likelihoods (its ``acc``). Needs ``pip install lm-eval`` (the ``mmlu`` extra).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from lorafa_repro.mmlu import LETTERS, Question


def _write_jsonl(path: Path, questions: list[Question]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"question": q.question, "subject": q.subject, "choices": list(q.choices),
                                "answer": q.answer, "index": q.index}) + "\n")


def write_task_configs(root: Path, test: dict[str, list[Question]], dev: dict[str, list[Question]]) -> list[str]:
    """One lm-eval task YAML per subject under ``root`` (plus its data files); returns the task names."""
    import yaml
    from lm_eval import tasks as lm_tasks

    mmlu_dir = Path(lm_tasks.__file__).parent / "mmlu" / "default"
    names = []
    for subject, questions in test.items():
        _write_jsonl(root / f"{subject}_test.jsonl", questions)
        _write_jsonl(root / f"{subject}_dev.jsonl", dev[subject])
        upstream = yaml.safe_load((mmlu_dir / f"mmlu_{subject}.yaml").read_text())
        name = f"local_mmlu_{subject}"
        cfg = {"include": str(mmlu_dir / "_default_template_yaml"), "task": name,
               "description": upstream["description"], "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"test": str(root / f"{subject}_test.jsonl"),
                                                 "dev": str(root / f"{subject}_dev.jsonl")}}}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names.append(name)
    return names


def run_lm_eval(model: nn.Module, tokenizer: Any, test: dict[str, list[Question]], dev: dict[str, list[Question]],
                *, k_shot: int = 5, batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """lm-eval's k-shot MMLU on ``test``: ``predictions`` {(subject, index): letter}, ``contexts``
    {(subject, index): prompt string}, ``seconds`` (evaluation only, task building included)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        names = write_task_configs(Path(tmp), test, dev)
        t0 = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        out = simple_evaluate(model=lm, tasks=names, num_fewshot=k_shot, task_manager=manager,
                              log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0)
        seconds = time.perf_counter() - t0
    predictions, contexts = {}, {}
    for name in names:
        for s in out["samples"][name]:
            lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in s["filtered_resps"]]
            key = (s["doc"]["subject"], int(s["doc"]["index"]))
            predictions[key] = LETTERS[max(range(4), key=lambda i: lls[i])]
            contexts[key] = s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple)) \
                else s["arguments"]["gen_args_0"]["arg_0"]
    return {"predictions": predictions, "contexts": contexts, "seconds": seconds}
