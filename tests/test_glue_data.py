"""Tests for GLUE data loading and metrics (src/lorafa_repro/tasks/glue_data.py)."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lorafa_repro.tasks import glue_data as gd
from lorafa_repro.tasks.glue_data import (
    GLUE_TASKS,
    SYNTHETIC_MARKERS,
    DataNotFoundError,
    GlueExample,
    check_local_glue,
    glue_metrics,
    load_glue_split,
    local_split_path,
    mnli_metrics,
    read_local_split,
    write_synthetic_glue,
)

N_TRAIN, N_DEV = 30, 12


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data for all eight tasks in the real on-disk layout."""
    return write_synthetic_glue(tmp_path_factory.mktemp("glue"), tasks=list(GLUE_TASKS),
                                n_train=N_TRAIN, n_dev=N_DEV, seed=0)


# ------------------------------------------------------------------------------ task registry


def test_registry_matches_hub_label_order() -> None:
    expected = {
        "cola": ("unacceptable", "acceptable"),
        "sst2": ("negative", "positive"),
        "mrpc": ("not_equivalent", "equivalent"),
        "qqp": ("not_duplicate", "duplicate"),
        "stsb": (),
        "mnli": ("entailment", "neutral", "contradiction"),
        "qnli": ("entailment", "not_entailment"),
        "rte": ("entailment", "not_entailment"),
    }
    assert {k: v.label_names for k, v in GLUE_TASKS.items()} == expected
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].num_labels == 3 and not GLUE_TASKS["mnli"].is_regression
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["cola"].main_metric == "matthews_corr"
    assert GLUE_TASKS["stsb"].main_metric == "pearson"
    assert gd.get_task_info("STS-B") is GLUE_TASKS["stsb"]
    with pytest.raises(ValueError, match="unknown GLUE task"):
        gd.get_task_info("wnli")


def test_local_split_path() -> None:
    assert local_split_path("/d", "mrpc", "validation") == Path("/d/MRPC/dev.tsv")
    assert local_split_path("/d", "mnli", "validation_mismatched") == Path("/d/MNLI/dev_mismatched.tsv")
    with pytest.raises(ValueError, match="not valid for mnli"):
        local_split_path("/d", "mnli", "validation")
    with pytest.raises(ValueError):
        local_split_path("/d", "rte", "validation_matched")


# ------------------------------------------------------------------------------ synthetic round trip


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_synthetic_round_trip(synth: Path, task: str) -> None:
    info = GLUE_TASKS[task]
    check_local_glue(synth, task, ("train", *info.eval_splits))
    for split in ("train", *info.eval_splits):
        examples, skipped = read_local_split(synth, task, split)
        assert skipped == 0
        assert len(examples) == (N_TRAIN if split == "train" else N_DEV)
        assert examples == load_glue_split(task, split, data_dir=synth)
        for e in examples:
            assert isinstance(e, GlueExample) and isinstance(e.text_a, str)
            assert isinstance(e.label, float)
            assert (e.text_b is None) == (info.text_keys[1] is None)
            words = e.text_a.split()
            if info.is_regression:  # score = number of marker words
                assert e.label == words.count(SYNTHETIC_MARKERS[1])
            else:  # class c carries marker c
                assert e.label in range(info.num_labels)
                assert SYNTHETIC_MARKERS[int(e.label)] in words
        if not info.is_regression:  # balanced classes
            counts = Counter(e.label for e in examples)
            assert len(counts) == info.num_labels and max(counts.values()) - min(counts.values()) <= 1


def test_synthetic_files_use_real_format(synth: Path) -> None:
    mrpc = (synth / "MRPC" / "train.tsv").read_bytes()
    assert mrpc.startswith(b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    cola_first = (synth / "CoLA" / "train.tsv").read_text().splitlines()[0].split("\t")
    assert len(cola_first) == 4 and cola_first[1] in ("0", "1")  # no header
    mnli_dev_header = (synth / "MNLI" / "dev_matched.tsv").read_text().splitlines()[0].split("\t")
    assert mnli_dev_header[-1] == "gold_label" and "label5" in mnli_dev_header
    rte_labels = {line.split("\t")[-1] for line in (synth / "RTE" / "dev.tsv").read_text().splitlines()[1:]}
    assert rte_labels == {"entailment", "not_entailment"}
    stsb_header = (synth / "STS-B" / "train.tsv").read_text().splitlines()[0].split("\t")
    assert len(stsb_header) == 10 and stsb_header[-1] == "score"


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_glue(tmp_path / "a", tasks=["mnli", "sst2"], seed=3)
    b = write_synthetic_glue(tmp_path / "b", tasks=["mnli", "sst2"], seed=3)
    c = write_synthetic_glue(tmp_path / "c", tasks=["sst2"], seed=4)
    for rel in ("MNLI/train.tsv", "MNLI/dev_mismatched.tsv", "SST-2/dev.tsv"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "SST-2/train.tsv").read_bytes() != (c / "SST-2/train.tsv").read_bytes()
    assert len(load_glue_split("sst2", "train", data_dir=a)) == 64  # default n_train


def test_a_reader_never_sees_a_half_written_synthetic_split(tmp_path: Path) -> None:
    """`make smoke` rewrites runs/synthetic_glue while a run may read it (issue #17's "empty training set" hunt):
    each file is written whole (temp + rename), so every load beside a rewriting thread sees all rows. Written
    in place (open, truncate, write), 299 of 300 loads here saw an empty or partial file."""
    import threading

    write_synthetic_glue(tmp_path, tasks=["sst2"], n_train=96, n_dev=8)
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            write_synthetic_glue(tmp_path, tasks=["sst2"], n_train=96, n_dev=8)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        sizes = [len(load_glue_split("sst2", "train", data_dir=tmp_path)) for _ in range(150)]
    finally:
        stop.set()
        writer.join()
    assert sizes == [96] * 150


def test_max_samples_is_seeded_subsample(synth: Path) -> None:
    full = load_glue_split("rte", "train", data_dir=synth)
    sub = load_glue_split("rte", "train", data_dir=synth, max_samples=10, seed=1)
    assert len(sub) == 10 and all(e in full for e in sub)
    assert sub == load_glue_split("rte", "train", data_dir=synth, max_samples=10, seed=1)
    assert sub != load_glue_split("rte", "train", data_dir=synth, max_samples=10, seed=2)
    assert load_glue_split("rte", "train", data_dir=synth, max_samples=10_000) == full
    with pytest.raises(ValueError, match="max_samples"):
        load_glue_split("rte", "train", data_dir=synth, max_samples=0)


# ------------------------------------------------------------------------------ local parsing details


def _write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig" if bom else "utf-8")


def test_mrpc_train_rebuilt_from_source(tmp_path: Path) -> None:
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    src = [header, "1\t1\t2\ta one\tb one", "0\t3\t4\ta two\tb two", "1\t5\t6\ta three\tb three",
           "0\t7\t8\ta four\tb four"]
    _write(tmp_path / "MRPC" / "msr_paraphrase_train.txt", src, bom=True)
    _write(tmp_path / "MRPC" / "dev_ids.tsv", ["3\t4"])
    _write(tmp_path / "MRPC" / "dev.tsv", [header, src[2]], bom=True)
    check_local_glue(tmp_path, "mrpc", ("train", "validation"))  # no train.tsv needed
    # a train.tsv that misses a row (as in the real copy) is ignored when the sources exist
    _write(tmp_path / "MRPC" / "train.tsv", [header, src[1], src[3]], bom=True)
    train = load_glue_split("mrpc", "train", data_dir=tmp_path)
    assert [(e.text_a, e.label) for e in train] == [("a one", 1.0), ("a three", 1.0), ("a four", 0.0)]
    assert [e.text_b for e in load_glue_split("mrpc", "validation", data_dir=tmp_path)] == ["b two"]
    (tmp_path / "MRPC" / "dev_ids.tsv").unlink()  # without the sources: train.tsv as is
    assert len(load_glue_split("mrpc", "train", data_dir=tmp_path)) == 2


def test_mrpc_train_rebuilt_from_source_is_never_empty(tmp_path: Path) -> None:
    """The rebuilt split gets the same checks as a train.tsv: columns present and at least one row left."""
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    _write(tmp_path / "MRPC" / "msr_paraphrase_train.txt", [header, "0\t3\t4\ta two\tb two"], bom=True)
    _write(tmp_path / "MRPC" / "dev_ids.tsv", ["3\t4"])
    _write(tmp_path / "MRPC" / "dev.tsv", [header, "0\t3\t4\ta two\tb two"], bom=True)
    with pytest.raises(gd.MalformedDataError, match="msr_paraphrase_train.txt holds no usable row .every row is a dev"):
        load_glue_split("mrpc", "train", data_dir=tmp_path)
    _write(tmp_path / "MRPC" / "msr_paraphrase_train.txt", ["Quality\tA\tB", "1\tx\ty"], bom=True)
    with pytest.raises(gd.MalformedDataError, match="msr_paraphrase_train.txt lacks the column"):
        load_glue_split("mrpc", "train", data_dir=tmp_path)


def test_malformed_rows_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "QQP" / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "0\t1\t2\tHow?\tWhy?\t0",
        "1\t3\t4\tshort row",             # too few fields
        "2\t5\t6\tWhat?\tWhat is it?\tx",  # bad label
        "3\t7\t8\tWho?\tWho is it?\t1",
    ])
    examples, skipped = read_local_split(tmp_path, "qqp", "train")
    assert skipped == 2
    assert examples == [GlueExample("How?", "Why?", 0.0), GlueExample("Who?", "Who is it?", 1.0)]
    with caplog.at_level(logging.WARNING, logger=gd.__name__):
        assert len(load_glue_split("qqp", "train", data_dir=tmp_path)) == 2
    assert "skipped 2 malformed" in caplog.text


def test_string_labels_map_to_hub_ids(tmp_path: Path) -> None:
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    rows = [f"{i}\t0\t0e\tfiction\t-\t-\t-\t-\tp{i}\th{i}\t{lab}\t{lab}"
            for i, lab in enumerate(["neutral", "contradiction", "entailment"])]
    _write(tmp_path / "MNLI" / "train.tsv", [header, *rows])
    assert [e.label for e in load_glue_split("mnli", "train", data_dir=tmp_path)] == [1.0, 2.0, 0.0]
    _write(tmp_path / "QNLI" / "dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tq\ts\tnot_entailment",
                                            "1\tq\ts\tentailment"])
    assert [e.label for e in load_glue_split("qnli", "validation", data_dir=tmp_path)] == [1.0, 0.0]


def test_missing_local_data_names_path_and_fix(tmp_path: Path, synth: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        check_local_glue(tmp_path / "nope", "rte", ("train",))
    assert str(tmp_path / "nope") in str(err.value) and "task.data_dir" in str(err.value)
    with pytest.raises(DataNotFoundError) as err:
        load_glue_split("cola", "validation", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "CoLA" / "dev.tsv") in msg
    assert "task.data_dir=/path/to/glue_data" in msg and "task.data_dir=null" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ValueError):
        check_local_glue(synth, "mnli", ("validation",))


# ------------------------------------------------------------------------------ Hub path


def test_hub_failure_becomes_data_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_glue_split("mrpc", "train")
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "mrpc" in msg and "ConnectionError" in msg
    assert "task.data_dir=/path/to/glue_data" in msg and "MRPC/train.tsv" in msg
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hub_success_is_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple] = []

    def fake(path: str, name: str, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": [f"p{i}" for i in range(6)],
                                           "hypothesis": [f"h{i}" for i in range(6)],
                                           "label": [0, 1, 2, 0, 1, 2], "idx": list(range(6))})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    examples = load_glue_split("mnli", "validation_matched")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert examples[1] == GlueExample("p1", "h1", 1.0)
    sub = load_glue_split("mnli", "validation_matched", max_samples=3, seed=5)
    # same subsample rule as the local path: first N after a seeded shuffle
    assert sub == [examples[i] for i in gd._subsample_indices(6, 3, 5)]


# ------------------------------------------------------------------------------ metrics


def test_metrics_hand_computed() -> None:
    # CoLA: TP=1 TN=2 FP=0 FN=1 -> MCC = (1*2 - 0*1) / sqrt(1*2*2*3) = 2/sqrt(12)
    m = glue_metrics("cola", np.array([1, 0, 0, 0]), np.array([1.0, 1.0, 0.0, 0.0]))
    assert m["matthews_corr"] == pytest.approx(2 / math.sqrt(12)) and m["score"] == m["matthews_corr"]
    assert m["accuracy"] == pytest.approx(0.75)
    # MRPC: TP=2 FP=1 FN=1 -> F1 = 4/6, accuracy 3/5
    m = glue_metrics("mrpc", np.array([1, 0, 0, 1, 1]), np.array([1, 1, 0, 0, 1]))
    assert m == pytest.approx({"accuracy": 0.6, "f1": 4 / 6, "score": 0.6})
    # STS-B: x=[1,2,3], y=[1,3,2]: cov=1, var=2 each -> r=0.5 (ranks equal values -> rho=0.5)
    m = glue_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert m == pytest.approx({"pearson": 0.5, "spearmanr": 0.5, "score": 0.5})
    assert glue_metrics("stsb", np.array([[1.0], [2.0], [4.0]]), np.array([2.0, 4.0, 8.0]))["pearson"] == \
        pytest.approx(1.0)
    assert glue_metrics("stsb", np.ones(3), np.array([1.0, 2.0, 3.0]))["pearson"] == 0.0  # undefined
    # logits are reduced with argmax
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    m = glue_metrics("mnli", logits, np.array([1, 0, 0]))
    assert m == pytest.approx({"accuracy": 2 / 3, "score": 2 / 3})
    with pytest.raises(ValueError):
        glue_metrics("rte", np.array([1, 0]), np.array([1, 0, 1]))


def test_mnli_metrics() -> None:
    m = mnli_metrics({"accuracy": 0.8, "score": 0.8}, {"accuracy": 0.7, "score": 0.7})
    assert m == pytest.approx({"accuracy_matched": 0.8, "accuracy_mismatched": 0.7,
                               "accuracy": 0.75, "score": 0.75})


def _evaluate_glue_cache() -> Path:
    """Where `evaluate` caches the glue metric script (mirrors evaluate.config, no import)."""
    home = Path(os.environ.get("HF_HOME", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"))
    modules = Path(os.environ.get("HF_MODULES_CACHE", home / "modules")).expanduser()
    return modules / "evaluate_modules" / "metrics" / "evaluate-metric--glue"


def test_metrics_match_evaluate_glue() -> None:
    # `evaluate.load("glue", ...)` fetches the metric's code from the Hub; importing evaluate alone
    # takes ~8 s, so look for a cached copy first.
    if not _evaluate_glue_cache().is_dir():
        pytest.skip(f"evaluate's glue metric is not cached at {_evaluate_glue_cache()} and needs the "
                    "Hub to download its code (no internet here)")
    evaluate = pytest.importorskip("evaluate")
    import evaluate.config

    evaluate.config.HF_EVALUATE_OFFLINE = True
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    scores, noisy = rng.uniform(0, 5, 50), rng.uniform(0, 5, 50)
    our_key = {"matthews_correlation": "matthews_corr"}  # evaluate's name -> ours
    for task, p, y in (("cola", preds, labels), ("mrpc", preds, labels), ("stsb", noisy, scores)):
        try:
            metric = evaluate.load("glue", task)
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"evaluate cannot load its glue metric offline: {type(exc).__name__}: {exc}")
        ref = metric.compute(predictions=p, references=y)
        ours = glue_metrics(task, p, y)
        for k, v in ref.items():
            assert ours[our_key.get(k, k)] == pytest.approx(v)


# ------------------------------------------------------------------------------ real data (optional)

REAL_COUNTS = [
    ("mrpc", "train", 3668, {1.0: 2474, 0.0: 1194}),
    ("mrpc", "validation", 408, {1.0: 279, 0.0: 129}),
    ("stsb", "train", 5749, None),
    ("stsb", "validation", 1500, None),
    ("cola", "train", 8551, {1.0: 6023, 0.0: 2528}),
    ("cola", "validation", 1043, {1.0: 721, 0.0: 322}),
    ("rte", "train", 2490, {0.0: 1249, 1.0: 1241}),
    ("rte", "validation", 277, {0.0: 146, 1.0: 131}),
    ("sst2", "validation", 872, {1.0: 444, 0.0: 428}),
    ("qnli", "validation", 5463, {0.0: 2702, 1.0: 2761}),
]


@pytest.mark.shared_data
@pytest.mark.parametrize(("task", "split", "n", "counts"), REAL_COUNTS, ids=lambda v: str(v)[:12])
def test_real_glue_counts(shared_data: Path, task: str, split: str, n: int, counts: dict | None) -> None:
    examples, skipped = read_local_split(shared_data / "glue", task, split)
    assert skipped == 0 and len(examples) == n
    assert all(e.text_a and (e.text_b is None) == (GLUE_TASKS[task].text_keys[1] is None) for e in examples)
    if counts is not None:
        assert dict(Counter(e.label for e in examples)) == counts
        # sanity: no class is rarer than 25 % of the split
        assert min(counts.values()) / n > 0.25
    else:
        scores = np.array([e.label for e in examples])
        assert scores.min() == 0.0 and scores.max() == 5.0 and 2.0 < scores.mean() < 3.5


@pytest.mark.shared_data
def test_real_mrpc_rebuild_restores_missing_pair(shared_data: Path, tmp_path: Path) -> None:
    train = load_glue_split("mrpc", "train", data_dir=shared_data / "glue")
    assert train[0].text_a.startswith("Amrozi accused his brother")
    assert any(e.text_a.startswith("Officials at Brandeis said") for e in train)
    # without the source files the shipped train.tsv is read as is: one pair short
    (tmp_path / "MRPC").mkdir()
    shutil.copy(shared_data / "glue" / "MRPC" / "train.tsv", tmp_path / "MRPC" / "train.tsv")
    assert len(load_glue_split("mrpc", "train", data_dir=tmp_path)) == 3667


def test_stsb_pearson_and_spearman_on_data_where_they_differ() -> None:
    # y = x^3 is monotone (Spearman 1) but not linear (Pearson < 1): a swapped pair of scipy calls fails here
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    m = glue_metrics("stsb", x, x**3)
    assert m["spearmanr"] == pytest.approx(1.0)
    xc, yc = x - x.mean(), x**3 - (x**3).mean()
    assert m["pearson"] == pytest.approx(float((xc * yc).sum() / math.sqrt((xc**2).sum() * (yc**2).sum())))
    assert m["pearson"] < 0.95 and m["score"] == m["pearson"]


def test_label_equal_to_the_number_of_classes_is_skipped(tmp_path: Path) -> None:
    """SST-2 has 2 classes: label 2 is out of range (a `<` -> `<=` slip would keep it as a third class)."""
    (tmp_path / "SST-2").mkdir()
    rows = ["sentence\tlabel", "good film\t1", "bad film\t0", "odd film\t2", "neg film\t-1"]
    (tmp_path / "SST-2" / "dev.tsv").write_text("\n".join(rows) + "\n")
    examples = load_glue_split("sst2", "validation", data_dir=tmp_path)
    assert [(e.text_a, e.label) for e in examples] == [("good film", 1), ("bad film", 0)]


def test_glue_task_refuses_a_tokenizer_that_drops_examples(synthetic_glue: Path) -> None:
    """Encoding keeps one row per example: a tokenizer returning fewer encodings is an error, never a shorter
    (or empty) training set."""
    from omegaconf import OmegaConf

    from lorafa_repro.models import byte_tokenizer
    from lorafa_repro.tasks.glue import GlueTask

    cfg = OmegaConf.create({"name": "sst2", "data_dir": str(synthetic_glue), "max_train_samples": 8,
                            "max_eval_samples": 4, "max_seq_len": 32})
    tokenizer = byte_tokenizer("encoder")
    assert len(GlueTask(cfg).train_dataset(tokenizer)) == 8

    def dropping(*args, **kwargs):
        enc = tokenizer(*args, **kwargs)
        return {k: v[:-1] for k, v in enc.items()}

    with pytest.raises(RuntimeError, match="the tokenizer returned 7 encodings for 8 sst2 examples"):
        GlueTask(cfg).train_dataset(dropping)
