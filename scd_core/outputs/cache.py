"""On-disk cache of teacher outputs, keyed by teacher, target-subset, transform and temperature.

An entry is a folder ``<cache>/outputs/<key>/`` holding ``stats.npz`` (no pickles), ``logits.npy``
(float16, memory-mapped on read) and ``meta.json`` with sha256 checksums of both arrays files.
Entries are written to a temporary folder and renamed into place, so readers never see half an
entry; a checksum mismatch or unreadable entry is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from scd_core.config import settings
from scd_core.fingerprint import combine, file_sha256
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.runtime.workspace import cache_dir, evict_oldest

CACHE_VERSION = "outputs-v2"  # v2: images are turned upright by their EXIF orientation
_ARRAYS = ("labels", "joint", "hard_joint", "class_feature_sums", "features", "top_classes", "top_probs")
STALE_TMP_S = 24 * 3600.0


def output_key(teacher_fp: str, items_fp: str, transform_fp: str, temperature: float) -> str:
    return combine(CACHE_VERSION, teacher_fp, items_fp, transform_fp, repr(float(temperature)))[:40]


def _root() -> Path:
    root = cache_dir() / "outputs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def entry_dir(key: str) -> Path:
    return _root() / key


def new_entry_dir() -> Path:
    """A temporary folder inside the cache where a new entry is assembled."""
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=_root()))


def save_entry(key: str, tmp: Path, outputs: TeacherOutputs) -> TeacherOutputs:
    """Write ``outputs`` (whose logits already live in ``tmp/logits.npy``) and publish the entry."""
    arrays = {name: getattr(outputs, name) for name in _ARRAYS}
    if outputs.head_weight is not None:
        arrays["head_weight"] = outputs.head_weight
    np.savez(tmp / "stats.npz", **arrays)
    meta = {
        "teacher": outputs.teacher,
        "teacher_labels": outputs.teacher_labels,
        "target_labels": outputs.target_labels,
        "image_ids": outputs.image_ids,
        "temperature": outputs.temperature,
        "timing": outputs.timing,
        "created": time.time(),
        "checksums": {name: file_sha256(tmp / name) for name in ("stats.npz", "logits.npy")},
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    final = entry_dir(key)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process published the same entry first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    evict(keep=key)  # keep the cache under its size limit, oldest entries first
    published = load_entry(key, verify=False)
    if published is None:
        return outputs
    published.timing = dict(outputs.timing)  # freshly computed, not a cache hit
    return published


def load_entry(key: str, verify: bool = True) -> TeacherOutputs | None:
    """The cached outputs for ``key``, or None when absent or corrupt (a corrupt entry is removed)."""
    folder = entry_dir(key)
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if verify:
            for name in ("stats.npz", "logits.npy"):  # both, whatever meta.json claims
                if file_sha256(folder / name) != meta["checksums"][name]:
                    raise ValueError(f"checksum mismatch in {name}")
        with np.load(folder / "stats.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        logits = np.load(folder / "logits.npy", mmap_mode="r", allow_pickle=False)
        _check_shapes(meta, arrays, logits)
        os.utime(folder)  # least-recently-used eviction looks at this
        return TeacherOutputs(
            teacher=meta["teacher"], teacher_labels=meta["teacher_labels"], target_labels=meta["target_labels"],
            labels=arrays["labels"], joint=arrays["joint"], hard_joint=arrays["hard_joint"],
            class_feature_sums=arrays["class_feature_sums"], features=arrays["features"],
            top_classes=arrays["top_classes"], top_probs=arrays["top_probs"], logits=logits,
            head_weight=arrays.get("head_weight"), temperature=meta["temperature"],
            image_ids=meta["image_ids"], timing=dict(meta.get("timing", {}), cached=True), source_dir=folder,
        )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _check_shapes(meta: dict, arrays: dict[str, np.ndarray], logits: np.ndarray) -> None:
    """An entry's arrays must agree with each other and with its labels (else it is not trusted)."""
    n, k_t, k_s = arrays["labels"].shape[0], len(meta["teacher_labels"]), len(meta["target_labels"])
    checks = {
        "labels": arrays["labels"].ndim == 1 and len(meta["image_ids"]) in (0, n),
        "logits": logits.shape == (n, k_t),
        "joint": arrays["joint"].shape == (k_t, k_s) and arrays["hard_joint"].shape == (k_t, k_s),
        "features": arrays["features"].shape[0] == n and arrays["class_feature_sums"].shape[0] == k_s,
        "top": arrays["top_classes"].shape[0] == n and arrays["top_probs"].shape[0] == n,
        "finite": bool(np.isfinite(arrays["joint"]).all()),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"inconsistent cache entry: {', '.join(bad)}")


def cache_size_bytes() -> int:
    return sum(f.stat().st_size for f in _root().rglob("*") if f.is_file())


def evict(max_bytes: int | None = None, keep: str | None = None) -> list[str]:
    """Delete least-recently-used entries until the cache holds at most ``max_bytes``.

    The default comes from ``SCD_CACHE_MAX_BYTES`` (20 GiB when unset); the entry ``keep`` (the one
    just written) is never removed. Returns the removed keys.
    """
    limit = max_bytes if max_bytes is not None else settings().cache_max_bytes
    entries = []
    now = time.time()
    for folder in list(_root().iterdir()):
        if folder.name.startswith(".tmp-") and folder.is_dir():  # left by a crashed writer after a day
            try:
                if now - folder.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass
            continue
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                entries.append((folder.stat().st_mtime, size, folder))
            except FileNotFoundError:  # removed meanwhile by another process
                continue
    total = sum(e[1] for e in entries)
    return [path.name for path in evict_oldest([e for e in entries if e[2].name != keep], total, limit)]


def save_arrays(folder: Path, **arrays: np.ndarray) -> None:
    """Publish a small entry of named arrays (``arrays.npz`` + checksum), atomically."""
    tmp = new_entry_dir()
    try:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps({"checksums": {"arrays.npz": file_sha256(tmp / "arrays.npz")},
                                                   "created": time.time()}))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_arrays(folder: Path) -> dict[str, np.ndarray] | None:
    """Arrays saved by :func:`save_arrays`, or None when absent or corrupt (then removed)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if file_sha256(folder / "arrays.npz") != meta["checksums"]["arrays.npz"]:  # KeyError: not trusted
            raise ValueError("checksum mismatch")
        with np.load(folder / "arrays.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        os.utime(folder)
        return arrays
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        return None
