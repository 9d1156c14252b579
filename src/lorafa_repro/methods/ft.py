"""Full fine-tuning: every weight is trained."""

from __future__ import annotations

from torch import nn


def apply_ft(model: nn.Module, **_: object) -> nn.Module:
    """Make every parameter trainable; adapter keys (rank, alpha, ...) are ignored."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model
