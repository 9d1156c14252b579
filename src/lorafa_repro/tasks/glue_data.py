"""GLUE data loading (local ``glue_data/`` folders or the Hugging Face Hub) and GLUE metrics.

Two sources give the same examples with the same label ids:

* **local** (``data_dir`` set): the original GLUE distribution layout written by
  ``download_glue_data.py``, i.e. ``<data_dir>/<DIR>/train.tsv`` and ``dev.tsv``
  (``dev_matched.tsv`` / ``dev_mismatched.tsv`` for MNLI), where ``<DIR>`` is ``CoLA``,
  ``SST-2``, ``MRPC``, ``QQP``, ``STS-B``, ``MNLI``, ``QNLI`` or ``RTE``;
* **Hub** (``data_dir=None``): ``datasets.load_dataset("nyu-mll/glue", task, split=split)``.

Label ids follow the Hub's ``ClassLabel`` order for every task (see :data:`GLUE_TASKS`), so
string labels in the tsv files (MNLI, QNLI, RTE) are mapped to the same ids as on the Hub.

Local format notes (all files are read with ``csv.reader(delimiter="\\t",
quoting=csv.QUOTE_NONE)`` and ``encoding="utf-8-sig"``, which drops MRPC's UTF-8 BOM):

* CoLA train/dev have no header; 4 columns ``source, label, orig-label, sentence``.
* MRPC's ``train.tsv`` in some copies misses one pair (2750203/2750153). When
  ``msr_paraphrase_train.txt`` and ``dev_ids.tsv`` are present, the train split is rebuilt
  from them the way GLUE's script (and the Hub loader) does: every source pair that is not a
  dev pair, in file order (3,668 rows).
* Rows whose number of fields differs from the header, or whose label cannot be parsed, are
  skipped and counted (QQP has some such rows); a warning reports the count.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lorafa_repro.results import atomic_path

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlueTaskInfo:
    """Static description of one GLUE task.

    Attributes:
        name: Hub config name, e.g. ``"mrpc"``.
        dir_name: folder name in the GLUE distribution, e.g. ``"MRPC"``.
        text_keys: Hub column names of the first and (optional) second text.
        label_names: Hub ``ClassLabel`` names in id order; ``()`` for regression (STS-B).
        eval_splits: Hub split names used for evaluation.
        main_metric: key of the paper's metric in :func:`glue_metrics` (or
            :func:`mnli_metrics` for MNLI).
    """

    name: str
    dir_name: str
    text_keys: tuple[str, str | None]
    label_names: tuple[str, ...]
    eval_splits: tuple[str, ...]
    main_metric: str

    @property
    def num_labels(self) -> int:
        """Number of model outputs: 1 for regression, else the number of classes."""
        return len(self.label_names) if self.label_names else 1

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a similarity score in [0, 5])."""
        return not self.label_names


GLUE_TASKS: dict[str, GlueTaskInfo] = {
    t.name: t
    for t in (
        GlueTaskInfo("cola", "CoLA", ("sentence", None), ("unacceptable", "acceptable"),
                     ("validation",), "matthews_corr"),
        GlueTaskInfo("sst2", "SST-2", ("sentence", None), ("negative", "positive"),
                     ("validation",), "accuracy"),
        GlueTaskInfo("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                     ("validation",), "accuracy"),
        GlueTaskInfo("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
                     ("validation",), "accuracy"),
        GlueTaskInfo("stsb", "STS-B", ("sentence1", "sentence2"), (), ("validation",), "pearson"),
        GlueTaskInfo("mnli", "MNLI", ("premise", "hypothesis"),
                     ("entailment", "neutral", "contradiction"),
                     ("validation_matched", "validation_mismatched"), "accuracy"),
        GlueTaskInfo("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"),
                     ("validation",), "accuracy"),
        GlueTaskInfo("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                     ("validation",), "accuracy"),
    )
}

SPLITS: tuple[str, ...] = ("train", "validation", "validation_matched", "validation_mismatched")

_SPLIT_FILES: dict[str, str] = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


@dataclass(frozen=True)
class _LocalFormat:
    """How one task's tsv files are laid out: header or not, and which columns to read.

    Columns are header names, or positions when the file has no header (CoLA).
    """

    has_header: bool
    text_cols: tuple[str | int, str | int | None]
    label_col: str | int
    n_cols: int | None = None  # expected number of fields for header-less files


_LOCAL_FORMATS: dict[str, _LocalFormat] = {
    "cola": _LocalFormat(False, (3, None), 1, n_cols=4),
    "sst2": _LocalFormat(True, ("sentence", None), "label"),
    "mrpc": _LocalFormat(True, ("#1 String", "#2 String"), "Quality"),
    "qqp": _LocalFormat(True, ("question1", "question2"), "is_duplicate"),
    "stsb": _LocalFormat(True, ("sentence1", "sentence2"), "score"),
    "mnli": _LocalFormat(True, ("sentence1", "sentence2"), "gold_label"),
    "qnli": _LocalFormat(True, ("question", "sentence"), "label"),
    "rte": _LocalFormat(True, ("sentence1", "sentence2"), "label"),
}

_MRPC_SOURCE = "msr_paraphrase_train.txt"
_MRPC_DEV_IDS = "dev_ids.tsv"


@dataclass(frozen=True)
class GlueExample:
    """One example: text(s) and label (class id as float, or the STS-B score)."""

    text_a: str
    text_b: str | None
    label: float


class DataNotFoundError(FileNotFoundError):
    """GLUE data could not be found locally or loaded from the Hub; the message names the fix."""


def read_utf8(path: str | Path, fix: str) -> str:
    """The text of a local data file; bytes that are not UTF-8 are a DataNotFoundError naming the file, the line
    and ``fix`` (the other task families' readers share this)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataNotFoundError(f"{path}, line {line}: not UTF-8 text ({e.reason}). {fix}") from None


class MalformedDataError(ValueError):
    """A local data file exists but cannot be used (not UTF-8, missing columns, no usable rows)."""


def get_task_info(task: str) -> GlueTaskInfo:
    """Return the :class:`GlueTaskInfo` for ``task`` (``"mrpc"``; ``"MRPC"`` and ``"STS-B"`` work too).

    Raises:
        ValueError: for an unknown task name.
    """
    key = task.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def _check_split(info: GlueTaskInfo, split: str) -> None:
    """Raise ValueError unless ``split`` is ``"train"`` or one of the task's eval splits."""
    if split != "train" and split not in info.eval_splits:
        raise ValueError(f"split {split!r} is not valid for {info.name}; "
                         f"expected one of {('train', *info.eval_splits)}")


def _fix_hint(task_dir: str) -> str:
    return (f"Fix: set task.data_dir=/path/to/glue_data (a folder with {task_dir}/train.tsv, dev.tsv "
            f"in the original GLUE layout) or task.data_dir=null to download {HUB_DATASET} "
            f"from the Hub")


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------


def local_split_path(data_dir: str | Path, task: str, split: str) -> Path:
    """Path of the GLUE-layout file for ``task``/``split`` under ``data_dir`` (no file access).

    ``split`` is one of ``"train"``, ``"validation"``, ``"validation_matched"``,
    ``"validation_mismatched"`` (the last two for MNLI only). For MRPC train this is
    ``MRPC/train.tsv`` even when the loader rebuilds it from ``msr_paraphrase_train.txt``.
    """
    info = get_task_info(task)
    _check_split(info, split)
    return Path(data_dir) / info.dir_name / _SPLIT_FILES[split]


def _mrpc_sources(task_dir: Path) -> tuple[Path, Path] | None:
    """The MRPC source file and dev id list when both exist, else None."""
    src, ids = task_dir / _MRPC_SOURCE, task_dir / _MRPC_DEV_IDS
    return (src, ids) if src.is_file() and ids.is_file() else None


def check_local_glue(data_dir: str | Path, task: str, splits: Iterable[str]) -> None:
    """Check cheaply (existence only, no parsing) that ``data_dir`` holds ``task``'s ``splits``.

    Raises:
        DataNotFoundError: naming the first missing file and how to fix the config.
        ValueError: for an unknown task or split name.
    """
    info = get_task_info(task)
    if isinstance(splits, str):
        splits = (splits,)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"GLUE data folder {root} does not exist. {_fix_hint(info.dir_name)}")
    for split in splits:
        path = local_split_path(root, info.name, split)
        if path.is_file():
            continue
        if info.name == "mrpc" and split == "train" and _mrpc_sources(path.parent):
            continue
        raise DataNotFoundError(f"missing {path} for GLUE task {info.name} split {split}. "
                                f"{_fix_hint(info.dir_name)}")


def _read_tsv(path: Path) -> list[list[str]]:
    """All rows of a GLUE tsv file (BOM dropped, no quote handling)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _parse_label(info: GlueTaskInfo, raw: str) -> float | None:
    """Label as float (class id or score), or None when ``raw`` is not a valid label."""
    raw = raw.strip()
    if info.is_regression:
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    if raw in info.label_names:
        return float(info.label_names.index(raw))
    try:
        value = int(raw)
    except ValueError:
        return None
    return float(value) if 0 <= value < info.num_labels else None


def _parse_rows(
    info: GlueTaskInfo,
    rows: Sequence[list[str]],
    keep: Callable[[dict[str | int, str]], bool] | None = None,
) -> tuple[list[GlueExample], int]:
    """Turn raw tsv rows into examples; returns ``(examples, n_skipped_malformed)``.

    ``keep`` (optional) filters well-formed rows, given as a mapping from column (name or index).
    """
    fmt = _LOCAL_FORMATS[info.name]
    if fmt.has_header:
        if not rows:
            return [], 0
        header, body = rows[0], rows[1:]
        n_cols = len(header)
    else:
        header, body = [], rows
        n_cols = fmt.n_cols or 0
    examples: list[GlueExample] = []
    skipped = 0
    for row in body:
        if len(row) != n_cols:
            skipped += 1
            continue
        fields: dict[str | int, str] = dict(zip(header, row)) if fmt.has_header else dict(enumerate(row))
        if keep is not None and not keep(fields):
            continue
        label = _parse_label(info, fields[fmt.label_col])
        if label is None:
            skipped += 1
            continue
        col_a, col_b = fmt.text_cols
        examples.append(GlueExample(fields[col_a], fields[col_b] if col_b is not None else None, label))
    return examples, skipped


def read_local_split(data_dir: str | Path, task: str, split: str) -> tuple[list[GlueExample], int]:
    """Parse one local split; returns ``(examples in file order, number of skipped rows)``.

    Raises:
        DataNotFoundError: when the file is missing.
    """
    info = get_task_info(task)
    root = Path(data_dir).expanduser()
    check_local_glue(root, info.name, (split,))
    path = local_split_path(root, info.name, split)
    sources = _mrpc_sources(path.parent) if info.name == "mrpc" and split == "train" else None
    if sources is not None:  # MRPC's train split rebuilt from the original release minus the dev pairs
        src, ids_file = sources
        dev_ids = {(r[0].strip(), r[1].strip()) for r in _read_tsv(ids_file) if len(r) >= 2}
        return _checked_rows(info, src,
                             keep=lambda f: (f["#1 ID"].strip(), f["#2 ID"].strip()) not in dev_ids)
    return _checked_rows(info, path)


def _checked_rows(info: GlueTaskInfo, path: Path,
                  keep: Callable[[dict[str | int, str]], bool] | None = None) -> tuple[list[GlueExample], int]:
    """``_parse_rows`` of one file (``keep`` as there), with a MalformedDataError naming the file and the fix
    when it is not UTF-8, lacks the task's columns or holds no usable row (so no split is ever empty)."""
    fix = f"Fix: use the original GLUE file ({info.dir_name}/{path.name}, UTF-8, tab-separated)"
    try:
        rows = _read_tsv(path)
    except UnicodeDecodeError as e:
        raise MalformedDataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}). {fix}") from None
    fmt = _LOCAL_FORMATS[info.name]
    if fmt.has_header and rows:
        missing = [c for c in (fmt.label_col, *fmt.text_cols) if c is not None and c not in rows[0]]
        if missing:
            raise MalformedDataError(f"{path} lacks the column(s) {missing} (header: {rows[0][:8]}). {fix}")
    examples, skipped = _parse_rows(info, rows, keep=keep)
    if not examples:
        why = "empty" if not rows else f"{skipped} malformed" if skipped else "every row is a dev pair in dev_ids.tsv"
        raise MalformedDataError(f"{path} holds no usable row ({why}). {fix}")
    return examples, skipped


# --------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------


def _subsample_indices(n: int, max_samples: int | None, seed: int) -> list[int] | None:
    """Indices of the first ``max_samples`` items after a seeded shuffle, or None for "all"."""
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive or None, got {max_samples}")
    if max_samples is None or max_samples >= n:
        return None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:max_samples]


def _load_from_hub(info: GlueTaskInfo, split: str, max_samples: int | None,
                   seed: int) -> list[GlueExample]:
    """Load ``nyu-mll/glue`` from the Hub; any failure becomes a DataNotFoundError."""
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, info.name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing package, bad cache: same advice
        raise DataNotFoundError(
            f"could not load GLUE task {info.name} split {split} from the Hugging Face Hub "
            f"({HUB_DATASET}): {type(exc).__name__}: {exc}. Fix: without internet access, set "
            f"task.data_dir=/path/to/glue_data (a folder with {info.dir_name}/train.tsv, dev.tsv "
            f"in the original GLUE layout) to read local files instead."
        ) from exc
    indices = _subsample_indices(len(ds), max_samples, seed)
    if indices is not None:
        ds = ds.select(indices)
    key_a, key_b = info.text_keys
    texts_a = list(ds[key_a])
    texts_b = list(ds[key_b]) if key_b is not None else [None] * len(texts_a)
    labels = list(ds["label"])
    return [GlueExample(a, b, float(y)) for a, b, y in zip(texts_a, texts_b, labels)]


def load_glue_split(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> list[GlueExample]:
    """Load one GLUE split as a list of :class:`GlueExample`.

    Args:
        task: ``"cola"``, ``"sst2"``, ``"mrpc"``, ``"qqp"``, ``"stsb"``, ``"mnli"``, ``"qnli"``
            or ``"rte"``.
        split: ``"train"`` or one of the task's ``eval_splits``.
        data_dir: folder in the original GLUE layout; None loads ``nyu-mll/glue`` from the Hub.
        max_samples: if set and smaller than the split, a deterministic subsample: the first
            ``max_samples`` examples after shuffling with ``random.Random(seed)`` (so the
            subset is in shuffled order). Otherwise all examples in file/Hub order.
        seed: seed of that shuffle.

    Raises:
        DataNotFoundError: local file missing, or the Hub could not be reached.
        ValueError: unknown task or split, or ``max_samples <= 0``.
    """
    info = get_task_info(task)
    _check_split(info, split)
    if data_dir is None:
        return _load_from_hub(info, split, max_samples, seed)
    examples, skipped = read_local_split(data_dir, info.name, split)
    if skipped:
        logger.warning("GLUE %s/%s: skipped %d malformed row(s) in %s", info.name, split, skipped,
                       local_split_path(data_dir, info.name, split))
    indices = _subsample_indices(len(examples), max_samples, seed)
    return examples if indices is None else [examples[i] for i in indices]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _corr(fn: Callable[..., object], x: np.ndarray, y: np.ndarray) -> float:
    """A scipy correlation as float; 0.0 when undefined (constant input), like sklearn's MCC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(x, y)[0])  # type: ignore[index]
    return 0.0 if math.isnan(value) else value


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics for one evaluation split; ``"score"`` is always the paper's metric.

    * cola: ``matthews_corr`` (sklearn); score = MCC in [-1, 1].
    * stsb: ``pearson`` and ``spearmanr`` (scipy); score = Pearson.
    * mrpc, qqp: ``accuracy`` and ``f1`` (positive class 1); score = accuracy.
    * sst2, mnli, qnli, rte: ``accuracy``; score = accuracy. (For MNLI combine the two
      splits with :func:`mnli_metrics`.)

    Accuracy and F1 are fractions in [0, 1]. An undefined correlation (constant predictions)
    is reported as 0.0, as sklearn does for MCC.

    Args:
        predictions: class ids (or scores for stsb). Logits of shape ``(n, num_labels)`` are
            accepted too and reduced with argmax (``(n, 1)`` is flattened for stsb).
        labels: gold class ids (ints or floats) or scores.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    info = get_task_info(task)
    preds = np.asarray(predictions)
    gold = np.asarray(labels).reshape(-1)
    if info.is_regression:
        preds = preds.reshape(-1).astype(np.float64)
        gold = gold.astype(np.float64)
    else:
        if preds.ndim == 2:
            preds = preds.argmax(axis=-1)
        preds = np.rint(preds.reshape(-1)).astype(np.int64)
        gold = np.rint(gold).astype(np.int64)
    if preds.shape != gold.shape or preds.size == 0:
        raise ValueError(f"need equally many predictions and labels (>0), got {preds.shape} "
                         f"and {gold.shape}")

    if info.is_regression:
        pearson = _corr(pearsonr, preds, gold)
        return {"pearson": pearson, "spearmanr": _corr(spearmanr, preds, gold), "score": pearson}
    accuracy = float((preds == gold).mean())
    if info.name == "cola":
        mcc = float(matthews_corrcoef(gold, preds))
        return {"matthews_corr": mcc, "accuracy": accuracy, "score": mcc}
    if info.name in ("mrpc", "qqp"):
        f1 = float(f1_score(gold, preds, zero_division=0.0))
        return {"accuracy": accuracy, "f1": f1, "score": accuracy}
    return {"accuracy": accuracy, "score": accuracy}


def mnli_metrics(matched: dict[str, float], mismatched: dict[str, float]) -> dict[str, float]:
    """Combine MNLI's matched/mismatched results; ``accuracy`` and ``score`` are their mean."""
    acc_m, acc_mm = float(matched["accuracy"]), float(mismatched["accuracy"])
    mean = (acc_m + acc_mm) / 2
    return {"accuracy_matched": acc_m, "accuracy_mismatched": acc_mm, "accuracy": mean, "score": mean}


# --------------------------------------------------------------------------------------------
# Synthetic data in the on-disk GLUE format
# --------------------------------------------------------------------------------------------

#: Marker word of each class id in synthetic data: class ``c`` has ``SYNTHETIC_MARKERS[c]`` in
#: ``text_a``. For STS-B the score is the number of ``SYNTHETIC_MARKERS[1]`` words in ``text_a``.
SYNTHETIC_MARKERS: tuple[str, str, str] = ("alpha", "beta", "gamma")
_FILLER = ("the", "cat", "dog", "sat", "on", "a", "mat", "near", "big", "small", "red", "blue",
           "house", "tree", "runs", "walks", "and", "with", "old", "new")


def _synthetic_text(rng: random.Random, markers: Sequence[str] = ()) -> str:
    """A short sentence of filler words with ``markers`` inserted at random positions."""
    words = rng.choices(_FILLER, k=rng.randint(4, 8))
    for marker in markers:
        words.insert(rng.randint(0, len(words)), marker)
    return " ".join(words)


def _synthetic_examples(info: GlueTaskInfo, n: int, rng: random.Random) -> list[GlueExample]:
    """``n`` examples with balanced labels that a bag-of-words model can learn from text_a."""
    if info.is_regression:
        scores = [float(i % 6) for i in range(n)]
        rng.shuffle(scores)
        out = []
        for s in scores:
            out.append(GlueExample(_synthetic_text(rng, [SYNTHETIC_MARKERS[1]] * int(s)),
                                   _synthetic_text(rng), s))
        return out
    labels = [i % info.num_labels for i in range(n)]
    rng.shuffle(labels)
    pair = info.text_keys[1] is not None
    return [GlueExample(_synthetic_text(rng, [SYNTHETIC_MARKERS[y]]),
                        _synthetic_text(rng) if pair else None, float(y)) for y in labels]


def _synthetic_rows(info: GlueTaskInfo, examples: list[GlueExample], dev: bool) -> list[list[str]]:
    """Rows (header first where the real file has one) in the real file's column layout."""
    names, name = info.label_names, info.name

    def lab(e: GlueExample) -> int:
        return int(e.label)

    if name == "cola":
        return [[f"syn{i % 3}", str(lab(e)), "" if lab(e) else "*", e.text_a] for i, e in enumerate(examples)]
    if name == "sst2":
        return [["sentence", "label"]] + [[e.text_a + " ", str(lab(e))] for e in examples]
    if name == "mrpc":
        return [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]] + [
            [str(lab(e)), str(100000 + 2 * i), str(100001 + 2 * i), e.text_a, e.text_b or ""]
            for i, e in enumerate(examples)]
    if name == "qqp":
        return [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]] + [
            [str(i), str(2 * i + 1), str(2 * i + 2), e.text_a, e.text_b or "", str(lab(e))]
            for i, e in enumerate(examples)]
    if name == "stsb":
        return [["index", "genre", "filename", "year", "old_index", "source1", "source2",
                 "sentence1", "sentence2", "score"]] + [
            [str(i), "main-captions", "synthetic", "2012test", f"{i:04d}", "none", "none",
             e.text_a, e.text_b or "", f"{e.label:.3f}"] for i, e in enumerate(examples)]
    if name == "mnli":
        votes = ["label1", "label2", "label3", "label4", "label5"] if dev else ["label1"]
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                  "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                  "sentence2", *votes, "gold_label"]
        return [header] + [
            [str(i), str(i), f"{i}e", "fiction", f"( {e.text_a} )", f"( {e.text_b} )",
             f"(ROOT {e.text_a})", f"(ROOT {e.text_b})", e.text_a, e.text_b or "",
             *([names[lab(e)]] * len(votes)), names[lab(e)]] for i, e in enumerate(examples)]
    # qnli, rte: index, text columns, string label
    header = ["index", "question", "sentence", "label"] if name == "qnli" else \
        ["index", "sentence1", "sentence2", "label"]
    return [header] + [[str(i), e.text_a, e.text_b or "", names[lab(e)]] for i, e in enumerate(examples)]


def write_synthetic_glue(
    root: str | Path,
    tasks: Iterable[str] = ("mrpc", "stsb", "sst2", "cola"),
    n_train: int = 64,
    n_dev: int = 32,
    seed: int = 0,
) -> Path:
    """Write tiny, learnable GLUE tasks under ``root`` in the real on-disk format; return ``root``.

    Each task gets ``<root>/<DIR>/train.tsv`` (``n_train`` rows) and ``dev.tsv`` (``n_dev``
    rows), or ``dev_matched.tsv`` and ``dev_mismatched.tsv`` for MNLI, with the real file's
    header (none for CoLA), columns, label spelling and MRPC's UTF-8 BOM. Labels are balanced
    and learnable: class ``c`` puts the word ``SYNTHETIC_MARKERS[c]`` into ``text_a``; the STS-B
    score (0..5) is the number of ``SYNTHETIC_MARKERS[1]`` words in ``text_a``. Deterministic in
    ``seed``.
    """
    if n_train < 1 or n_dev < 1:
        raise ValueError(f"n_train and n_dev must be >= 1, got {n_train}, {n_dev}")
    root = Path(root)
    for task in tasks:
        info = get_task_info(task)
        task_dir = root / info.dir_name
        task_dir.mkdir(parents=True, exist_ok=True)
        for split in ("train", *info.eval_splits):
            rng = random.Random(f"{seed}-{info.name}-{split}")
            examples = _synthetic_examples(info, n_train if split == "train" else n_dev, rng)
            rows = _synthetic_rows(info, examples, dev=split != "train")
            text = "".join("\t".join(r) + "\n" for r in rows)
            encoding = "utf-8-sig" if info.name == "mrpc" else "utf-8"
            # whole files only (temp + rename): a run reading this folder while it is rewritten (make smoke
            # beside a test run) never sees a truncated split
            with atomic_path(task_dir / _SPLIT_FILES[split]) as tmp:
                tmp.write_text(text, encoding=encoding, newline="")
    return root


__all__ = [
    "DataNotFoundError",
    "GLUE_TASKS",
    "GlueExample",
    "GlueTaskInfo",
    "HUB_DATASET",
    "SPLITS",
    "SYNTHETIC_MARKERS",
    "check_local_glue",
    "get_task_info",
    "glue_metrics",
    "load_glue_split",
    "local_split_path",
    "mnli_metrics",
    "read_local_split",
    "write_synthetic_glue",
]
