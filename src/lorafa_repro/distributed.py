"""Data-parallel training on PyTorch's own engine: ``torchrun --nproc-per-node N -m lorafa_repro.train ...``
(or ``accelerate launch``) sets RANK/WORLD_SIZE; :func:`init_from_env` starts the process group (NCCL on
GPUs, gloo on CPU) and :func:`wrap` puts the model in DDP (``trainer.parallel=ddp``) or FSDP
(``trainer.parallel=fsdp``: parameters, gradients and optimizer state sharded over the ranks). One process
(no WORLD_SIZE) is the plain single-device path; every helper here is then a no-op.

A rank that raises on its own (an error, an OOM: not the collective stops ``Diverged`` / ``Interrupted``)
must not leave the others blocked in a collective until the gloo/NCCL timeout: it records its reason with
:func:`share_failure` in ``<run dir>/rank_failure.json`` and calls :func:`abort`; a peer blocked in a
collective then fails at once, finds that record and reports the failing rank's reason."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as td
from torch import nn

from lorafa_repro.results import write_json_atomic

FAILURE_FILE = "rank_failure.json"


def init_from_env(device_type: str) -> bool:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1; True if distributed."""
    if td.is_available() and td.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    td.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    if td.is_available() and td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def launched_rank_and_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as torchrun set them, before the process group starts (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """``cuda`` -> this rank's GPU (LOCAL_RANK) under torchrun."""
    if device.type == "cuda" and device.index is None and rank_and_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: nn.Module, device: torch.device, parallel: str = "ddp") -> nn.Module:
    """The module the training step calls: DDP (or FSDP) around ``model`` when distributed, else ``model``."""
    if rank_and_world()[1] == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (children of the first ModuleList), each an FSDP unit."""
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList):
            return list(mod)
    return []


def mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar over the ranks (a copy; the value itself when not distributed)."""
    if rank_and_world()[1] == 1:
        return value
    out = value.detach().clone()
    td.all_reduce(out, op=td.ReduceOp.SUM)
    return out / td.get_world_size()


def any_flag(flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. one rank caught SIGTERM)."""
    if rank_and_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)])
    if td.get_backend() == "nccl":
        t = t.cuda()
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    td.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        td.barrier()


def clear_failure(run_dir: Path) -> None:
    """Rank 0, at the start of a run (then :func:`barrier`): forget a failure record of an earlier attempt."""
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)


def share_failure(run_dir: Path, status: str, error: str) -> dict[str, Any]:
    """After an exception on this rank (no collective from here on: the group may be broken), the record
    ``{rank, status, error}`` of the rank that failed first: another rank's if one is on disk (this rank only
    saw the broken collective), else this rank's own, written for the others."""
    path = run_dir / FAILURE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"rank": rank_and_world()[0], "status": status, "error": error}
        write_json_atomic(path, record)
        return record


def abort() -> None:
    """Tear down this process's group: peers waiting on it in a collective get an error now, not at the
    timeout (gloo: the connection closes; NCCL: the communicators are aborted)."""
    if not (td.is_available() and td.is_initialized()):
        return
    if td.get_backend() == "nccl" and hasattr(td.distributed_c10d, "_abort_process_group"):
        td.distributed_c10d._abort_process_group()  # destroy_process_group can wait on pending NCCL work
    else:
        td.destroy_process_group()
