"""Checkpoints of one training run: the trainable weights only (a LoRA-FA checkpoint holds B and the head,
not the frozen base), optimizer, scheduler, grad scaler, every RNG state, the data position and the loop's
bookkeeping. Written through temp + rename under ``<run dir>/checkpoints/step_<N>.pt``; the last K are kept.

Checked on both ends: a new file must load again (zip archive, pickle, the keys below) before it replaces the
temp name, and its size and sha256 go to ``step_<N>.pt.sha256`` beside it; :func:`newest_good_checkpoint` loads
the newest checkpoint whose bytes match that record and whose contents load, naming the ones it skipped.

An FSDP model (sharded DTensor parameters) goes through PyTorch's own ``torch.distributed.checkpoint.state_dict``
API with full, CPU-offloaded state dicts: the file holds whole tensors keyed by parameter name (model and
optimizer), exactly what one process would hold, and loading shards them again on every rank. Gathering is a
collective there: every rank calls :func:`trainable_state` / :func:`optimizer_state` (rank 0 gets the tensors)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lorafa_repro.results import atomic_path, write_json_atomic

CKPT_DIR = "checkpoints"
DIGEST_SUFFIX = ".sha256"
#: What every checkpoint holds (the run adds its config).
REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "loop")


def is_sharded(model: nn.Module) -> bool:
    """True for an FSDP(2) model, whose parameters are DTensor shards."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_options(**kw: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on the CPU (sharded model: collective, empty on ranks > 0)."""
    want = [n for n, p in model.named_parameters() if p.requires_grad]
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=True))
        return {n: full[n] for n in want if n in full}
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu().clone() for n in want}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    if set(state) != want:
        raise ValueError(f"checkpoint holds other trainable weights than the model "
                         f"(missing {sorted(want - set(state))[:3]}, extra {sorted(set(state) - want)[:3]})")
    if is_sharded(model):  # every rank holds the whole tensors; each keeps its shard
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_options(strict=False))
        return
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()``; for a sharded model the full state keyed by parameter name (collective,
    empty on ranks > 0)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_full_options())
        return
    optimizer.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted((Path(run_dir) / CKPT_DIR).glob("step_*.pt"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    paths = checkpoint_paths(run_dir)
    return paths[-1] if paths else None


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _check_contents(state: Any, step: int) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ValueError(f"lacks the keys {missing}")
    if state["step"] != step:
        raise ValueError(f"holds step {state['step']}, its name says {step}")


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], *, keep: int) -> Path:
    """Write ``state`` (with ``state["step"]``) through temp + rename, after loading the temp file back
    (memory-mapped: cheap) and recording its size and sha256; delete all but the newest ``keep``."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        _check_contents(torch.load(tmp, map_location="cpu", weights_only=False, mmap=True), state["step"])
        write_json_atomic(_digest_path(path), _digest(tmp))
    for old in checkpoint_paths(run_dir)[: -max(keep, 1)]:
        old.unlink(missing_ok=True)
        _digest_path(old).unlink(missing_ok=True)
    return path


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint after checking it: its size and sha256 against the record written with it, the zip
    archive, the keys and the step. Raises ValueError saying what is wrong."""
    path = Path(path)
    try:
        record = json.loads(_digest_path(path).read_text())
        written, sha = int(record["bytes"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"no readable size/sha256 record {_digest_path(path).name} ({type(e).__name__})") from None
    if path.stat().st_size != written:
        raise ValueError(f"{path.stat().st_size} bytes, {written} were written")
    if _digest(path)["sha256"] != sha:
        raise ValueError("its sha256 differs from the one recorded when it was written")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable archive or pickle
        raise ValueError(f"cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    _check_contents(state, int(path.stem.split("_")[1]))
    return state


def newest_good_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any] | None, Path | None, list[tuple[Path, str]]]:
    """``(state, path, skipped)``: the newest checkpoint that passes :func:`load_checkpoint` (None, None when
    none does) and the newer ones that failed, each with its reason."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            return load_checkpoint(path), path, skipped
        except (OSError, ValueError) as e:
            skipped.append((path, str(e)))
    return None, None, skipped
