"""Plain language modelling on raw text (``task=lm/<name>``): the task LongLoRA's context extension trains on.

Data: the text of ``<task.data_dir>/<task.train_file>`` (one document, read as it is), or with ``data_dir=null``
the Hub dataset ``task.hub_dataset`` (config ``task.hub_config``, split ``task.hub_split``, the text in field
``task.text_field``; documents joined with the tokenizer's EOS). The text is tokenized once, without special
tokens, and cut from its start into consecutive full chunks of ``task.max_seq_len`` tokens (the tail that does
not fill a chunk is dropped): no padding anywhere, as S2-Attn requires.

Split: the **last** ``task.max_eval_samples`` chunks are the held-out evaluation text (null: a tenth of the
chunks, at least one); training uses the chunks before them, the first ``task.max_train_samples`` of them
(null: all). The two never share a token. The loss falls on every token (``labels`` = ``input_ids``).

Evaluation, in ``model.eval()`` (so S2-Attn models attend in full): ``eval_loss`` = the mean next-token NLL over
every predicted token of the held-out chunks (each chunk predicts its tokens 2..L from the ones before, so
L-1 per chunk), and ``perplexity = exp(eval_loss)``, the corpus perplexity (not the mean of per-chunk
perplexities, which weighs hard chunks more). ``main_metric`` is ``perplexity``; since the training loop keeps
the evaluation with the highest ``score``, ``score`` is **minus** the perplexity. ``task.eval_seq_lens`` adds
``perplexity_<L>`` / ``eval_loss_<L>`` for the same held-out tokens re-cut into chunks of L tokens (does a
context extension hurt short contexts?). The predictions file has one line per held-out chunk (its first
token's offset in the tokenized text, tokens predicted, summed NLL, loss, perplexity).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lorafa_repro.results import write_jsonl_atomic
from lorafa_repro.tasks.glue_data import DataNotFoundError, read_utf8

#: task names; europarl_en = the English side of ../shared/data/wmt16_en_ro/corpus.en (conf/task/lm/*.yaml)
TASKS = ("europarl_en", "text")


def task_names() -> list[str]:
    return list(TASKS)


def check_config(task_cfg: Any) -> None:
    """Value checks before anything is loaded (schema.validate calls this)."""
    c = task_cfg
    if c.data_dir is None and not c.hub_dataset:
        raise ValueError("task.data_dir and task.hub_dataset are both null. Fix: task.data_dir=<folder> "
                         "task.train_file=<text file>, or task.hub_dataset=<Hub dataset with a text field>")
    if c.data_dir is not None and not c.train_file:
        raise ValueError("a local lm task needs task.train_file. Fix: task.train_file=<text file in task.data_dir>")
    for n in c.eval_seq_lens or []:
        if n < 2:
            raise ValueError(f"task.eval_seq_lens holds {n}; a chunk predicts L-1 tokens, so L >= 2. "
                             "Fix: task.eval_seq_lens=[2048]")


def max_tokens(task_cfg: Any) -> int:
    """Training chunks of max_seq_len tokens; evaluation also at each of eval_seq_lens."""
    return max([task_cfg.max_seq_len, *(task_cfg.eval_seq_lens or [])])


def check_local_data(name: str, data_dir: Path, task_cfg: Any = None) -> None:
    if task_cfg is None or not task_cfg.get("train_file"):
        raise DataNotFoundError(f"task lm/{name}: a local data_dir needs task.train_file. "
                                "Fix: task.train_file=<text file in data_dir> (e.g. corpus.en)")
    path = Path(data_dir) / task_cfg.train_file
    if not path.is_file():
        raise DataNotFoundError(f"text file {path} not found. Fix: task.data_dir=<folder holding "
                                f"{task_cfg.train_file}> (e.g. ../shared/data/wmt16_en_ro) or task.data_dir=null "
                                "with task.hub_dataset=<Hub dataset>")


def build(task_cfg: Any, *, seed: int = 0) -> "LMTask":
    return LMTask(task_cfg, seed=seed)


# ----------------------------------------------------------------------------------------------- chunking


def chunk_ids(ids: Sequence[int], seq_len: int) -> list[list[int]]:
    """Consecutive full chunks of ``seq_len`` tokens from the start; a shorter tail is dropped."""
    return [list(ids[i : i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def split_chunks(n_chunks: int, n_eval: int | None, n_train: int | None) -> tuple[range, range]:
    """(train, eval) chunk indices: eval = the last ``n_eval`` (None: a tenth, at least 1), train = the first
    ``n_train`` (None: all) of the ones before."""
    n_eval = max(1, n_chunks // 10) if n_eval is None else n_eval
    if n_chunks < n_eval + 1:
        raise DataNotFoundError(f"the text gives {n_chunks} chunk(s), fewer than {n_eval} held-out + 1 training. "
                                "Fix: lower task.max_seq_len or task.max_eval_samples, or use more text")
    first_eval = n_chunks - n_eval
    return range(min(first_eval, n_train) if n_train is not None else first_eval), range(first_eval, n_chunks)


def corpus_nll(nll_sums: Sequence[float], n_tokens: Sequence[int]) -> dict[str, float]:
    """Corpus loss and perplexity from per-chunk summed NLLs: exp(total NLL / total predicted tokens)."""
    total, count = float(sum(nll_sums)), int(sum(n_tokens))
    loss = total / count
    return {"eval_loss": loss, "perplexity": math.exp(loss), "eval_tokens": count}


@torch.no_grad()
def chunk_nll(model: nn.Module, batch: torch.Tensor) -> list[float]:
    """Summed next-token NLL of each row of ``batch`` (B, L) under ``model`` (L-1 predicted tokens per row)."""
    logits = model(input_ids=batch).logits[:, :-1]
    targets = batch[:, 1:].to(logits.device)
    return [float(nn.functional.cross_entropy(logits[r].float(), targets[r], reduction="sum"))
            for r in range(batch.shape[0])]


# ----------------------------------------------------------------------------------------------- the task


class LMTask:
    kind = "causal"
    num_labels = None
    main_metric = "perplexity"

    def __init__(self, cfg: Any, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self._ids: list[int] | None = None
        self._train: list[dict[str, Any]] | None = None
        self._eval_span: tuple[int, int] | None = None  # [start, end) token offsets of the held-out text

    # ------------------------------------------------------------------ data
    def documents(self) -> list[str]:
        c = self.cfg
        if c.data_dir is not None:
            return [read_utf8(Path(c.data_dir) / c.train_file, "Fix: task.train_file=<a UTF-8 text file>")]
        from datasets import load_dataset

        try:
            ds = load_dataset(c.hub_dataset, c.hub_config, split=c.hub_split)
        except Exception as e:
            raise DataNotFoundError(f"could not load {c.hub_dataset} ({c.hub_config}) from the Hub: {e}. Fix: "
                                    "task.data_dir=<folder> task.train_file=<text file>") from None
        if c.text_field not in ds.column_names:
            raise DataNotFoundError(f"{c.hub_dataset} has no field {c.text_field!r} (has {ds.column_names}). "
                                    "Fix: task.text_field=<its text column>")
        return [t for t in ds[c.text_field] if t and t.strip()]

    def token_ids(self, tokenizer: Any) -> list[int]:
        """The whole text as one token stream (documents joined with EOS)."""
        if self._ids is None:
            ids: list[int] = []
            docs = self.documents()
            for i, doc in enumerate(docs):
                ids += tokenizer(doc, add_special_tokens=False)["input_ids"]
                if i < len(docs) - 1 and tokenizer.eos_token_id is not None:
                    ids.append(tokenizer.eos_token_id)
            self._ids = ids
        return self._ids

    def prepare(self, tokenizer: Any) -> None:
        self.train_dataset(tokenizer)

    def train_dataset(self, tokenizer: Any) -> list[dict[str, Any]]:
        if self._train is None:
            L = self.cfg.max_seq_len
            chunks = chunk_ids(self.token_ids(tokenizer), L)
            train, held_out = split_chunks(len(chunks), self.cfg.max_eval_samples, self.cfg.max_train_samples)
            self._eval_span = (held_out.start * L, held_out.stop * L)
            self._train = [{"input_ids": chunks[i], "labels": chunks[i]} for i in train]
        return self._train

    def collate_fn(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:  # full chunks: no padding, no mask
            return {k: torch.tensor([r[k] for r in rows], dtype=torch.long) for k in ("input_ids", "labels")}

        return collate

    def eval_chunks(self, tokenizer: Any, seq_len: int) -> list[tuple[int, list[int]]]:
        """(offset, chunk) pairs: the held-out text cut into chunks of ``seq_len`` tokens."""
        self.train_dataset(tokenizer)
        start, end = self._eval_span  # type: ignore[misc]
        ids = self.token_ids(tokenizer)[start:end]
        return [(start + i * seq_len, c) for i, c in enumerate(chunk_ids(ids, seq_len))]

    # ------------------------------------------------------------------ evaluation
    def _perplexity(self, model: nn.Module, tokenizer: Any, seq_len: int, *, batch_size: int, device: torch.device,
                    autocast: Callable[[], Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        chunks = self.eval_chunks(tokenizer, seq_len)
        if not chunks:
            raise ValueError(f"the held-out text ({self._eval_span}) is shorter than one chunk of {seq_len} tokens. "
                             "Fix: drop that length from task.eval_seq_lens")
        rows: list[dict[str, Any]] = []
        for i in range(0, len(chunks), batch_size):
            part = chunks[i : i + batch_size]
            with autocast():
                sums = chunk_nll(model, torch.tensor([c for _, c in part], dtype=torch.long, device=device))
            for (offset, c), s in zip(part, sums):
                n = len(c) - 1
                rows.append({"id": len(rows), "seq_len": seq_len, "offset": offset, "tokens": n, "nll_sum": s,
                             "loss": s / n, "perplexity": math.exp(s / n)})
        return corpus_nll([r["nll_sum"] for r in rows], [r["tokens"] for r in rows]), rows

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        try:
            L = self.cfg.max_seq_len
            main, rows = self._perplexity(model, tokenizer, L, batch_size=batch_size, device=device,
                                          autocast=autocast)
            metrics: dict[str, Any] = {"score": -main["perplexity"], **main, "eval_chunks": len(rows),
                                       "eval_seq_len": L}
            for n in self.cfg.eval_seq_lens or []:
                extra, extra_rows = self._perplexity(model, tokenizer, n, batch_size=batch_size, device=device,
                                                     autocast=autocast)
                metrics[f"perplexity_{n}"], metrics[f"eval_loss_{n}"] = extra["perplexity"], extra["eval_loss"]
                rows += [{**r, "id": len(rows) + j} for j, r in enumerate(extra_rows)]
        finally:
            model.train(was_training)
        if predictions_path is not None:
            write_jsonl_atomic(predictions_path, rows)
        return metrics
