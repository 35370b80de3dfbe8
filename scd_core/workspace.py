"""Where the engine writes: the workspace (demo worlds, uploads, runs) and the output cache.

``SCD_WORKSPACE`` and ``SCD_CACHE_DIR`` override the defaults under the user's data and cache dirs.
Nothing is ever written outside these two folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "scd-explorer"


def workspace_dir() -> Path:
    """Root of uploads, demo worlds and distillation runs (created on demand)."""
    root = Path(os.environ.get("SCD_WORKSPACE") or platformdirs.user_data_dir(APP_NAME))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir() -> Path:
    """Root of the teacher-output cache (created on demand)."""
    root = Path(os.environ.get("SCD_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> Path:
    """A folder inside the workspace, created on demand."""
    path = workspace_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
