"""Optimizers by name (a table, not an if-chain) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from scd_core.distill.config import DistillConfig


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable[[Iterable[torch.nn.Parameter], float, float], torch.optim.Optimizer]
    lr: float  # default learning rate
    weight_decay: float  # default weight decay


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
        lr=0.05, weight_decay=5e-4),
    "adamw": OptimizerEntry(lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
                            lr=2e-3, weight_decay=0.05),
}


def make_optimizer(model: torch.nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the model's parameters, with its default lr / weight decay unless set."""
    entry = OPTIMIZERS[cfg.optimizer]
    lr = cfg.lr if cfg.lr is not None else entry.lr
    wd = cfg.weight_decay if cfg.weight_decay is not None else entry.weight_decay
    return entry.build(model.parameters(), lr, wd)


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    r"""Linear warm-up over the first 5% of the steps, then cosine decay to 0:
    :math:`\eta_s = \eta \min(1, (s+1)/w) \cdot \tfrac12 (1 + \cos(\pi s / S))`."""
    warmup = max(1, total_steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
