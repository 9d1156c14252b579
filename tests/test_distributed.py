"""Data parallel on CPU: torchrun (and accelerate launch) with 2 gloo processes against 1 process at the same
global batch; checkpoint + resume of 2-rank DDP and FSDP runs; one failing rank ends the run promptly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorafa_repro.results import read_result

HELPER = Path(__file__).parent / "helpers" / "ddp_run.py"


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _launch(nproc: int, out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(HELPER), str(out), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(HELPER), str(out), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("method,parallel", [("lora_fa", "ddp"), ("ft", "ddp"), ("lora_fa", "fsdp")])
def test_two_gloo_ranks_match_one_process_at_the_same_global_batch(method: str, parallel: str,
                                                                   synthetic_glue: Path, tmp_path: Path) -> None:
    """Loss curve of 2 ranks x batch 4 vs 1 process x batch 8 (same examples per step, dropout off): equal
    within rel 1e-4 (all-reduce and padding change only the float summation order; measured: identical to
    ~1e-7). FSDP (trainer.parallel=fsdp: FSDP2 fully_shard per block, gloo on CPU) gives the same curve.
    Per-rank peak memory and the max over ranks land in result.json."""
    common = ["model=tiny_roberta", "trainer=tiny", f"method={method}", "method.rank=4", "task=glue/sst2",
              f"task.data_dir={synthetic_glue}", "task.max_train_samples=32", "trainer.max_steps=8",
              "trainer.log_every=1", "optim.lr=1e-2"]
    _launch(1, tmp_path / "one", common + ["trainer.batch_size=8"])
    _launch(2, tmp_path / "two", common + ["trainer.batch_size=4", f"trainer.parallel={parallel}"])
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=1e-4)
    result = read_result(tmp_path / "two" / "result.json")
    assert result["world_size"] == 2 and len(result["memory"]["per_rank"]) == 2
    peaks = [r["peak_rss_bytes"] for r in result["memory"]["per_rank"]]
    assert result["memory"]["max_over_ranks_peak_rss_bytes"] == max(peaks) > 0
    single = read_result(tmp_path / "one" / "result.json")
    assert result["metrics"]["final"]["score"] == pytest.approx(single["metrics"]["final"]["score"], abs=1 / 32)


# --- issue 11 leftovers: accelerate launch, FSDP (and DDP) checkpoints, one failing rank ---------------------

TRAIN = ["-m", "lorafa_repro.train"]


def _bounded(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (the launcher's workers too)
    and fail. Returns (exit code, stderr, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd[:8])} ... still running after {timeout} s: a rank hangs")
    return proc.returncode, err, time.perf_counter() - t0


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def _dropout_free_roberta(folder: Path) -> Path:
    """tiny-roberta saved as a local pretrained model without dropout (model.source=pretrained), so 2 ranks and
    1 process compute the same function with the plain ``python -m lorafa_repro.train`` entry point."""
    from transformers import AutoModelForSequenceClassification

    from lorafa_repro.models import shipped_config

    torch.manual_seed(0)
    config = shipped_config("tiny-roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_match_one_process(synthetic_glue: Path, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine starts 2 gloo ranks (it hands
    over to torchrun's launcher; ``--cpu --num_processes 2`` would need MPI: without ``--mpirun_hostfile`` it
    starts ONE process). No accelerate config file (HF_HOME points at an empty folder). Same loss curve as one
    process at the same global batch, within the torchrun test's rel 1e-4."""
    model_dir = _dropout_free_roberta(tmp_path / "roberta")
    common = ["model=tiny_roberta", "model.source=pretrained", f"model.path={model_dir}", "trainer=tiny",
              "method=lora_fa", "method.rank=4", "task=glue/sst2", f"task.data_dir={synthetic_glue}",
              "task.max_train_samples=32", "trainer.max_steps=8", "trainer.log_every=1", "optim.lr=1e-2"]
    env = {"HF_HOME": str(tmp_path / "hf")}
    rc, err, _ = _bounded([sys.executable, *TRAIN, *common, "trainer.batch_size=8", f"output_dir={tmp_path / 'one'}"],
                          300, env)
    assert rc == 0, err[-3000:]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "0", "-m", "lorafa_repro.train"]
    rc, err, _ = _bounded([*accelerate, *common, "trainer.batch_size=4", f"output_dir={tmp_path / 'two'}"], 300, env)
    assert rc == 0, err[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=1e-4)
    assert max(abs(a - b) for a, b in zip(one[1:], one[:-1])) > 1e-3  # the curve moves: the check has teeth
    result = read_result(tmp_path / "two" / "result.json")
    assert result["world_size"] == 2 and len(result["memory"]["per_rank"]) == 2
    assert all(r["peak_rss_bytes"] > 0 for r in result["memory"]["per_rank"])


@pytest.mark.slow
@pytest.mark.parametrize("method,parallel", [("lora_fa", "fsdp"), ("ft", "fsdp"), ("lora_fa", "ddp")])
def test_two_rank_run_interrupted_and_resumed_matches_uninterrupted(method: str, parallel: str,
                                                                   synthetic_glue: Path, tmp_path: Path) -> None:
    """2 gloo ranks, SIGTERM on every rank after step 3 (trainer.fault=sigterm@3): the ranks agree, the
    checkpoint of step 3 is written by rank 0 (FSDP: full state dicts gathered with torch.distributed.checkpoint);
    rerunning the same command resumes it (FSDP: loaded into the sharded model and optimizer on every rank) and
    ends bit for bit where an uninterrupted 2-rank run ends: every loss and the final metrics. LoRA-FA runs with
    method.dropout=0.1, so each rank's restored RNG state matters."""
    common = ["model=tiny_roberta", "trainer=tiny", f"method={method}", "method.rank=4", "task=glue/sst2",
              f"task.data_dir={synthetic_glue}", "task.max_train_samples=32", "trainer.max_steps=6",
              "trainer.log_every=1", "optim.lr=1e-2", "trainer.batch_size=4", f"trainer.parallel={parallel}"]
    if method == "lora_fa":
        common.append("method.dropout=0.1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    rc, err, _ = _bounded(_torchrun(2, str(HELPER), str(full), *common), 300)
    assert rc == 0, err[-3000:]
    rc, err, _ = _bounded(_torchrun(2, str(HELPER), str(cut), *common, "trainer.fault=sigterm@3"), 300)
    assert rc != 0 and read_result(cut / "result.json")["status"] == "interrupted", err[-3000:]
    [path] = list((cut / "checkpoints").glob("step_*.pt"))
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["step"] == 3 and len(state["rng"]) == 2 and state["world_size"] == 2
    if method == "lora_fa":  # trainable weights only: B and the head, not A or the frozen base
        assert any("lora_B" in n for n in state["model"]) and not any("lora_A" in n or "query.base_layer" in n
                                                                       for n in state["model"])
    if parallel == "fsdp":  # whole (unsharded) tensors, the optimizer state keyed by parameter name
        for name, tensor in state["model"].items():
            assert state["optimizer"]["state"][name]["exp_avg"].shape == tensor.shape
    rc, err, _ = _bounded(_torchrun(2, str(HELPER), str(cut), *common, "trainer.fault=sigterm@3"), 300)
    assert rc == 0, err[-3000:]
    resumed, uninterrupted = read_result(cut / "result.json"), read_result(full / "result.json")
    assert resumed["timing"]["resumed_from_step"] == 3
    assert _losses(cut) == _losses(full) and len(_losses(full)) == 6
    assert resumed["metrics"]["final"] == uninterrupted["metrics"]["final"]
    assert resumed["metrics"]["last_loss"] == uninterrupted["metrics"]["last_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("fault,status,reason", [
    ("error@3:rank1", "failed", "rank 1 failed: RuntimeError: injected fault at step 3 on rank 1"),
    ("oom@3:rank0", "oom", "out of memory. Fix:"),
])
def test_an_exception_on_one_rank_ends_every_rank_promptly(fault: str, status: str, reason: str,
                                                           synthetic_glue: Path, tmp_path: Path) -> None:
    """A fault on one rank only, while the other waits in a collective. Before the fix both ranks blocked
    (measured: still running after 150 s, result.json `running`; the gloo timeout is 30 min). Now the run ends
    as fast as a healthy one: result.json reads the failing rank's status and reason (not `interrupted`,
    although torchrun SIGTERMs the survivor), each rank prints it in one line, and torchrun exits 1."""
    out = tmp_path / "run"
    cmd = _torchrun(2, *TRAIN, "model=tiny_roberta", "trainer=tiny", "method=lora_fa", "method.rank=4",
                    "task=glue/sst2", f"task.data_dir={synthetic_glue}", "task.max_train_samples=32",
                    "trainer.max_steps=6", "trainer.batch_size=4", f"trainer.fault={fault}", f"output_dir={out}")
    rc, err, seconds = _bounded(cmd, 240)
    assert rc == 1, err[-3000:]
    result = read_result(out / "result.json")
    assert result["status"] == status, result
    assert result["failed_rank"] == int(fault[-1]) and result["world_size"] == 2
    assert result["error"].startswith(reason), result["error"]
    assert result["memory"]["per_rank"] is None
    assert err.count(f"lorafa-train: {status}:") == 2, err[-3000:]  # each rank says why, in one line
    print(f"{fault}: run ended in {seconds:.1f} s")
