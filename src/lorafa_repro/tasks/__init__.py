"""Task registry: a task family (glue, ...) knows its task names, checks local data cheaply, and
builds a :class:`~lorafa_repro.tasks.base.Task` (datasets, collation, evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafa_repro.tasks.base import Task
from lorafa_repro.tasks.glue_data import DataNotFoundError


def known_tasks(family: str) -> list[str]:
    if family == "glue":
        from lorafa_repro.tasks.glue_data import GLUE_TASKS

        return list(GLUE_TASKS)
    return []


def check_task_data(family: str, name: str, data_dir: Path) -> None:
    """Raise a ConfigError naming the fix when a local data folder lacks what the task reads."""
    from lorafa_repro.schema import ConfigError

    if family == "glue":
        from lorafa_repro.tasks.glue_data import GLUE_TASKS, DataNotFoundError, check_local_glue

        try:
            check_local_glue(data_dir, name, ("train", *GLUE_TASKS[name].eval_splits))
        except DataNotFoundError as e:
            raise ConfigError(str(e)) from None


def build_task(task_cfg: Any, *, seed: int = 0) -> Task:
    if task_cfg.family == "glue":
        from lorafa_repro.tasks.glue import GlueTask

        return GlueTask(task_cfg, seed=seed)
    raise ValueError(f"unknown task family {task_cfg.family!r}")


__all__ = ["DataNotFoundError", "Task", "build_task", "check_task_data", "known_tasks"]
