"""Where the engine writes: the workspace (demo worlds, uploads, runs) and the output cache.

``SCD_WORKSPACE`` and ``SCD_CACHE_DIR`` override the defaults under the user's data and cache dirs.
Nothing is ever written outside these two folders.

**Size limit.** The workspace holds at most ``SCD_WORKSPACE_MAX_BYTES`` (default 50 GiB; the output
cache has its own limit, see :mod:`scd_core.outputs.cache`). :func:`enforce_limit` runs after every upload,
extraction and distillation run and deletes the oldest *evictable* entries (by their newest
modification time) until the workspace fits:

- uploaded zips (``sessions/<id>/uploads/<kind>/<file>``) and extracted target sets
  (``sessions/<id>/targets/<sha>``, ``uploads/targets/<sha>``): an extraction is re-created from its
  zip on the next use;
- uploaded teachers (``sessions/<id>/teachers/<name>``) and runs (``sessions/<id>/runs/<run>``,
  ``runs/<run>``).

Demo worlds are never evicted (they are shared and rebuilt only at a cost). An entry is *in use*, and
never evicted, while this process holds it with :func:`hold` (a distillation job holds its target
set and run folder), when it was modified less than ``SCD_WORKSPACE_MIN_AGE_S`` seconds ago (default
600: another process may be writing or reading it), or when the caller asks to ``keep`` it (what it
just wrote). Hidden temporary folders (``.extract-*``, ``.incoming-*``) of crashed processes are
removed once a day old.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import platformdirs

from scd_core.config import settings

APP_NAME = "scd-explorer"
STALE_TMP_S = 24 * 3600.0

LOGGER = logging.getLogger(__name__)
_HELD: Counter[Path] = Counter()
_HELD_LOCK = threading.Lock()
_EVICT_LOCK = threading.Lock()


def workspace_dir() -> Path:
    """Root of uploads, demo worlds and distillation runs (created on demand)."""
    root = settings().workspace or Path(platformdirs.user_data_dir(APP_NAME))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir() -> Path:
    """Root of the teacher-output cache (created on demand)."""
    root = settings().cache_dir or Path(platformdirs.user_cache_dir(APP_NAME))
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> Path:
    """A folder inside the workspace, created on demand."""
    path = workspace_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------
# Size limit with eviction of the oldest entries not in use
# ------------------------------------------------------------------------------------------------


def max_bytes() -> int:
    """The workspace size limit: ``SCD_WORKSPACE_MAX_BYTES`` when set, else 50 GiB."""
    return settings().workspace_max_bytes


def _key(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


@contextlib.contextmanager
def hold(*paths: str | Path | None) -> Iterator[None]:
    """Mark ``paths`` (and everything inside them) as in use by this process: never evicted meanwhile."""
    keys = [_key(p) for p in paths if p]
    with _HELD_LOCK:
        _HELD.update(keys)
    for key in keys:  # a used entry is a young entry: eviction goes by age
        with contextlib.suppress(OSError):
            os.utime(key)
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD.subtract(keys)
            for key in keys:
                if _HELD[key] <= 0:
                    del _HELD[key]


def in_use(path: str | Path) -> bool:
    """Whether ``path`` is held (directly, inside a held folder, or holding a held path)."""
    key = _key(path)
    with _HELD_LOCK:
        held = list(_HELD)
    return any(h == key or key in h.parents or h in key.parents for h in held)


def _tree_stats(path: Path) -> tuple[int, float]:
    """(bytes, newest modification time) of a file or folder tree; links are not followed."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    size, newest = (st.st_size if not path.is_dir() or path.is_symlink() else 0), st.st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    newest = max(newest, st.st_mtime)
                    if name in filenames:
                        size += st.st_size
    return size, newest


def usage_bytes(root: Path | None = None) -> int:
    """Bytes of every file under the workspace (or ``root``)."""
    return _tree_stats(root or workspace_dir())[0]


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def evictable_entries(root: Path | None = None) -> list[Path]:
    """Uploads, extractions, uploaded teachers and runs: the units eviction may delete (see module doc)."""
    root = root or workspace_dir()
    groups = [root / "runs", *(_children(root / "uploads"))]
    for session in _children(root / "sessions"):
        groups += [session / "targets", session / "teachers", session / "runs", *_children(session / "uploads")]
    return [entry for group in groups if group.is_dir() for entry in _children(group)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def evict_oldest(candidates: Iterable[tuple[float, int, Path]], total: int, limit: int) -> list[Path]:
    """Least-recently-used eviction: remove ``(last use, bytes, path)`` candidates, oldest first, until
    ``total`` bytes (the whole store, candidates or not) fit within ``limit``. Returns the removed paths."""
    removed: list[Path] = []
    for _, size, path in sorted(candidates, key=lambda c: (c[0], str(c[2]))):
        if total <= limit:
            break
        _remove(path)
        total -= size
        removed.append(path)
        LOGGER.info("over %d bytes: removed %s (%d bytes)", limit, path, size)
    return removed


def enforce_limit(limit: int | None = None, *, keep: Iterable[str | Path | None] = (),
                  min_age_s: float | None = None, now: float | None = None) -> list[Path]:
    """Delete the oldest evictable entries not in use until the workspace holds at most ``limit`` bytes.

    ``limit`` defaults to :func:`max_bytes`, ``min_age_s`` to ``SCD_WORKSPACE_MIN_AGE_S`` (600 s);
    ``keep`` entries (and what is inside them) are never removed. Stale hidden temporary folders are
    removed whatever the size. Returns the removed entries, oldest first. Never raises for I/O errors.
    """
    limit = max_bytes() if limit is None else int(limit)
    min_age = settings().workspace_min_age_s if min_age_s is None else float(min_age_s)
    now = time.time() if now is None else now
    kept = [_key(p) for p in keep if p]
    removed: list[Path] = []
    with _EVICT_LOCK:
        try:
            candidates = []
            for entry in evictable_entries():
                size, newest = _tree_stats(entry)
                if entry.name.startswith("."):  # a temporary folder: in flight, or left by a crash
                    if now - newest > STALE_TMP_S:
                        _remove(entry)
                    continue
                key = _key(entry)
                if any(k == key or key in k.parents or k in key.parents for k in kept):
                    continue
                if in_use(entry) or now - newest < min_age:
                    continue
                candidates.append((newest, size, entry))
            removed = evict_oldest(candidates, usage_bytes(), limit)
        except OSError as exc:  # pragma: no cover - eviction is best effort
            LOGGER.warning("workspace eviction failed: %s", exc)
    return removed
