"""The shared tiny helpers: JSON-safe floats, float64 arrays of any tensor, file-name slugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scd_core.utils import as_float64, finite_or_none, slug


def test_finite_or_none():
    assert finite_or_none(np.float32(0.5)) == 0.5 and type(finite_or_none(np.float32(0.5))) is float
    assert finite_or_none(float("nan")) is None and finite_or_none(-np.inf) is None


def test_as_float64_from_any_tensor_and_checks():
    out = as_float64(torch.tensor([[1.5, 2.0]], dtype=torch.bfloat16))
    assert out.dtype == np.float64 and out.tolist() == [[1.5, 2.0]]
    assert as_float64([1, 2]).dtype == np.float64
    with pytest.raises(ValueError, match="joint must have 2 dimension"):
        as_float64(np.ones(3), name="joint", ndim=2)
    with pytest.raises(ValueError, match="joint contains NaN"):
        as_float64(np.array([[np.nan]]), name="joint", ndim=2, finite=True)


def test_slug():
    assert slug("red circle") == "red-circle" and slug("letter A (bold)") == "letter-a-bold"
    assert slug("hf-hub:timm/resnet18.a1_in1k") == "hf-hub-timm-resnet18-a1-in1k"
    assert slug("Ωmega  δ") == "ωmega-δ"
    assert slug("//", default="run") == "run" and slug("x" * 100, 40) == "x" * 40
