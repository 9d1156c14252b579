"""Fault-injection suite (issue 11, item 6): a tiny 7-cell multirun with a fault in most cells, then the same
command again. Faults: NaN loss, CUDA OOM, an exception, a bad override, SIGKILL of the whole sweep mid-run
(the basic launcher runs cells in-process, so the kill takes the sweep down: the worst case), and a
corrupt result.json written between the two passes. The fault hook is ``trainer.fault`` (src/lorafa_repro/
faults.py); ``nan@99`` fires after the 4-step run has ended, i.e. a healthy cell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorafa_repro.results import try_read_result

CELLS = {  # trainer.fault value -> status after the first pass, after the second pass
    "null": ("success", "success"),
    "nan@2": ("diverged", "diverged"),
    "oom@2": ("oom", "oom"),
    "error@2": ("failed", "failed"),
    "boom@1": ("failed", "failed"),  # a bad override: ConfigError recorded in its cell
    "nan@99": ("success", "success"),  # healthy; its result.json is corrupted between the passes
    "kill@3": ("running", "success"),  # SIGKILL after the step-2 checkpoint; the rerun resumes it
}


def _sweep(glue: Path, sweep_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "-m", "model=tiny_roberta", "trainer=tiny", "method=lora_fa",
         "method.rank=4", "method.dropout=0.1", f"task.data_dir={glue}", "task.max_train_samples=32",
         "trainer.max_steps=4", "trainer.checkpoint_every=2", "skip_if_done=true",
         f"trainer.fault={','.join(CELLS)}", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=600, cwd=sweep_dir.parent)


def _cells(sweep_dir: Path) -> dict[str, tuple[dict | None, str]]:
    out = {}
    for cell in sweep_dir.iterdir():
        if cell.is_dir() and "trainer.fault=" in cell.name:
            fault = cell.name.split("trainer.fault=")[1].split(",")[0]
            data, _ = try_read_result(cell / "result.json")
            out[fault] = (data, (cell / "result.json").read_text() if (cell / "result.json").exists() else "")
    return out


@pytest.mark.slow
def test_fault_injection_sweep(synthetic_glue: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    first = _sweep(synthetic_glue, sweep_dir)
    assert first.returncode == -9, first.stderr[-3000:]  # the kill cell took the sweep down
    cells = _cells(sweep_dir)
    assert {k: v[0]["status"] for k, v in cells.items()} == {k: v[0] for k, v in CELLS.items()}
    assert "Traceback" not in first.stderr
    assert "ConfigError: bad fault spec 'boom@1'" in cells["boom@1"][0]["error"]
    assert cells["nan@2"][0]["metrics"]["diverged_step"] == 2
    corrupt = sweep_dir / next(c.name for c in sweep_dir.iterdir() if "trainer.fault=nan@99" in c.name)
    text = (corrupt / "result.json").read_text()
    (corrupt / "result.json").write_text(text[: len(text) // 3])

    second = _sweep(synthetic_glue, sweep_dir)
    assert second.returncode == 1, second.stderr[-3000:]  # failed cells remain: summary + exit 1
    assert "Traceback" not in second.stderr, second.stderr[-3000:]
    assert "4 of 7 cells did not succeed" in second.stderr
    after = _cells(sweep_dir)
    assert {k: v[0]["status"] for k, v in after.items()} == {k: v[1] for k, v in CELLS.items()}
    redone = sorted(k for k in CELLS if after[k][1] != cells[k][1])
    assert redone == ["kill@3", "nan@99"], redone  # only the killed and the corrupt cell ran again
    assert after["kill@3"][0]["timing"]["resumed_from_step"] == 2

    injected = len(CELLS) - 1  # nan, oom, error, bad override, kill, corrupt (the null cell has none)
    survived = sum(after[k][0]["status"] == v[1] for k, v in CELLS.items() if k != "null")
    lost = sum(after[k][0] is None for k in CELLS)
    print(f"faults injected {injected}, survived {survived}, cells lost {lost}")
    assert (survived, lost) == (injected, 0)


def test_fault_spec_can_target_one_rank(tmp_path: Path) -> None:
    """``kind@step:rank<k>`` fires on rank k only; without the suffix on every rank; a fault fires once per run
    directory (the marker is read at the start, so every rank of a run agrees)."""
    import torch

    from lorafa_repro.faults import Fault, FaultInjector, parse

    assert parse("nan@2,error@3:rank1") == {2: Fault("nan"), 3: Fault("error", 1)}
    for bad in ("error@3:rank", "error@3:1", "error@0:rank1", "boom@3:rank1"):
        with pytest.raises(ValueError, match="Fix: trainer.fault="):
            parse(bad)
    loss = torch.tensor(1.0)
    rank0, rank1 = FaultInjector("error@3:rank1", tmp_path, 0), FaultInjector("error@3:rank1", tmp_path, 1)
    assert rank0(3, loss) is loss
    with pytest.raises(RuntimeError, match="injected fault at step 3 on rank 1"):
        rank1(3, loss)
    assert FaultInjector("error@3:rank1", tmp_path, 1)(3, loss) is loss  # the restarted run goes on
    every = [FaultInjector("nan@2", tmp_path / "b", r) for r in (0, 1)]
    (tmp_path / "b").mkdir()
    assert all(torch.isnan(inj(2, loss)) for inj in every)  # rank 0's marker does not stop rank 1


def test_first_failing_rank_is_shared_through_the_run_directory(tmp_path: Path) -> None:
    """The rank that fails first writes its reason; a rank that fails later (it saw only the broken collective)
    reads that one instead of claiming its own; a new attempt starts clean."""
    from lorafa_repro import distributed as dist

    first = dist.share_failure(tmp_path, "oom", "OutOfMemoryError: x")
    assert first == {"rank": 0, "status": "oom", "error": "OutOfMemoryError: x"}
    assert dist.share_failure(tmp_path, "failed", "RuntimeError: Connection closed by peer") == first
    dist.clear_failure(tmp_path)
    assert dist.share_failure(tmp_path, "failed", "RuntimeError: y")["error"] == "RuntimeError: y"
