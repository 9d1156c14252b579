"""What the training loop needs from a task."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn


class Task(Protocol):
    #: classification | seq2seq | causal — picks the model head (models.build_model); causal-LM tasks share
    #: their prompt/response encoding in tasks/causal_lm.py
    kind: str
    #: number of labels for classification heads (1 = regression), else None
    num_labels: int | None
    #: the metric reported as the task's score (``score`` in the metrics dict mirrors it)
    main_metric: str

    def prepare(self, tokenizer: Any) -> None:
        """Load and tokenize every split; raise DataNotFoundError (naming the fix) when data is missing."""
        ...

    def train_dataset(self, tokenizer: Any) -> list[dict[str, Any]]: ...

    def collate_fn(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]: ...

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        """Score ``model`` on the evaluation split(s). The dict holds ``score`` (the main metric, higher is
        better) and float metrics; a value that is not a number (a metric's signature, say) is kept as a string.
        With ``predictions_path``, also write one JSON line per evaluated example there (id, input, prediction,
        reference), so anyone can rescore the run without the model."""
        ...

    # Optional: ``evaluate_final`` with evaluate's signature; when a task has it, the training loop calls it for
    # the last evaluation instead of ``evaluate`` (the instruct family evaluates a subset of MMLU periodically and
    # the full test split at the end).
