"""Content fingerprints (sha256) for files, memoised by (path, inode, size, mtime) so re-ranks stay cheap."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_FILE_MEMO: dict[tuple[str, int, int, int], str] = {}
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes; recomputed whenever its size or modification time changes."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _FILE_MEMO.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
        digest = _FILE_MEMO[key] = h.hexdigest()
    return digest


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form (sorted keys, tuples as lists)."""
    return bytes_sha256(json.dumps(obj, sort_keys=True, default=str).encode())


def combine(*parts: str) -> str:
    """One fingerprint from several: order matters."""
    return bytes_sha256("\x1f".join(parts).encode())
