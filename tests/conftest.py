"""Shared fixtures: the suite runs offline on the CPU, inside its own workspace and cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """One workspace for the session (demo worlds are built once), small demo worlds, none built ahead."""
    root = tmp_path_factory.mktemp("scd_home")
    saved = {k: os.environ.get(k) for k in ("SCD_CACHE_DIR", "SCD_WORKSPACE", "SCD_DEMO_SIZE", "SCD_DEMO_PREBUILD")}
    os.environ["SCD_CACHE_DIR"] = str(root / "cache")
    os.environ["SCD_WORKSPACE"] = str(root / "workspace")
    os.environ["SCD_DEMO_SIZE"] = "small"
    os.environ["SCD_DEMO_PREBUILD"] = "0"  # no background builds competing with the tests (one test turns it on)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, for tests that count cache hits and misses."""
    monkeypatch.setenv("SCD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
