"""Tiny helpers shared across the engine: JSON-safe floats, float64 arrays, file-name slugs, folder swaps."""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def finite_or_none(x: Any) -> float | None:
    """``float(x)``, or None when it is NaN, infinite or not a number at all (JSON has no NaN)."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def as_float64(x: Any, *, name: str = "array", ndim: int | None = None, finite: bool = False) -> np.ndarray:
    """A float64 numpy array of a numpy array or a torch tensor of any dtype and device (bfloat16 too).

    With ``ndim`` the number of dimensions is checked, with ``finite`` that no entry is NaN or infinite;
    both raise ``ValueError`` naming ``name``.
    """
    if isinstance(x, torch.Tensor):  # bfloat16 has no numpy equivalent: convert in torch first
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def slug(text: str, max_len: int | None = None, default: str = "item") -> str:
    """``text`` as part of a file name: lower case, every run of characters that are not letters or digits
    becomes one ``-`` (none at either end); at most ``max_len`` characters; ``default`` when nothing is left."""
    words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
    return "-".join(words)[:max_len].strip("-") or default


@contextlib.contextmanager
def replacing_folder(final: Path, tag: str = "tmp") -> Iterator[Path]:
    """A temporary sibling folder of ``final`` (``.<name>.<tag>-*``) to fill; it becomes ``final`` in one
    rename when the block ends, replacing any folder there (moved aside first as ``.<name>.old-*``), and
    is removed when the block fails: readers see ``final`` complete or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(old / "previous")
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
