"""Sweeps that survive (issue 11): checkpoint/resume, failure records, result reuse only for the same run,
unreadable results, the collect CLI, the multirun failure summary and bad input before expensive work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from lorafa_repro import checkpoint as ckpt
from lorafa_repro.results import is_done, load_results, read_result
from lorafa_repro.run import run
from lorafa_repro.schema import ConfigError
from lorafa_repro.trainer import Diverged, Interrupted

TINY = ["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=24", "optim.lr=1e-2",
        "trainer.max_steps=8", "trainer.log_every=1", "trainer.eval_every=4", "method.rank=4", "trainer.batch_size=4"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in _rows(run_dir) if "loss" in r]


# ---- checkpoint / resume ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora_fa", "ft"])
def test_sigterm_then_restart_reaches_the_uninterrupted_result(method: str, synthetic_glue: Path,
                                                              tmp_path: Path) -> None:
    """SIGTERM at step 5 -> status interrupted + checkpoint; the same command again resumes from step 5 and
    ends bit-identical to a run that was never stopped (losses, final and best metrics), LoRA-FA's dropout
    masks included (they come from the saved torch RNG state)."""
    common = TINY + [f"method={method}", "method.dropout=0.1", f"task.data_dir={synthetic_glue}",
                     "trainer.checkpoint_every=3", "trainer.keep_checkpoints=2"]
    straight = run(compose_cfg(common), tmp_path / "straight")
    cfg = compose_cfg(common + ["trainer.fault=sigterm@5"])
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "cut")
    cut = read_result(tmp_path / "cut" / "result.json")
    assert cut["status"] == "interrupted" and "SIGTERM after step 5" in cut["error"]
    assert cut["checkpoint"].endswith("step_00000005.pt") and not is_done(tmp_path / "cut")
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["status"] == "success" and resumed["timing"]["resumed_from_step"] == 5
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "straight")  # bitwise
    assert [r["step"] for r in _rows(tmp_path / "cut")] == [r["step"] for r in _rows(tmp_path / "straight")]
    assert resumed["metrics"]["final"] == straight["metrics"]["final"]
    assert resumed["metrics"]["best"] == straight["metrics"]["best"]
    # the last K=2 checkpoints are kept: steps 6 and 8 (the end)
    assert [p.name for p in ckpt.checkpoint_paths(tmp_path / "cut")] == ["step_00000006.pt", "step_00000008.pt"]


def test_checkpoint_holds_trainable_weights_rng_and_data_position(synthetic_glue: Path, tmp_path: Path) -> None:
    run(compose_cfg(TINY + ["method=lora_fa", f"task.data_dir={synthetic_glue}", "trainer.checkpoint_every=4"]),
        tmp_path)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 8 and set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["model"] and all("lora_B" in n or "classifier" in n for n in state["model"])  # no frozen base
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 8
    assert state["config"]["trainer"]["max_steps"] == 8 and state["config"]["code"]


def test_batch_order_is_the_dataloader_order_and_resumes_anywhere() -> None:
    from torch.utils.data import DataLoader

    from lorafa_repro.trainer import batch_order

    n, bs = 10, 3
    loader = DataLoader(list(range(n)), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(7))
    want = [b.tolist() for _ in range(3) for b in loader]  # 3 epochs, partial last batches included
    order = batch_order(n, bs, 7)
    assert [next(order) for _ in range(len(want))] == want
    late = batch_order(n, bs, 7, start=5)
    assert [next(late) for _ in range(4)] == want[5:9]
    # 2 ranks: each global batch of 2 * 3 is split, and together the ranks see the 1-process batches of 6
    ranks = [batch_order(12, 3, 7, rank=r, world=2) for r in (0, 1)]
    single = batch_order(12, 6, 7)
    for _ in range(4):
        assert next(ranks[0]) + next(ranks[1]) == next(single)


# ---- failure records --------------------------------------------------------------------------------

def test_nan_loss_stops_at_once_as_diverged(synthetic_glue: Path, tmp_path: Path) -> None:
    with pytest.raises(Diverged):
        run(compose_cfg(TINY + ["method=lora", f"task.data_dir={synthetic_glue}", "trainer.fault=nan@3"]), tmp_path)
    data = read_result(tmp_path / "result.json")
    assert data["status"] == "diverged" and data["metrics"]["diverged_step"] == 3
    assert "at step 3" in data["error"] and "\n" not in data["error"]
    assert max(r["step"] for r in _rows(tmp_path)) == 2  # no step after the NaN was taken


def test_oom_records_oom_with_the_fix(synthetic_glue: Path, tmp_path: Path) -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run(compose_cfg(TINY + ["method=lora", f"task.data_dir={synthetic_glue}", "trainer.fault=oom@2"]), tmp_path)
    data = read_result(tmp_path / "result.json")
    assert data["status"] == "oom" and "Fix: lower trainer.batch_size" in data["error"]


def test_a_running_result_is_written_first_and_is_not_done(synthetic_glue: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """A run killed with SIGKILL leaves the result.json written at its start: status running, not done."""
    import lorafa_repro.run as run_mod

    seen = {}

    def peek(*a, **k):
        seen["status"] = json.loads((tmp_path / "result.json").read_text())["status"]
        seen["done"] = is_done(tmp_path)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "train_loop", peek)
    with pytest.raises(KeyboardInterrupt):
        run_mod.run(compose_cfg(TINY + ["method=lora", f"task.data_dir={synthetic_glue}"]), tmp_path)
    assert seen == {"status": "running", "done": False}
    assert read_result(tmp_path / "result.json")["status"] == "interrupted"


# ---- reuse only the same run -------------------------------------------------------------------------

def test_skip_if_done_reruns_when_config_or_code_changed(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    import lorafa_repro.run as run_mod

    base = TINY + ["method=lora", f"task.data_dir={synthetic_glue}", "trainer.max_steps=2", "skip_if_done=true"]
    first = run_mod.run(compose_cfg(base), tmp_path)
    # the same run: reused (progress bar and data_dir do not count)
    monkeypatch.setattr(run_mod, "train_loop", lambda *a, **k: pytest.fail("ran again"))
    assert run_mod.run(compose_cfg(base + ["trainer.progress=true"]), tmp_path)["created_at"] == first["created_at"]
    monkeypatch.undo()
    # another max_steps in the same folder: by default stop, naming the key and the override, writing nothing ...
    before = (tmp_path / "result.json").read_bytes()
    with pytest.raises(ConfigError, match=r"finished run \(success\) of another config: trainer.max_steps: 2 -> 3\. "
                                          r"Fix: on_config_change=rerun"):
        run_mod.run(compose_cfg(base + ["trainer.max_steps=3"]), tmp_path)
    assert (tmp_path / "result.json").read_bytes() == before
    # ... or rerun, keeping the old run under replaced/<UTC time>/
    assert (tmp_path / "predictions" / "step_000002.jsonl").exists()
    again = run_mod.run(compose_cfg(base + ["trainer.max_steps=3", "on_config_change=rerun"]), tmp_path)
    assert again["timing"]["steps"] == 3
    [kept] = (tmp_path / "replaced").iterdir()
    assert read_result(kept / "result.json")["created_at"] == first["created_at"]
    assert sorted(p.name for p in (kept / "predictions").iterdir()) == ["step_000002.jsonl"]
    # the replaced run's evaluations went with it
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["step_000003.jsonl"]
    # other code (e.g. an edited method): another config, rerun when asked
    monkeypatch.setattr(run_mod, "code_fingerprint", lambda: "edited")
    with pytest.raises(ConfigError, match=r"code: '\w+' -> 'edited'"):
        run_mod.run(compose_cfg(base + ["trainer.max_steps=3"]), tmp_path)
    calls = []
    real = run_mod.train_loop
    monkeypatch.setattr(run_mod, "train_loop", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    rerun = compose_cfg(base + ["trainer.max_steps=3", "on_config_change=rerun"])
    assert run_mod.run(rerun, tmp_path)["config"]["code"] == "edited"
    assert calls == [1] and len(list((tmp_path / "replaced").iterdir())) == 2


def test_truncated_result_is_not_done_and_analysis_lists_it(synthetic_glue: Path, tmp_path: Path, capsys) -> None:
    good, bad, wrong = tmp_path / "good", tmp_path / "bad", tmp_path / "wrong"
    run(compose_cfg(TINY + ["method=lora", f"task.data_dir={synthetic_glue}", "trainer.max_steps=2"]), good)
    text = (good / "result.json").read_text()
    bad.mkdir()
    (bad / "result.json").write_text(text[: len(text) // 2])  # cut mid-write by a crash of old code
    wrong.mkdir()
    (wrong / "result.json").write_text(json.dumps({"status": "success"}))
    assert is_done(good) and not is_done(bad) and not is_done(wrong)
    df = load_results(tmp_path, status="success")
    assert list(df["path"]) == [str(good)]
    assert [Path(p).parent.name for p, _ in df.attrs["skipped"]] == ["bad", "wrong"]
    err = capsys.readouterr().err
    assert "skipped 2 unreadable" in err and "not valid JSON" in err and "misses keys" in err
    from lorafa_repro.collect import main as collect

    assert collect([str(tmp_path), "--out", str(tmp_path / "runs.csv")]) == 0
    import pandas as pd

    csv = pd.read_csv(tmp_path / "runs.csv")
    assert len(csv) == 1 and csv.loc[0, "status"] == "success"
    assert {"config.optim.lr", "metrics.final.score", "memory.peak_rss_bytes", "timing.train_s", "error"} <= set(csv)


def test_collect_keeps_every_status_by_default(tmp_path: Path) -> None:
    """A sweep's CSV lists failed and OOM runs with their one-line reason unless --status filters them."""
    import pandas as pd

    from lorafa_repro.collect import main as collect
    from lorafa_repro.results import new_result, write_json_atomic

    ok = new_result("train", {"method": {"name": "lora"}}) | {
        "status": "success", "metrics": {"final": {"score": 0.5}, "best": {"score": 0.5}},
        "params": {"trainable": 1, "total": 2}, "memory": {"backend": "cpu"}}
    failed = new_result("train", {"method": {"name": "lora_fa"}}) | {"error": "RuntimeError: boom"}
    oom = new_result("train", {"method": {"name": "ft"}}) | {"status": "oom", "error": "CUDA out of memory"}
    for name, result in (("ok", ok), ("failed", failed), ("oom", oom)):
        write_json_atomic(tmp_path / "runs" / name / "result.json", result)
    assert collect([str(tmp_path / "runs"), "--out", str(tmp_path / "all.csv")]) == 0
    csv = pd.read_csv(tmp_path / "all.csv").set_index("status")
    assert sorted(csv.index) == ["failed", "oom", "success"]
    assert csv.loc["failed", "error"] == "RuntimeError: boom" and csv.loc["oom", "config.method.name"] == "ft"
    assert collect([str(tmp_path / "runs"), "--out", str(tmp_path / "ok.csv"), "--status", "success"]) == 0
    assert list(pd.read_csv(tmp_path / "ok.csv")["status"]) == ["success"]


# ---- multirun: failed cells do not stop the sweep; a summary at the end ------------------------------

def test_multirun_goes_on_after_a_failed_cell_and_ends_with_a_summary(synthetic_glue: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "-m", "model=tiny_roberta", "trainer=tiny",
         f"task.data_dir={synthetic_glue}", "trainer.max_steps=2", "method=lora", "method.rank=4",
         "trainer.fault=error@1,null,nan@2", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    statuses = {p.parent.name.split("trainer.fault=")[1].split(",")[0]: read_result(p)["status"]
                for p in tmp_path.rglob("result.json")}  # cells are named by their overrides
    assert statuses == {"error@1": "failed", "null": "success", "nan@2": "diverged"}, statuses
    assert "2 of 3 cells did not succeed" in proc.stderr
    assert "failed      " in proc.stderr and "RuntimeError: injected fault at step 1" in proc.stderr
    assert "diverged    " in proc.stderr


def test_the_summary_leaves_out_cells_another_live_process_is_running(tmp_path: Path, capsys) -> None:
    """`make study-*` runs two multiruns into one sweep folder: the first to end must not call the other's cell
    in flight a failure (it did: make exited 2 after every cell of study 4 had succeeded); a cell left
    `running` by a killed run (its lock released by the kernel) still is one."""
    from omegaconf import OmegaConf

    from lorafa_repro.results import new_result, write_json_atomic
    from lorafa_repro.rundir import locked
    from lorafa_repro.sweep import FailureSummary

    cells = {name: tmp_path / name for name in ("done", "in_flight", "starting")}
    for name, cell in cells.items():
        (cell / ".hydra").mkdir(parents=True)
        if name != "starting":  # a run that holds its lock but has not written result.json yet: "missing"
            finished = {"status": "success", "metrics": {"final": {"score": 0.5}, "best": {"score": 0.5}},
                        "params": {"trainable": 1, "total": 2}, "memory": {"backend": "cpu"}}
            state = finished if name == "done" else {"status": "running"}
            write_json_atomic(cell / "result.json", new_result("train", {}) | state)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with locked(cells["in_flight"]), locked(cells["starting"]):  # held as another process's run holds it
        FailureSummary().on_multirun_end(config)
    err = capsys.readouterr().err
    assert "2 cell(s) under" in err and "running in another process" in err and "all 1 cells succeeded" in err, err
    with pytest.raises(SystemExit) as exit_info:  # the holder is gone: a killed run, and a folder with no result
        FailureSummary().on_multirun_end(config)
    assert exit_info.value.code == 1
    assert "2 of 3 cells did not succeed" in capsys.readouterr().err


# ---- bad input: one message, before expensive work ---------------------------------------------------

def test_unknown_target_module_fails_before_data_is_loaded(tmp_path: Path, monkeypatch) -> None:
    import lorafa_repro.run as run_mod

    monkeypatch.setattr(run_mod, "build_task", lambda *a, **k: pytest.fail("data loaded before the check"))
    cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "method=lora_fa", "method.target_modules=[zzz]"])
    with pytest.raises(ConfigError, match=r"\['zzz'\] match no linear layer.*Fix: method.target_modules"):
        run_mod.run(cfg, tmp_path)
    assert not (tmp_path / "result.json").exists()


SLOW = pytest.mark.slow  # each of these imports torch + transformers in a subprocess (~20 s on a busy machine)


@pytest.mark.parametrize("args,needle", [
    (["model=zzz"], "model/zzz"),  # unknown option: Hydra's one message
    pytest.param(["trainer.max_steps=abc"], "trainer.max_steps", marks=SLOW),  # wrong type: the schema
    pytest.param(["method.target_modules=[zzz]"], "match no linear layer", marks=SLOW),
    pytest.param(["+trainer.nope=1"], "trainer.nope", marks=SLOW),
    pytest.param(["trainer.fault=boom@1"], "Fix: trainer.fault=", marks=SLOW),
    pytest.param(["trainer.device=cuda"] if not torch.cuda.is_available() else ["trainer.device=zzz"],
                 "Fix: trainer.device=", marks=SLOW),
])
def test_cli_bad_input_is_one_message_without_traceback(args: list[str], needle: str, synthetic_glue: Path,
                                                        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lorafa_repro.train", "model=tiny_roberta", "trainer=tiny",
                           f"task.data_dir={synthetic_glue}", f"hydra.run.dir={tmp_path}", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("case,needle", [("empty", "holds no usable row (empty)"),
                                         ("columns", "lacks the column(s) ['label', 'sentence']"),
                                         ("encoding", "is not UTF-8 text")])
def test_malformed_local_data_is_one_config_error_before_the_model(case: str, needle: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    import lorafa_repro.run as run_mod
    from lorafa_repro.tasks.glue_data import write_synthetic_glue

    glue = write_synthetic_glue(tmp_path / "glue", tasks=["sst2"], n_train=16, n_dev=8)
    train = glue / "SST-2" / "train.tsv"
    train.write_bytes({"empty": b"", "columns": b"foo\tbar\nx\ty\n",
                       "encoding": b"sentence\tlabel\ncaf\xe9 \xff\t1\n"}[case])
    monkeypatch.setattr(run_mod, "build_model", lambda *a, **k: pytest.fail("model built before the data check"))
    with pytest.raises(ConfigError) as err:
        run_mod.run(compose_cfg(["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", f"task.data_dir={glue}"]),
                    tmp_path / "run")
    assert needle in str(err.value) and str(train) in str(err.value) and "Fix: " in str(err.value)
    assert not (tmp_path / "run" / "result.json").exists()
