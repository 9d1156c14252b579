"""WMT16 translation task: local reader and its errors, training with every method, generation, metrics."""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from conftest import SHARED_DATA, compose_cfg
from lorafa_repro.methods import METHODS
from lorafa_repro.models import build_model, build_tokenizer
from lorafa_repro.run import run
from lorafa_repro.schema import ConfigError, validate
from lorafa_repro.tasks import build_task
from lorafa_repro.tasks.wmt16 import UnicodeWordTokenizer, load_pairs, translation_metrics

WORDS = {"one": "unu", "two": "doi", "three": "trei", "four": "patru", "house": "casă", "girl": "fată"}


def write_parallel(root: Path, n_train: int = 64, n_dev: int = 8, seed: int = 0) -> Path:
    """A tiny word-for-word "translation" corpus in the WMT16 local layout (corpus / newsdev2016 / newstest2016)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("corpus", n_train), ("newsdev2016", n_dev), ("newstest2016", n_dev)):
        sents = [rng.choices(list(WORDS), k=rng.randint(2, 4)) for _ in range(n)]
        (root / f"{stem}.en").write_text("".join(" ".join(s) + "\n" for s in sents), encoding="utf-8")
        (root / f"{stem}.ro").write_text("".join(" ".join(WORDS[w] for w in s) + "\n" for s in sents),
                                         encoding="utf-8")
    return root


def tiny_cfg(data_dir: Path, *extra: str, model: str = "tiny_t5"):
    return compose_cfg([f"model={model}", "task=wmt16/en_ro", f"task.data_dir={data_dir}", "trainer=tiny",
                        "trainer.max_steps=12", "trainer.batch_size=16", "trainer.log_every=1", "optim.lr=1e-2",
                        "optim.warmup_ratio=0", "task.max_new_tokens=12", "task.num_beams=2", *extra])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_tiny_t5_trains_with_every_method_and_scores_its_predictions(tmp_path: Path, method: str) -> None:
    data = write_parallel(tmp_path / "data")
    result = run(tiny_cfg(data, f"method={method}"), tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    final = result["metrics"]["final"]
    rows = [json.loads(line) for line in (tmp_path / "run" / final["predictions_file"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(8)) and all(isinstance(r["hypothesis"], str) for r in rows)
    assert rows[0]["reference"] == (data / "newsdev2016.ro").read_text().splitlines()[0]
    rescored = sacrebleu.corpus_bleu([r["hypothesis"] for r in rows], [[r["reference"] for r in rows]])
    assert final["bleu"] == final["score"] == rescored.score
    assert final["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_llama"])
def test_length_sorted_batched_beam_search_matches_one_by_one(tmp_path: Path, model: str) -> None:
    """Sorting, padding (right for T5, left for a causal LM) and reordering leave each hypothesis unchanged."""
    cfg = tiny_cfg(write_parallel(tmp_path, n_dev=6), f"model={model}", "task.num_beams=2", "task.max_new_tokens=8",
                   model=model)
    task = build_task(cfg.task)
    tok = build_tokenizer(cfg.model)
    torch.manual_seed(0)
    net = build_model(cfg.model, task_kind=task.kind)
    pairs = task.eval_pairs()
    kw = {"device": torch.device("cpu"), "autocast": contextlib.nullcontext}
    batched = task.generate(net, tok, pairs, batch_size=4, **kw)
    single = [task.generate(net, tok, [p], batch_size=1, **kw)[0] for p in pairs]
    assert batched == single and all(isinstance(h, str) for h in batched)
    assert len(set(len(tok(p.source)["input_ids"]) for p in pairs)) > 1  # the batches really were padded
    if model == "tiny_llama":
        assert task.kind == "causal" and not any(h.startswith("Translate") for h in batched)


def test_bleu_and_rouge_l_equal_the_libraries_on_fixed_strings() -> None:
    hyps = ["știință și țară frumoasă", "the cat sat on the mat", "a b c d"]
    refs = ["știință și țara frumoasă", "the cat is on the mat", "a c b d"]
    m = translation_metrics(hyps, refs)
    assert m["bleu"] == m["score"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert m["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    uni = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeWordTokenizer())
    ascii_ = rouge_scorer.RougeScorer(["rougeL"])
    assert m["rougeL"] == pytest.approx(100 * sum(uni.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / 3)
    assert m["rougeL_ascii"] == pytest.approx(100 * sum(ascii_.score(r, h)["rougeL"].fmeasure
                                                        for h, r in zip(hyps, refs)) / 3)
    # by hand: sentence 1 keeps 3 of 4 Unicode words (LCS 3) -> F1 0.75; 2: LCS 5 of 6 -> 5/6; 3: LCS 3 of 4
    assert m["rougeL"] == pytest.approx(100 * (0.75 + 5 / 6 + 0.75) / 3)
    # rouge-score's default tokenizer gives ["tiin", "ar"] here
    assert UnicodeWordTokenizer().tokenize("Știință, ȚARĂ!") == ["știință", "țară"]


def test_bleu_and_rouge_l_by_hand_where_their_wrong_twins_differ() -> None:
    """BLEU is not symmetric: a 4-word hypothesis that is the start of an 8-word reference has every n-gram
    precision 1 and brevity penalty exp(1 - 8/4) (the swapped call would score 34.57). ROUGE-L with Unicode words:
    "știință" vs "știința" share no word (F1 0); rouge-score's default tokenizer reads ["tiin"] vs ["tiin", "a"]
    (LCS 1: P 1, R 1/2, F1 2/3)."""
    m = translation_metrics(["a b c d"], ["a b c d e f g h"])
    assert m["bleu"] == pytest.approx(100 * math.exp(-1))
    assert m["chrf"] == sacrebleu.corpus_chrf(["a b c d"], [["a b c d e f g h"]]).score
    assert sacrebleu.corpus_chrf(["a b c d e f g h"], [["a b c d"]]).score != pytest.approx(m["chrf"])
    m = translation_metrics(["știință"], ["știința"])
    assert m["rougeL"] == 0.0
    assert m["rougeL_ascii"] == pytest.approx(100 * 2 / 3)


def test_malformed_files_give_one_clear_error_before_any_model(tmp_path: Path, monkeypatch) -> None:
    data = write_parallel(tmp_path / "data", n_dev=8)
    monkeypatch.setattr("lorafa_repro.run.build_model", lambda *a, **k: pytest.fail("a model was loaded"))
    (data / "newsdev2016.ro").write_text("unu\n" * 7, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"newsdev2016.en has 8 lines but .*newsdev2016.ro has 7.*Fix:"):
        run(tiny_cfg(data), tmp_path / "run")
    (data / "newsdev2016.ro").unlink()
    with pytest.raises(ConfigError, match=r"missing .*newsdev2016.ro .*Fix:"):
        validate(tiny_cfg(data))
    (data / "newstest2016.ro").unlink()
    with pytest.raises(ConfigError, match=r"missing .*newstest2016.ro .*Fix: .*task.test_file=<file stem>"):
        validate(tiny_cfg(data, "task.eval_split=test"))
    with pytest.raises(ConfigError, match=r"task.num_beams must be > 0.*Fix: task.num_beams=4"):
        validate(tiny_cfg(data, "task.num_beams=0"))
    assert not (tmp_path / "run").exists()


def test_local_reader_loads_newstest2016() -> None:
    folder = SHARED_DATA / "wmt16_en_ro"
    if not folder.is_dir():
        pytest.skip(f"WMT16 data not found at {folder} (set LORAFA_SHARED_DATA to the shared/data folder)")
    cfg = compose_cfg(["model=t5_small", "task=wmt16/en_ro", f"task.data_dir={folder}", "task.eval_split=test"])
    validate(cfg)
    pairs = load_pairs(cfg.task, "test")
    assert len(pairs) == 1999
    assert pairs[0].source == "UN Chief Says There Is No Military Solution in Syria"
    assert "ș" in "".join(p.target for p in pairs[:50])  # Romanian diacritics read as UTF-8
    assert len(load_pairs(cfg.task, "train", max_samples=100)) == 100
