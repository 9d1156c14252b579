"""A run's lifecycle (issue 18): one run per folder (a lock), checked checkpoints with fallback, no silent
replacement of a finished or resumable run, signals honoured during evaluation, divergence caught, and timing
that separates training, evaluation and loading."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_cfg
from lorafa_repro import checkpoint as ckpt
from lorafa_repro.results import read_result
from lorafa_repro.rundir import LOCK_FILE, RunDirError, locked
from lorafa_repro.run import run
from lorafa_repro.schema import ConfigError
from lorafa_repro.trainer import DIVERGENCE_WINDOW, Diverged, Interrupted, check_divergence

TINY = ["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=24", "optim.lr=1e-2",
        "trainer.max_steps=8", "trainer.log_every=1", "method=lora_fa", "method.rank=4", "trainer.batch_size=4"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing and memory columns."""
    return [{k: v for k, v in r.items() if k not in ("step_time_s", "tokens_per_s") and "rss" not in k}
            for r in _rows(run_dir)]


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock until killed."""
    code = ("import sys, time; from pathlib import Path; from lorafa_repro.rundir import locked\n"
            f"with locked(Path({str(run_dir)!r})):\n    print('ready', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


# ---- 1. one run per folder -----------------------------------------------------------------------------

def test_a_second_run_into_a_held_folder_refuses_and_a_killed_holder_is_taken_over(synthetic_glue: Path,
                                                                                  tmp_path: Path, caplog) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {holder.pid} on host "
                                              rf"{socket.gethostname()}, started .*\)\. Fix: wait"):
            run(compose_cfg(TINY + [f"task.data_dir={synthetic_glue}"]), tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING), locked(tmp_path):  # the kernel dropped the dead holder's lock
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "took over" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()  # released in order: no lock file left behind


@pytest.mark.slow
def test_two_training_processes_into_one_folder(synthetic_glue: Path, tmp_path: Path) -> None:
    """The issue's case: the second run ends with exit 2 and one line naming the first; the first is untouched."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lorafa_repro.train", *TINY, f"task.data_dir={synthetic_glue}", f"output_dir={out}",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = subprocess.Popen(cmd + ["trainer.max_steps=100000"], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "metrics.jsonl").exists():
            assert first.poll() is None
            time.sleep(0.5)
        second = subprocess.run(cmd + ["optim.lr=1e-3"], env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another run (pid {first.pid}" in lines[0], second.stderr[-2000:]
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 5, err[-2000:]
    result = read_result(out / "result.json")
    assert result["status"] == "interrupted" and result["config"]["optim"]["lr"] == 1e-2
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())  # no broken line


@pytest.mark.slow
def test_a_multirun_stops_at_a_cell_held_by_another_run(synthetic_glue: Path, tmp_path: Path) -> None:
    """A held cell is not recorded (its folder is another run's) and the sweep stops there with exit 2."""
    sweep = tmp_path / "sweep"
    held = sweep / "method.rank=2"
    holder = _holder(held)
    try:
        proc = subprocess.run([sys.executable, "-m", "lorafa_repro.train", "-m", *TINY, "method.rank=2,4",
                               f"task.data_dir={synthetic_glue}", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}",
                               "hydra.sweep.subdir=${hydra.job.override_dirname}",
                               "hydra.job.config.override_dirname.exclude_keys=[model,trainer,task,"
                               "task.max_train_samples,optim.lr,trainer.max_steps,trainer.log_every,method,"
                               "trainer.batch_size,task.data_dir]"],
                              env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{held} is in use by another run (pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (held / "result.json").exists() and not (sweep / "method.rank=4").exists()


# ---- 2. checked checkpoints ------------------------------------------------------------------------------

def test_a_checkpoint_is_checked_by_its_recorded_sha256(synthetic_glue: Path, tmp_path: Path) -> None:
    state = {"step": 3, "model": {"w": torch.arange(4096.0)}, "optimizer": {}, "scheduler": {}, "rng": {}, "loop": {}}
    path = ckpt.save_checkpoint(tmp_path, state, keep=2)
    assert ckpt.load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    at = data.find(torch.arange(4096.0)[1000:1002].numpy().tobytes())  # inside the tensor's bytes
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=False)["step"] == 3  # still loads: only the digest notices
    with pytest.raises(ValueError, match="sha256 differs"):
        ckpt.load_checkpoint(path)
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match="1000 bytes"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ValueError, match="lacks the keys"):  # checked before it is written
        ckpt.save_checkpoint(tmp_path, {"step": 4, "model": {}}, keep=2)
    assert [p.name for p in ckpt.checkpoint_paths(tmp_path)] == ["step_00000003.pt"]


def test_truncated_checkpoints_fall_back_then_say_how_to_start_over(synthetic_glue: Path, tmp_path: Path,
                                                                    caplog) -> None:
    """SIGTERM after step 6 (checkpoints 3 and 6 kept), the newest cut to 1000 bytes: the rerun warns and resumes
    from step 3. Both cut: one error naming the file and the override, nothing touched, no 'interrupted' loop;
    on_config_change=rerun starts over, the old run kept under replaced/."""
    cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", "trainer.checkpoint_every=3",
                              "trainer.fault=sigterm@6"])
    with pytest.raises(Interrupted):
        run(cfg, tmp_path)
    step3, step6 = ckpt.checkpoint_paths(tmp_path)
    step6.write_bytes(step6.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        resumed = run(cfg, tmp_path)
    assert resumed["status"] == "success" and resumed["timing"]["resumed_from_step"] == 3
    assert "step_00000006.pt is unusable (1000 bytes" in caplog.text and "resuming from step_00000003.pt" in caplog.text

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        run(cfg, cut)
    for p in ckpt.checkpoint_paths(cut):
        p.write_bytes(p.read_bytes()[:1000])
    before = (cut / "result.json").read_text()
    for _ in range(2):  # the same answer each time, never the old "interrupted ... rerun to resume"
        with pytest.raises(RunDirError, match=r"has no usable checkpoint \(step_00000006.pt: 1000 bytes.*\)\. "
                                              r"Fix: on_config_change=rerun to start over from step 0"):
            run(cfg, cut)
    assert (cut / "result.json").read_text() == before
    again = run(compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", "on_config_change=rerun"]), cut)
    assert again["status"] == "success" and again["timing"]["resumed_from_step"] == 0
    [old] = (cut / "replaced").iterdir()
    assert read_result(old / "result.json")["status"] == "interrupted" and (old / "checkpoints").is_dir()


# ---- 4. no silent replacement ------------------------------------------------------------------------------

def test_a_resumable_run_with_another_lr_is_refused_then_kept_aside(synthetic_glue: Path, tmp_path: Path,
                                                                   caplog) -> None:
    base = TINY + [f"task.data_dir={synthetic_glue}", "trainer.fault=sigterm@4"]
    with pytest.raises(Interrupted):
        run(compose_cfg(base), tmp_path)
    saved = ckpt.checkpoint_paths(tmp_path)
    with pytest.raises(RunDirError, match=r"holds a resumable run \(checkpoint of step 4\) of another config: "
                                          r"optim.lr: 0.01 -> 0.001\. Fix: on_config_change=rerun"):
        run(compose_cfg(base + ["optim.lr=1e-3"]), tmp_path)
    assert ckpt.checkpoint_paths(tmp_path) == saved  # untouched
    with caplog.at_level(logging.WARNING):
        fresh = run(compose_cfg(base + ["optim.lr=1e-3", "on_config_change=rerun"]), tmp_path)
    assert fresh["timing"]["resumed_from_step"] == 0 and fresh["config"]["optim"]["lr"] == 1e-3
    [old] = (tmp_path / "replaced").iterdir()
    assert "held a run of another config: moved it to" in caplog.text and str(old) in caplog.text
    assert [p.name for p in ckpt.checkpoint_paths(old)] == [p.name for p in saved]
    # the same command once more: a finished run of this config is moved aside too, with a word
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run(compose_cfg(base + ["optim.lr=1e-3", "on_config_change=rerun"]), tmp_path)
    assert "held a finished run of this config, run again" in caplog.text
    assert len(list((tmp_path / "replaced").iterdir())) == 2


# ---- 5. signals during evaluation -------------------------------------------------------------------------

def test_a_signal_during_evaluation_interrupts_and_the_resume_redoes_it(synthetic_glue: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """SIGINT in the middle of the final evaluation: interrupted at once (the evaluation does not finish), a
    checkpoint with the evaluation pending; the rerun only evaluates and ends like an uninterrupted run."""
    from lorafa_repro.tasks.glue import GlueTask

    cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}"])
    straight = run(cfg, tmp_path / "straight")
    real = GlueTask.evaluate
    finished = []

    def stopped_midway(self, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here
        finished.append(True)
        return real(self, *a, **k)

    monkeypatch.setattr(GlueTask, "evaluate", stopped_midway)
    with pytest.raises(Interrupted, match="SIGINT during the evaluation of step 8; checkpoint"):
        run(cfg, tmp_path / "cut")
    assert not finished
    data = read_result(tmp_path / "cut" / "result.json")
    assert data["status"] == "interrupted" and data["checkpoint"].endswith("step_00000008.pt")
    assert ckpt.load_checkpoint(data["checkpoint"])["loop"]["eval_pending"] is True
    monkeypatch.setattr(GlueTask, "evaluate", real)
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["status"] == "success" and resumed["timing"]["resumed_from_step"] == 8
    assert resumed["metrics"]["final"] == straight["metrics"]["final"]
    assert _stable(tmp_path / "cut") == _stable(tmp_path / "straight")  # one evaluation of step 8, the same


def test_a_signal_while_loading_ends_as_interrupted(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    """SIGTERM during the data loading: Interrupted at once, nothing written (the new folder is gone again);
    during the model loading: result.json says interrupted."""
    import lorafa_repro.run as run_mod

    def stop(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        pytest.fail("went on after the signal")

    cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}"])
    real = run_mod.prepare_task
    monkeypatch.setattr(run_mod, "prepare_task", lambda c: (stop(), real(c))[1])
    with pytest.raises(Interrupted, match="SIGTERM during the data loading; no new checkpoint"):
        run_mod.run(cfg, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(run_mod, "prepare_task", real)
    monkeypatch.setattr(run_mod, "build_model", stop)
    with pytest.raises(Interrupted, match="SIGTERM during the loading before training"):
        run_mod.run(cfg, tmp_path / "model")
    assert read_result(tmp_path / "model" / "result.json")["status"] == "interrupted"


@pytest.mark.slow
def test_sigint_to_a_real_process_during_a_long_evaluation(tmp_path: Path) -> None:
    """A real process, SIGINT while it evaluates 6000 examples one by one: exit 5, interrupted, the evaluation's
    predictions never written; the same command then resumes (evaluation only) and succeeds."""
    from lorafa_repro.tasks.glue_data import write_synthetic_glue

    glue = write_synthetic_glue(tmp_path / "glue", tasks=["sst2"], n_train=16, n_dev=6000)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lorafa_repro.train", *TINY, f"task.data_dir={glue}", "trainer.max_steps=2",
           "trainer.eval_batch_size=1", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    while not (out / "metrics.jsonl").exists() or '"step": 2' not in (out / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err[-2000:]
    assert "interrupted: SIGINT during the evaluation of step 2" in err and "Traceback" not in err
    assert not (out / "predictions" / "step_000002.jsonl").exists()  # cut short, not run to the end
    assert read_result(out / "result.json")["status"] == "interrupted"
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    done = read_result(out / "result.json")
    assert done["timing"]["resumed_from_step"] == 2 and done["metrics"]["final"]["predictions_file"]


# ---- 6. divergence ---------------------------------------------------------------------------------------------

def test_divergence_is_the_median_of_recent_losses_against_the_first() -> None:
    check_divergence(1.0, [1.0] * 9 + [100.0], 10, 10.0)  # one spike: the mean (10.9) would stop the run
    check_divergence(1.0, [5.0, 9.9, 9.9], 3, 10.0)  # below factor x first
    with pytest.raises(Diverged, match=r"median of the last 3 steps 11 > trainer.divergence_factor=10 x the "
                                       r"step-1 loss 1\b.*Fix: lower optim.lr.*divergence_factor=null"):
        check_divergence(1.0, [11.0, 11.0, 11.0], 3, 10.0)
    check_divergence(1.0, [1e9] * 2, 2, 10.0)  # fewer than 3 losses: no judgement yet
    check_divergence(1.0, [1e9] * DIVERGENCE_WINDOW, 10, None)  # off


def test_a_huge_lr_ends_as_diverged_unless_the_check_is_off(synthetic_glue: Path, tmp_path: Path) -> None:
    huge = TINY + [f"task.data_dir={synthetic_glue}", "optim.lr=1e6", "trainer.max_steps=12"]
    with pytest.raises(Diverged):
        run(compose_cfg(huge), tmp_path / "on")
    data = read_result(tmp_path / "on" / "result.json")
    assert data["status"] == "diverged" and "divergence_factor=10" in data["error"]
    assert data["metrics"]["diverged_step"] >= 3
    off = run(compose_cfg(huge + ["trainer.divergence_factor=null"]), tmp_path / "off")
    assert off["status"] == "success" and off["metrics"]["last_loss"] > 10 * off["metrics"]["first_loss"]
    with pytest.raises(ConfigError, match="trainer.divergence_factor must be > 1 or null, got 1.0. Fix:"):
        run(compose_cfg(huge + ["trainer.divergence_factor=1"]), tmp_path / "bad")


# ---- 8. timing ---------------------------------------------------------------------------------------------------

def test_timing_keeps_training_evaluation_and_loading_apart(synthetic_glue: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    from lorafa_repro.tasks.glue import GlueTask

    real = GlueTask.evaluate
    monkeypatch.setattr(GlueTask, "evaluate", lambda self, *a, **k: (time.sleep(1.0), real(self, *a, **k))[1])
    result = run(compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", "trainer.max_steps=4",
                                     "trainer.eval_every=2", "trainer.checkpoint_every=2"]), tmp_path)
    t = result["timing"]
    assert t["eval_s"] >= 2.0  # two evaluations
    assert min(t["train_s"], t["load_s"], t["checkpoint_s"]) > 0
    # disjoint parts of the whole: train_s counting the evaluations would break this by 2 s
    assert t["train_s"] + t["eval_s"] + t["load_s"] + t["checkpoint_s"] <= t["total_s"]
    assert t["tokens_per_s"] == pytest.approx(t["tokens"] / t["train_s"])
