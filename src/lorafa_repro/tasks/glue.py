"""GLUE as a training task: tokenization, batching and evaluation with the paper's metrics.

Data loading and the metric functions live in ``glue_data.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorWithPadding

from lorafa_repro.results import write_jsonl_atomic
from lorafa_repro.tasks.glue_data import (GLUE_TASKS, GlueExample, check_local_glue, glue_metrics, load_glue_split,
                                          mnli_metrics)


def task_names() -> list[str]:
    return list(GLUE_TASKS)


def check_local_data(name: str, data_dir: Path, task_cfg: Any = None) -> None:
    check_local_glue(data_dir, name, ("train", *GLUE_TASKS[name].eval_splits))


def build(task_cfg: Any, *, seed: int = 0) -> "GlueTask":
    return GlueTask(task_cfg, seed=seed)


class GlueTask:
    kind = "classification"

    def __init__(self, cfg: Any, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.info = GLUE_TASKS[cfg.name]
        self.num_labels = self.info.num_labels
        self.main_metric = self.info.main_metric
        self._train: list[dict[str, Any]] | None = None
        self._eval: dict[str, list[dict[str, Any]]] | None = None

    def prepare(self, tokenizer: Any) -> None:
        """Load and tokenize every split now, so missing data fails before a model is built."""
        self.train_dataset(tokenizer)
        self.eval_datasets(tokenizer)

    def _load(self, split: str, max_samples: int | None) -> list[GlueExample]:
        return load_glue_split(self.cfg.name, split, data_dir=self.cfg.data_dir, max_samples=max_samples,
                               seed=self.seed)

    def _encode(self, examples: list[GlueExample], tokenizer: Any) -> list[dict[str, Any]]:
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=self.cfg.max_seq_len)
        if not len(enc["input_ids"]) == len(enc["attention_mask"]) == len(examples):  # zip would drop the rest
            raise RuntimeError(f"the tokenizer returned {len(enc['input_ids'])} encodings for {len(examples)} "
                               f"{self.cfg.name} examples")
        label_type = float if self.info.is_regression else int
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label_type(e.label)}
            for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples)
        ]

    def train_dataset(self, tokenizer: Any) -> list[dict[str, Any]]:
        if self._train is None:
            self._train = self._encode(self._load("train", self.cfg.max_train_samples), tokenizer)
        return self._train

    def eval_datasets(self, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
        if self._eval is None:
            self._eval = {s: self._encode(self._load(s, self.cfg.max_eval_samples), tokenizer)
                          for s in self.info.eval_splits}
        return self._eval

    def collate_fn(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        collate = self.collate_fn(tokenizer)
        was_training = model.training
        model.eval()
        per_split: dict[str, dict[str, float]] = {}
        losses = []
        records: list[dict[str, Any]] = []
        for split, data in self.eval_datasets(tokenizer).items():
            preds, labels = [], []
            for i in range(0, len(data), batch_size):
                batch = {k: v.to(device) for k, v in collate(data[i : i + batch_size]).items()}
                with autocast():
                    out = model(**batch)
                losses.append(out.loss.float().item())
                logits = out.logits.float()
                preds.append(logits.squeeze(-1) if self.info.is_regression else logits.argmax(-1))
                labels.append(batch["labels"])
            split_preds, split_labels = torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy()
            per_split[split] = glue_metrics(self.cfg.name, split_preds, split_labels)
            records.extend({"split": split, "id": i, "prediction": p.item(), "reference": r.item()}
                           for i, (p, r) in enumerate(zip(split_preds, split_labels)))
        model.train(was_training)
        if self.cfg.name == "mnli":
            metrics = mnli_metrics(per_split["validation_matched"], per_split["validation_mismatched"])
        else:
            metrics = dict(per_split["validation"])
        metrics["eval_loss"] = float(np.mean(losses))
        if predictions_path is not None:
            write_jsonl_atomic(predictions_path, records)
        return metrics
