"""WMT16 translation (Table 2: T5 on English->Romanian) as a training task: data, teacher-forced training rows,
batched beam-search generation and the metrics (sacreBLEU, chrF, ROUGE-L).

Two model shapes train on the same data:

* **encoder-decoder** (T5, ``kind = "seq2seq"``): the encoder reads ``source_prefix + source`` (at most
  ``max_seq_len`` tokens), ``labels`` are the target's tokens (at most ``max_target_len``, EOS included), padded
  with -100; the model builds its decoder inputs from them (teacher forcing).
* **decoder-only** (a causal LM such as SmolLM2, ``kind = "causal"``): ``decoder_prompt`` with the source filled
  in is the prompt, " " + target the response, and the loss falls on the response only (``tasks/causal_lm.py``).

Which one is picked by ``task.model_arch`` (the task config sets it to ``${model.arch}``).

Data: the Hub's ``wmt/wmt16`` ``ro-en`` (``task.data_dir=null``), or line-aligned text files
``<data_dir>/<stem>.<lang>`` with the stems ``train_file`` / ``validation_file`` / ``test_file``
(WMT's own newsdev2016 / newstest2016 and the Europarl ``corpus`` files of ``../shared/data/wmt16_en_ro``).
``max_train_samples`` / ``max_eval_samples`` keep the *first* N pairs of a split (deterministic subsets).

Metrics (``translation_metrics``): sacreBLEU corpus BLEU with its default 13a tokenizer (the signature is kept),
chrF, and ROUGE-L F1 x 100 from ``rouge-score``: the mean over sentences of the sentence-level ROUGE-L F1. Its
default tokenizer keeps only ``[a-z0-9]`` and so splits Romanian words at every diacritic ("știința" -> "tiin",
"a"); ``rougeL`` therefore tokenizes with :class:`UnicodeWordTokenizer` (lower-cased Unicode word characters, no
stemming), and ``rougeL_ascii`` keeps the library default (what HF ``evaluate``'s "rouge" would report).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lorafa_repro.errors import ConfigError
from lorafa_repro.results import write_jsonl_atomic
from lorafa_repro.tasks.causal_lm import causal_collate, encode_prompt, encode_prompt_response, pad_rows
from lorafa_repro.tasks.glue_data import DataNotFoundError, read_utf8

#: task name -> (source language, target language, Hub config)
PAIRS: dict[str, tuple[str, str, str]] = {"en_ro": ("en", "ro", "ro-en")}
HUB_DATASET = "wmt/wmt16"
SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Pair:
    id: int
    source: str
    target: str


def task_names() -> list[str]:
    return list(PAIRS)


def build(task_cfg: Any, *, seed: int = 0) -> "Wmt16Task":
    check_config(task_cfg)
    return Wmt16Task(task_cfg, seed=seed)


def check_config(cfg: Any) -> None:
    """Value checks for the wmt16 keys (cheap; before any data or model is loaded)."""

    for key, example in (("max_target_len", "128"), ("num_beams", "4"), ("max_new_tokens", "128")):
        if cfg[key] is None or cfg[key] <= 0:
            raise ConfigError(f"task.{key} must be > 0, got {cfg[key]!r}. Fix: task.{key}={example}")
    if cfg.eval_split not in EVAL_SPLITS:
        raise ConfigError(f"task.eval_split must be one of {', '.join(EVAL_SPLITS)}, got {cfg.eval_split!r}. "
                          "Fix: task.eval_split=validation")
    if "{source}" not in cfg.decoder_prompt:
        raise ConfigError("task.decoder_prompt must contain '{source}'. "
                          "Fix: task.decoder_prompt='English: {source}\\nRomanian:'")


# ----------------------------------------------------------------------------------------------------- data


def max_tokens(cfg: Any) -> int:
    """Decoder-only: the prompt, then the response (training) or the generated tokens; T5: the longer side."""
    if cfg.model_arch == "decoder":
        return cfg.max_seq_len + max(cfg.max_target_len, cfg.max_new_tokens)
    return max(cfg.max_seq_len, cfg.max_target_len, cfg.max_new_tokens)


def split_files(data_dir: str | Path, cfg: Any, split: str) -> tuple[Path, Path]:
    """The (source, target) files a local split is read from: ``<data_dir>/<stem>.<lang>``."""
    src, tgt, _ = PAIRS[cfg.name]
    stem = cfg[f"{split}_file"]
    return Path(data_dir) / f"{stem}.{src}", Path(data_dir) / f"{stem}.{tgt}"


def _read_lines(path: Path) -> list[str]:
    """Lines split on "\\n" only (``str.splitlines`` would also split on U+2028 and friends and misalign); text
    that is not UTF-8 is a DataNotFoundError naming the file and line."""
    text = read_utf8(path, f"Fix: re-encode {path.name} as UTF-8 (e.g. iconv -t UTF-8)")
    if text.endswith("\n"):
        text = text[:-1]
    return [line.rstrip("\r") for line in text.split("\n")] if text else []


def _count_lines(path: Path) -> int:
    return len(_read_lines(path))


def check_local_split(data_dir: str | Path, cfg: Any, split: str) -> None:
    """Raise DataNotFoundError naming the file when a split's file is missing or the pair is not line-aligned."""
    src_path, tgt_path = split_files(data_dir, cfg, split)
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise DataNotFoundError(
                f"missing {path} (wmt16 {cfg.name} {split} split). Fix: set task.data_dir to a folder with "
                f"{src_path.name} and {tgt_path.name}, set task.{split}_file=<file stem>, or task.data_dir=null "
                f"(the Hub's {HUB_DATASET})")
    n_src, n_tgt = _count_lines(src_path), _count_lines(tgt_path)
    if n_src == 0:
        raise DataNotFoundError(f"{src_path} is empty (wmt16 {cfg.name} {split} split). Fix: point task.data_dir / "
                                f"task.{split}_file at a non-empty corpus, one sentence per line")
    if n_src != n_tgt:
        raise DataNotFoundError(
            f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; source and target files must be aligned "
            f"line by line. Fix: repair or replace {tgt_path.name} / {src_path.name} (one sentence per line)")


def check_local_data(name: str, data_dir: Path, task_cfg: Any = None) -> None:
    if not Path(data_dir).is_dir():
        raise DataNotFoundError(f"WMT16 data folder {data_dir} does not exist. Fix: task.data_dir=<folder with "
                                f"line-aligned <stem>.en / <stem>.ro files> or task.data_dir=null (the Hub)")
    for split in ("train", task_cfg.eval_split):
        check_local_split(data_dir, task_cfg, split)


def load_pairs(cfg: Any, split: str, max_samples: int | None = None) -> list[Pair]:
    """The first ``max_samples`` (all when None) sentence pairs of ``split`` from ``cfg.data_dir`` or the Hub."""
    if cfg.data_dir is not None:
        check_local_split(cfg.data_dir, cfg, split)
        src_path, tgt_path = split_files(cfg.data_dir, cfg, split)
        sources, targets = _read_lines(src_path), _read_lines(tgt_path)
    else:
        sources, targets = _load_from_hub(cfg, split, max_samples)
    n = len(sources) if max_samples is None else min(max_samples, len(sources))
    return [Pair(i, sources[i], targets[i]) for i in range(n)]


def _load_from_hub(cfg: Any, split: str, max_samples: int | None) -> tuple[list[str], list[str]]:
    src, tgt, config = PAIRS[cfg.name]
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, config, split=split if max_samples is None
                                   else f"{split}[:{max_samples}]")
    except Exception as e:  # offline, no such split, ...: one clear message
        raise DataNotFoundError(
            f"could not load {HUB_DATASET} {config} split {split} from the Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Fix: task.data_dir=<folder with line-aligned "
            f"{cfg[f'{split}_file']}.{src} / .{tgt} files>") from None
    return [t[src] for t in ds["translation"]], [t[tgt] for t in ds["translation"]]


# -------------------------------------------------------------------------------------------------- metrics


class UnicodeWordTokenizer:
    """ROUGE tokenizer that keeps every Unicode letter (Romanian ș, ț, ă, â, î): lower-cased ``\\w+`` runs,
    punctuation dropped, no stemming. rouge-score's default keeps only ``[a-z0-9]``."""

    _word = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._word.findall(text.lower())


def translation_metrics(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (13a) + signature, chrF, ROUGE-L F1 x 100 (Unicode words; ``rougeL_ascii``:
    rouge-score's default tokenizer); ``score`` = BLEU."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])

    def rouge_l(tokenizer: Any) -> float:
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tokenizer)
        f = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]
        return 100.0 * sum(f) / max(len(f), 1)

    return {"score": bleu_score.score, "bleu": bleu_score.score, "chrf": chrf_score.score,
            "rougeL": rouge_l(UnicodeWordTokenizer()), "rougeL_ascii": rouge_l(None),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


# ------------------------------------------------------------------------------------------------------ task


class Wmt16Task:
    main_metric = "bleu"
    num_labels = None

    def __init__(self, cfg: Any, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.decoder_only = cfg.model_arch == "decoder"
        self.kind = "causal" if self.decoder_only else "seq2seq"
        self._train: list[dict[str, Any]] | None = None
        self._eval_pairs: list[Pair] | None = None

    # --- encoding
    def prompt(self, source: str) -> str:
        return self.cfg.decoder_prompt.format(source=source)

    def _encode(self, pairs: list[Pair], tokenizer: Any) -> list[dict[str, Any]]:
        c = self.cfg
        if self.decoder_only:
            return [encode_prompt_response(tokenizer, self.prompt(p.source), " " + p.target,
                                           max_prompt_len=c.max_seq_len, max_response_len=c.max_target_len)
                    for p in pairs]
        enc = tokenizer([c.source_prefix + p.source for p in pairs], truncation=True, max_length=c.max_seq_len)
        labels = tokenizer(text_target=[p.target for p in pairs], truncation=True,
                           max_length=c.max_target_len)["input_ids"]
        return [{"input_ids": i, "attention_mask": m, "labels": y}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)]

    def _generation_inputs(self, pairs: list[Pair], tokenizer: Any) -> list[dict[str, list[int]]]:
        """What generation starts from: the encoder input (seq2seq) or the prompt alone (decoder-only)."""
        if self.decoder_only:
            ids = [encode_prompt(tokenizer, self.prompt(p.source), max_prompt_len=self.cfg.max_seq_len)
                   for p in pairs]
            return [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]
        return [{k: r[k] for k in ("input_ids", "attention_mask")} for r in self._encode(pairs, tokenizer)]

    # --- Task protocol
    def prepare(self, tokenizer: Any) -> None:
        self.train_dataset(tokenizer)
        self.eval_pairs()

    def train_dataset(self, tokenizer: Any) -> list[dict[str, Any]]:
        if self._train is None:
            self._train = self._encode(load_pairs(self.cfg, "train", self.cfg.max_train_samples), tokenizer)
        return self._train

    def eval_pairs(self) -> list[Pair]:
        if self._eval_pairs is None:
            self._eval_pairs = load_pairs(self.cfg, self.cfg.eval_split, self.cfg.max_eval_samples)
        return self._eval_pairs

    def collate_fn(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        if self.decoder_only:
            return causal_collate(tokenizer)
        from transformers import DataCollatorForSeq2Seq

        # no model given: labels padded with -100 and the model shifts them right itself (teacher forcing)
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    @torch.no_grad()
    def generate(self, model: nn.Module, tokenizer: Any, sources: list[Pair], *, batch_size: int,
                 device: torch.device, autocast: Callable[[], Any]) -> list[str]:
        """Beam search over ``sources`` in batches of similar length (longest first); hypotheses in input order."""
        return self._generate_and_score(model, tokenizer, sources, batch_size=batch_size, device=device,
                                        autocast=autocast, with_loss=False)[0]

    def _generate_and_score(self, model: nn.Module, tokenizer: Any, pairs: list[Pair], *, batch_size: int,
                            device: torch.device, autocast: Callable[[], Any], with_loss: bool
                            ) -> tuple[list[str], float]:
        """Hypotheses (input order) and, with ``with_loss``, the teacher-forced loss (token-weighted mean, comparable
        with the training loss). Batches hold sources of similar length (longest first) to cut padding; for T5
        the encoder runs once per batch and serves both the loss and the beam search."""
        gen_rows = self._generation_inputs(pairs, tokenizer)
        loss_rows = self._encode(pairs, tokenizer) if with_loss else None
        order = sorted(range(len(gen_rows)), key=lambda i: -len(gen_rows[i]["input_ids"]))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collate = self.collate_fn(tokenizer)
        gen_kwargs = {"num_beams": self.cfg.num_beams, "max_new_tokens": self.cfg.max_new_tokens, "do_sample": False,
                      "pad_token_id": pad_id, "eos_token_id": tokenizer.eos_token_id}
        hyps: list[str] = [""] * len(gen_rows)
        loss_sum, n_tokens = 0.0, 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = pad_rows([gen_rows[i] for i in idx], pad_id=pad_id,
                                 side="left" if self.decoder_only else "right")
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    if self.decoder_only:
                        if loss_rows is not None:
                            loss_sum, n_tokens = self._add_loss(model, collate([loss_rows[i] for i in idx]),
                                                                device, loss_sum, n_tokens)
                        out = model.generate(**batch, **gen_kwargs)[:, batch["input_ids"].shape[1]:]  # drop prompt
                    else:
                        encoder_outputs = model.get_encoder()(**batch)
                        if loss_rows is not None:
                            labels = collate([loss_rows[i] for i in idx])["labels"]
                            loss_sum, n_tokens = self._add_loss(
                                model, {"encoder_outputs": encoder_outputs, "attention_mask": batch["attention_mask"],
                                        "labels": labels}, device, loss_sum, n_tokens)
                        out = model.generate(encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"],
                                             **gen_kwargs)
                for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
                    hyps[i] = text.strip()
        model.train(was_training)
        return hyps, (loss_sum / n_tokens if n_tokens else math.nan)

    @staticmethod
    def _add_loss(model: nn.Module, batch: dict[str, Any], device: torch.device, loss_sum: float,
                  n_tokens: int) -> tuple[float, int]:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n = int((batch["labels"] != -100).sum())  # a causal LM's first label is a prompt token (-100)
        return loss_sum + model(**batch).loss.float().item() * n, n_tokens + n

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, device: torch.device,
                 autocast: Callable[[], Any], predictions_path: Path | None = None) -> dict[str, Any]:
        pairs = self.eval_pairs()
        hyps, loss = self._generate_and_score(model, tokenizer, pairs, batch_size=batch_size, device=device,
                                              autocast=autocast, with_loss=True)
        metrics = translation_metrics(hyps, [p.target for p in pairs])
        metrics["eval_loss"] = loss
        metrics["eval_sentences"] = len(pairs)
        if predictions_path is not None:
            write_jsonl_atomic(predictions_path, ({"id": p.id, "source": p.source, "hypothesis": h,
                                                   "reference": p.target} for p, h in zip(pairs, hyps)))
        return metrics
