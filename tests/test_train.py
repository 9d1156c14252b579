"""End to end: each method trains a tiny model on synthetic GLUE data; result files follow the schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg
from lorafa_repro.methods import METHODS
from lorafa_repro.results import read_result, validate_result
from lorafa_repro.run import run

TINY = ["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=16",
        "optim.lr=1e-2", "optim.warmup_ratio=0", "trainer.max_steps=60", "method.rank=4"]


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# adapter: on the random-init 2-layer RoBERTa, position-wise adapters with q/k frozen do not move the synthetic
# SST-2 loss in 60 steps (LoRA adapts q/k); tests/test_adapter.py checks it memorises a batch and runs end to end.
@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "adapter"))
def test_method_trains_and_loss_goes_down(method: str, synthetic_glue: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(TINY + [f"method={method}", f"task.data_dir={synthetic_glue}"])
    result = run(cfg, tmp_path)
    assert result["status"] == "success"
    losses = _losses(tmp_path)
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{method}: loss {first:.3f} -> {last:.3f}"
    on_disk = read_result(tmp_path / "result.json")
    assert on_disk["config"]["method"]["name"] == method
    assert 0 < on_disk["params"]["trainable"] <= on_disk["params"]["total"]


def test_result_and_metrics_files_follow_the_schema(synthetic_glue: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(TINY + ["method=lora_fa", "task=glue/stsb", f"task.data_dir={synthetic_glue}",
                              "trainer.max_steps=6", "trainer.log_every=2", "trainer.eval_every=3"])
    result = run(cfg, tmp_path)
    validate_result(result)
    assert result["kind"] == "train" and result["error"] is None
    assert result["metrics"]["main_metric"] == "pearson"
    assert {"pearson", "spearmanr", "score", "eval_loss"} <= set(result["metrics"]["final"])
    assert result["metrics"]["best_step"] in (3, 6)
    assert result["memory"]["backend"] == "cpu_rss" and result["memory"]["peak_rss_bytes"] > 0
    assert result["timing"]["steps"] == 6 and result["timing"]["total_s"] > 0
    assert result["env"]["versions"]["torch"] and "git_sha" in result["env"]
    assert result["config"]["task"]["data_dir"] == str(synthetic_glue)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 4, 6]
    for r in train_rows:
        assert {"step", "loss", "lr", "step_time_s", "tokens_per_s", "rss_bytes", "peak_rss_bytes"} <= set(r)
        assert r["peak_rss_bytes"] >= r["rss_bytes"] > 0
    assert [r["step"] for r in rows if "eval_score" in r] == [3, 6]
    assert not list(tmp_path.glob(".result.json.*")), "temp file left behind"
    # every evaluation leaves its predictions; the final file rescores to the reported Pearson
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["step_000003.jsonl", "step_000006.jsonl"]
    assert result["metrics"]["final"]["predictions_file"] == "predictions/step_000006.jsonl"
    preds = [json.loads(line) for line in (tmp_path / "predictions" / "step_000006.jsonl").read_text().splitlines()]
    assert len(preds) == 32 and {"split", "id", "prediction", "reference"} <= set(preds[0])
    from scipy.stats import pearsonr
    rescored = pearsonr([p["prediction"] for p in preds], [p["reference"] for p in preds])[0]
    assert result["metrics"]["final"]["pearson"] == pytest.approx(rescored, abs=1e-6)


def test_mnli_reports_mean_of_matched_and_mismatched(synthetic_glue: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(TINY + ["method=lora", "task=glue/mnli", f"task.data_dir={synthetic_glue}",
                              "trainer.max_steps=2"])
    final = run(cfg, tmp_path)["metrics"]["final"]
    assert final["accuracy"] == pytest.approx((final["accuracy_matched"] + final["accuracy_mismatched"]) / 2)


def test_failure_writes_a_failed_result_and_reraises(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    import lorafa_repro.run as run_mod

    def broken(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_mod, "train_loop", broken)
    cfg = compose_cfg(TINY + ["method=lora_fa", f"task.data_dir={synthetic_glue}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_mod.run(cfg, tmp_path)
    data = read_result(tmp_path / "result.json")
    assert data["status"] == "failed" and "simulated crash" in data["error"]


def test_skip_if_done_reuses_a_finished_run(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    import lorafa_repro.run as run_mod

    cfg = compose_cfg(TINY + ["method=ft", f"task.data_dir={synthetic_glue}", "trainer.max_steps=2",
                              "skip_if_done=true"])
    first = run_mod.run(cfg, tmp_path)
    monkeypatch.setattr(run_mod, "train_loop", lambda *a, **k: pytest.fail("ran again"))
    assert run_mod.run(cfg, tmp_path)["created_at"] == first["created_at"]


def test_seed_makes_runs_repeatable(synthetic_glue: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(TINY + ["method=lora_fa", f"task.data_dir={synthetic_glue}", "trainer.max_steps=5",
                              "method.dropout=0.1"])
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


@pytest.mark.slow  # tests/test_sweeps.py runs a (failing) multirun in the fast suite
def test_cli_multirun_sweeps_methods(synthetic_glue: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lorafa_repro.train", "-m", "model=tiny_roberta", "trainer=tiny",
         f"task.data_dir={synthetic_glue}", "trainer.max_steps=2", "method=ft,lora_fa", "method.rank=4",
         f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted(tmp_path.rglob("result.json"))
    names = [p.parent.name for p in results]
    assert len(names) == 2 and "method=ft," in names[0] and "method=lora_fa," in names[1], names
    assert all(read_result(p)["status"] == "success" for p in results)


def test_out_of_memory_is_one_clear_message_and_an_oom_result(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    import lorafa_repro.run as run_mod
    import lorafa_repro.train as train_mod

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_mod, "train_loop", oom)
    cfg = compose_cfg(TINY + ["method=lora_fa", f"task.data_dir={synthetic_glue}", f"output_dir={tmp_path}"])
    monkeypatch.setattr(train_mod, "HydraConfig", None)  # output_dir is set, Hydra's run dir is not needed
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main.__wrapped__(cfg)
    assert exit_info.value.code == 3
    data = read_result(tmp_path / "result.json")
    assert data["status"] == "oom" and "Fix: lower trainer.batch_size" in data["error"]


def test_git_dirty_ignores_rewritten_result_files(tmp_path: Path) -> None:
    from lorafa_repro.results import git_info

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "result.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    (tmp_path / "results" / "result.json").write_text('{"new": 1}\n')
    assert git_info(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_info(tmp_path)["git_dirty"] is True


@pytest.mark.parametrize("method", ["ft", "lora_fa"])
def test_gradient_checkpointing_trains_identically(method: str, synthetic_glue: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    """trainer.gradient_checkpointing=true recomputes each block in backward (dropout masks replayed from
    the saved RNG state), so the loss curve equals the run without it."""
    import lorafa_repro.run as run_module
    from lorafa_repro.models import enable_gradient_checkpointing

    checkpointed: list[str] = []

    def counting(model):  # the suite's switch, then count the checkpointed block calls
        enable_gradient_checkpointing(model)
        for name, mod in model.named_modules():
            func = getattr(mod, "_gradient_checkpointing_func", None)
            if func is not None:
                mod._gradient_checkpointing_func = lambda *a, _f=func, _n=name, **k: (checkpointed.append(_n),
                                                                                      _f(*a, **k))[1]
        return model

    monkeypatch.setattr(run_module, "enable_gradient_checkpointing", counting)
    common = TINY + [f"method={method}", f"task.data_dir={synthetic_glue}", "trainer.max_steps=8",
                     "trainer.log_every=1"]
    plain = run(compose_cfg(common), tmp_path / "plain")
    assert checkpointed == []
    ckpt = run(compose_cfg(common + ["trainer.gradient_checkpointing=true"]), tmp_path / "ckpt")
    assert plain["status"] == ckpt["status"] == "success"
    assert len(checkpointed) >= 8 * 2  # both tiny blocks, every training step
    assert ckpt["config"]["trainer"]["gradient_checkpointing"] is True
    assert _losses(tmp_path / "ckpt") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-5, abs=1e-6)


# ---- bugs a test must catch: MNLI split, loss / grad_accum, best-score direction ---------------------

def _loop(cfg, tmp_path: Path, *, task=None, no_dropout: bool = True, optimizer_hook=None, monkeypatch=None):
    """train_loop on the run's pieces, with the model's dropout off (so two batchings see the same function)."""
    import torch

    import lorafa_repro.trainer as trainer_mod
    from lorafa_repro.memory.peak import PeakMemory
    from lorafa_repro.methods import apply_method
    from lorafa_repro.models import build_config, build_tokenizer, model_from_config
    from lorafa_repro.results import MetricsLog
    from lorafa_repro.tasks import build_task

    torch.manual_seed(cfg.seed)
    task = task or build_task(cfg.task, seed=cfg.seed)
    tokenizer = build_tokenizer(cfg.model)
    config = build_config(cfg.model, num_labels=task.num_labels)
    if no_dropout:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = model_from_config(config, arch=cfg.model.arch, task_kind=task.kind)
    model = apply_method(model, cfg.method.name, rank=cfg.method.rank, alpha=cfg.method.alpha)
    if optimizer_hook is not None:
        real = trainer_mod.build_optimizer
        monkeypatch.setattr(trainer_mod, "build_optimizer", lambda m, *a, **k: optimizer_hook(m, real(m, *a, **k)))
    log = MetricsLog(tmp_path / "metrics.jsonl")
    try:
        return trainer_mod.train_loop(model, task, tokenizer, trainer=cfg.trainer, optim=cfg.optim,
                                      method=cfg.method, device=torch.device("cpu"),
                                      memory=PeakMemory(torch.device("cpu")), log=log, seed=cfg.seed)
    finally:
        log.close()


def test_grad_accum_gives_the_big_batch_gradient(synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    """2 micro-batches of 4 = one batch of 8: same gradient (the loss is divided by grad_accum) and the same
    logged loss. Without the division the gradient doubles."""
    common = TINY + ["method=ft", f"task.data_dir={synthetic_glue}", "trainer.max_steps=1",
                     "optim.max_grad_norm=null", "task.max_train_samples=32"]
    grads: dict[str, list] = {}

    def recorder(key):
        def hook(model, opt):
            opt.register_step_pre_hook(lambda *_: grads.__setitem__(
                key, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
            return opt
        return hook

    big = _loop(compose_cfg(common + ["trainer.batch_size=8"]), tmp_path, optimizer_hook=recorder("big"),
                monkeypatch=monkeypatch)
    acc = _loop(compose_cfg(common + ["trainer.batch_size=4", "trainer.grad_accum=2"]), tmp_path,
                optimizer_hook=recorder("acc"), monkeypatch=monkeypatch)
    assert len(grads["big"]) == len(grads["acc"]) > 10
    import torch

    for g_big, g_acc in zip(grads["big"], grads["acc"]):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-4, atol=1e-6)
    assert acc.losses == pytest.approx(big.losses, rel=1e-5)


def test_best_score_keeps_the_highest(synthetic_glue: Path, tmp_path: Path) -> None:
    from lorafa_repro.tasks.glue import GlueTask

    scores = iter([0.5, 0.9, 0.7])

    class Scripted(GlueTask):
        def evaluate(self, *a, **k):
            return {"score": next(scores), "accuracy": 0.0}

    cfg = compose_cfg(TINY + ["method=lora", f"task.data_dir={synthetic_glue}", "trainer.max_steps=3",
                              "trainer.eval_every=1"])
    out = _loop(cfg, tmp_path, task=Scripted(cfg.task, seed=0))
    assert (out.best_step, out.best["score"], out.final["score"]) == (2, 0.9, 0.7)


def test_mnli_mismatched_score_comes_from_the_mismatched_split(synthetic_glue: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "glue"
    shutil.copytree(synthetic_glue / "MNLI", data / "MNLI")
    mismatched = data / "MNLI" / "dev_mismatched.tsv"
    mismatched.write_text("\n".join(mismatched.read_text().splitlines()[:6]) + "\n")  # 5 rows vs 32 matched
    cfg = compose_cfg(TINY + ["method=lora", "task=glue/mnli", f"task.data_dir={data}", "trainer.max_steps=2"])
    final = run(cfg, tmp_path / "run")["metrics"]["final"]
    rows = [json.loads(x) for x in (tmp_path / "run" / final["predictions_file"]).read_text().splitlines()]
    acc = {}
    for split in ("validation_matched", "validation_mismatched"):
        hits = [r["prediction"] == r["reference"] for r in rows if r["split"] == split]
        acc[split] = sum(hits) / len(hits)
    assert sum(r["split"] == "validation_mismatched" for r in rows) == 5
    assert final["accuracy_matched"] == pytest.approx(acc["validation_matched"])
    assert final["accuracy_mismatched"] == pytest.approx(acc["validation_mismatched"])


def test_result_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the file that lands must read like any other (0666 - umask)."""
    import os

    from lorafa_repro.results import write_json_atomic

    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
