"""The `logger` config group: each tracker's own files, read back with its own reader, hold what metrics.jsonl
holds (every number of every row, at its step), the config and run identity, and the run summary."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from conftest import compose_cfg
from lorafa_repro.errors import ConfigError
from lorafa_repro.loggers import RunIdentity
from lorafa_repro.run import run

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")

TINY = ["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=32", "method=lora_fa",
        "method.rank=4", "trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=2"]
ALL = "logger=[jsonl,tensorboard,wandb,mlflow]"


def jsonl_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """key -> {step: value} of every number in metrics.jsonl."""
    series: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                series.setdefault(k, {})[row["step"]] = float(v)
    return series


def tensorboard_series(logdir: Path) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: (v.string_value or v.number_value) for k, v in info.hparams.items()}
    return series, hparams


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of W&B's offline transaction log (``run-<id>.wandb``), parsed with wandb's own protobuf
    schema. wandb 0.31 ships no Python reader (wandb.sdk.internal.datastore is gone); the file is LevelDB's log
    format: a 7-byte W&B header, 32 KiB blocks, each chunk = crc32c (4) + length (2) + type (1: full, 2: first,
    3: middle, 4: last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += room
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def wandb_run(run_dir: Path) -> tuple[Any, dict[str, dict[int, float]], dict[str, Any]]:
    """(run record, key -> {step: value} of its history, its final summary)."""
    records = wandb_records(run_dir)
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    series: dict[str, dict[int, float]] = {}
    summary: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = r.history.item if kind == "history" else r.summary.update if kind == "summary" else []
        for item in items:
            key = item.key or ".".join(item.nested_key)
            if kind == "history" and not key.startswith("_"):
                series.setdefault(key, {})[r.history.step.num] = json.loads(item.value_json)
            elif kind == "summary":
                summary[key] = json.loads(item.value_json)
    return run_record, series, summary


def mlflow_run(run_dir: Path, store: Path) -> tuple[Any, Any, dict[str, dict[int, float]]]:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store otherwise
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    run_id = json.loads((run_dir / "tracker_runs.json").read_text())["mlflow"]
    mlrun = client.get_run(run_id)
    series = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in mlrun.data.metrics}
    return client, mlrun, series


def test_every_tracker_holds_what_metrics_jsonl_holds(synthetic_glue: Path, tmp_path: Path) -> None:
    result = run(compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", ALL]), tmp_path)
    assert result["status"] == "success"
    expected = jsonl_series(tmp_path)
    assert {"loss", "lr", "tokens_per_s", "step_time_s", "peak_rss_bytes", "eval_score", "eval_loss"} <= set(expected)
    assert sorted(expected["loss"]) == [1, 2, 3, 4] and sorted(expected["eval_score"]) == [2, 4]
    final_loss = result["metrics"]["final"]["eval_loss"]
    peak = result["memory"]["peak_rss_bytes"]

    tb, tb_hparams = tensorboard_series(tmp_path / "tensorboard")
    for key, points in expected.items():  # TensorBoard keeps float32
        assert tb[key] == pytest.approx(points, rel=1e-6), key
    assert tb["hparam/final.eval_loss"] == pytest.approx({0: final_loss}, rel=1e-6)
    assert tb["hparam/memory.peak_rss_bytes"] == pytest.approx({0: peak}, rel=1e-6)
    assert tb_hparams["method.name"] == "lora_fa" and tb_hparams["method.rank"] == 4
    assert tb_hparams["run.output_dir"] == str(tmp_path) and tb_hparams["run.status"] == "success"

    record, wb, summary = wandb_run(tmp_path)
    assert {k: wb[k] for k in expected} == expected  # JSON: exact
    config = {item.key: json.loads(item.value_json) for item in record.config.update}
    assert config["method"]["rank"] == 4 and config["run"]["output_dir"] == str(tmp_path)
    assert config["code"] == result["config"]["code"]
    assert summary["final.eval_loss"] == final_loss and summary["memory.peak_rss_bytes"] == peak
    assert summary["status"] == "success" and record.display_name == tmp_path.name and not record.run_group

    _, mlrun, ml = mlflow_run(tmp_path, tmp_path / "mlruns")
    assert {k: ml[k] for k in expected} == expected  # float64: exact
    assert ml["summary.final.eval_loss"] == {0: final_loss}
    assert ml["summary.timing.tokens_per_s"] == {0: result["timing"]["tokens_per_s"]}
    assert mlrun.data.params["method.rank"] == "4" and mlrun.data.params["model.name"] == "tiny-roberta"
    assert mlrun.data.params["run.output_dir"] == str(tmp_path) and mlrun.info.status == "FINISHED"


def test_runs_of_one_sweep_are_grouped(synthetic_glue: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for lr in ("1e-3", "2e-3"):
        cell = f"optim.lr={lr}"
        identity = RunIdentity(name=cell, output_dir=str(sweep / cell), sweep=str(sweep), job_num=0)
        cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", cell, "trainer.max_steps=1",
                                  "logger=[wandb,mlflow]"])
        assert run(cfg, sweep / cell, identity)["status"] == "success"
    groups = {wandb_run(sweep / c)[0].run_group for c in ("optim.lr=1e-3", "optim.lr=2e-3")}
    assert groups == {str(sweep)}
    client, mlrun, _ = mlflow_run(sweep / "optim.lr=1e-3", sweep / "mlruns")  # one store for the sweep
    experiment = client.get_experiment(mlrun.info.experiment_id)
    assert experiment.name == "sweep"
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["optim.lr=1e-3", "optim.lr=2e-3"]
    assert {r.data.params["optim.lr"] for r in runs} == {"0.001", "0.002"}


def test_a_missing_tracker_is_one_line_before_anything_runs(synthetic_glue: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import lorafa_repro.loggers as loggers

    monkeypatch.setitem(loggers.TRACKERS, "wandb", ("lorafa_repro.loggers.wandb", "wandb_not_installed_here"))
    cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", "logger=[tensorboard,wandb]"])
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "out")
    assert "\n" not in str(e.value) and 'Fix: pip install -e ".[trackers]"' in str(e.value)
    assert "logger=wandb" in str(e.value) and not (tmp_path / "out").exists()


def test_a_resumed_run_continues_its_tracker_runs(synthetic_glue: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint at step 2, step 3 logged, a failure at step 4; the rerun resumes from step 2 into the same
    tracker runs: TensorBoard drops the first attempt's step 3 (as metrics.jsonl does), MLflow (which cannot
    delete a point) holds the replayed step 3 twice with the same value."""
    cfg = compose_cfg(TINY + [f"task.data_dir={synthetic_glue}", "trainer.eval_every=0", "trainer.checkpoint_every=2",
                              "logger=[tensorboard,mlflow]"])
    monkeypatch.setenv("LORAFA_FAULT", "error@4")
    with pytest.raises(RuntimeError):
        run(cfg, tmp_path)
    first_id = json.loads((tmp_path / "tracker_runs.json").read_text())["mlflow"]
    monkeypatch.delenv("LORAFA_FAULT")
    result = run(cfg, tmp_path)
    assert result["status"] == "success" and result["timing"]["resumed_from_step"] == 2
    expected = jsonl_series(tmp_path)["loss"]
    assert list(expected) == [1, 2, 3, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("loss")] == list(expected.items())
    client, mlrun, _ = mlflow_run(tmp_path, tmp_path / "mlruns")
    assert mlrun.info.run_id == first_id and mlrun.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(first_id, "loss")]
    assert sorted(history) == sorted([*expected.items(), (3, expected[3])])


@pytest.mark.slow
def test_a_hydra_multirun_is_one_experiment_with_one_run_per_cell(synthetic_glue: Path, tmp_path: Path) -> None:
    """Through the CLI: the run identity comes from Hydra (sweep dir, override string); ``logger`` stays out of
    the cells' directory names."""
    import subprocess
    import sys

    from conftest import REPO

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lorafa_repro.train", "-m", *TINY, "trainer.max_steps=1", "trainer.eval_every=0",
           f"task.data_dir={synthetic_glue}", "method=lora,lora_fa", "logger=[mlflow]", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True)
    cells = sorted(str(p.parent) for p in sweep.rglob("metrics.jsonl"))
    assert len(cells) == 2 and not any("logger" in c for c in cells)
    client, mlrun, _ = mlflow_run(Path(cells[0]), sweep / "mlruns")
    experiment = client.get_experiment(mlrun.info.experiment_id)
    runs = client.search_runs([experiment.experiment_id])
    assert experiment.name == "sweep" and len(runs) == 2
    assert sorted(str(Path(r.data.params["run.output_dir"]).resolve()) for r in runs) == cells
    assert {r.data.params["run.sweep"] for r in runs} == {str(sweep)}
    assert sorted(r.data.params["run.job_num"] for r in runs) == ["0", "1"]
    assert sorted("method=lora," in r.info.run_name or "method=lora_fa," in r.info.run_name for r in runs) == [True] * 2
