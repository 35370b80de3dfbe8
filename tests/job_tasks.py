"""Module-level job functions for runtime tests (worker processes import them by name)."""

from __future__ import annotations

import time


def steps(report, cancel, n: int = 5, delay: float = 0.05) -> dict:
    """``n`` short "epochs"; stops early when cancelled."""
    done = 0
    for epoch in range(1, n + 1):
        if cancel.is_set():
            break
        time.sleep(delay)
        done = epoch
        report({"phase": "epoch", "epoch": epoch, "epochs": n, "train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch,
                "step": epoch, "steps": n})
    return {"epochs_done": done, "started": time.time()}


def fail(report, cancel) -> dict:
    raise ValueError("this job is refused on purpose")
