"""Exceptions shared across the package (a leaf module: it imports nothing of the suite, so any module can
raise these without an import circle)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A value a user can fix with an override; the message says which one."""


__all__ = ["ConfigError"]
