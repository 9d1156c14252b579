"""lorafa-repro: reproduction suite for LoRA-FA (arXiv 2308.03303).

LoRA-FA lives in ``lorafa_repro/methods/lora_fa.py``; every method is registered in
``lorafa_repro/methods/__init__.py``. Python API: ``lorafa_repro.apply_method(model, "lora_fa", rank=8)``.
"""

from __future__ import annotations

from typing import Any

from lorafa_repro.quiet import quiet_known_warnings

# Before anything imports bitsandbytes, which logs one of these at import time (quiet.py says what each one is).
quiet_known_warnings()

__version__ = "0.1.0"

__all__ = ["METHODS", "__version__", "apply_method"]


def __getattr__(name: str) -> Any:  # lazy: `import lorafa_repro.results` stays light
    if name in ("apply_method", "METHODS"):
        from lorafa_repro import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'lorafa_repro' has no attribute {name!r}")
