"""Shared fixtures: every test gets its own cache and workspace, and runs offline on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("scd_home")
    monkeypatch.setenv("SCD_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("SCD_WORKSPACE", str(root / "workspace"))
    monkeypatch.setenv("SCD_DEMO_SIZE", "small")
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
