"""Distillation: losses behind one interface, the trainer, export (``distill``, ``DistillConfig``)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # imported on first use: the trainer pulls in timm and torch
    if name in ("distill", "DistillConfig"):
        from scd_core.distill import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'scd_core.distill' has no attribute {name!r}")
