"""Task registry: a task family (glue, wmt16, instruct, ...) is one module under ``tasks/`` that knows its task
names, checks local data cheaply, and builds a :class:`~lorafa_repro.tasks.base.Task` (datasets, collation,
evaluation).

A family module provides three names, and gets one line in :data:`FAMILIES`:
  ``task_names() -> list[str]``; ``check_local_data(name, data_dir, task_cfg)`` raising DataNotFoundError;
  ``build(task_cfg, seed) -> Task``.
Optionally ``check_config(task_cfg)`` raising ValueError for family-specific values (schema.validate calls it),
and ``max_tokens(task_cfg)``: the most tokens one sequence fed to the model holds (default ``max_seq_len``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from lorafa_repro.errors import ConfigError
from lorafa_repro.tasks.base import Task
from lorafa_repro.tasks.glue_data import DataNotFoundError

#: family -> module (imported on first use, so a family's heavy imports cost nothing to the others)
FAMILIES: dict[str, str] = {
    "glue": "lorafa_repro.tasks.glue",
    "instruct": "lorafa_repro.tasks.instruct",
    "lm": "lorafa_repro.tasks.lm",
    "wmt16": "lorafa_repro.tasks.wmt16",
}

#: the model architectures (ModelConfig.arch) each family trains
FAMILY_ARCHS: dict[str, tuple[str, ...]] = {
    "glue": ("encoder",),
    "instruct": ("decoder",),
    "lm": ("decoder",),
    "wmt16": ("encoder_decoder", "decoder"),
}


def _family(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


def known_tasks(family: str) -> list[str]:
    return list(_family(family).task_names()) if family in FAMILIES else []


def check_task_data(family: str, name: str, data_dir: Path, task_cfg: Any = None) -> None:
    """Raise a ConfigError naming the fix when a local data folder lacks what the task reads."""

    try:
        _family(family).check_local_data(name, data_dir, task_cfg)
    except DataNotFoundError as e:
        raise ConfigError(str(e)) from None


def check_task_config(family: str, task_cfg: Any) -> None:
    """The family's own value checks (``check_config``, when it has one), as a ConfigError."""

    check = getattr(_family(family), "check_config", None)
    if check is not None:
        try:
            check(task_cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def max_tokens(family: str, task_cfg: Any) -> int:
    """The most tokens one sequence the task feeds the model holds (checked against its position table)."""
    fn = getattr(_family(family), "max_tokens", None)
    return int(fn(task_cfg)) if fn is not None else int(task_cfg.max_seq_len)


def build_task(task_cfg: Any, *, seed: int = 0) -> Task:
    return _family(task_cfg.family).build(task_cfg, seed=seed)


__all__ = ["DataNotFoundError", "FAMILIES", "FAMILY_ARCHS", "Task", "build_task", "check_task_config",
           "check_task_data", "known_tasks", "max_tokens"]
