"""Safe extraction of uploaded zip archives (target sets and teacher folders).

Archives are hostile until proven otherwise: entries with absolute paths, ``..`` components or
symbolic links, nested archives, and sizes, counts or compression ratios beyond the limits are
refused before anything is written. Extraction goes to a temporary folder inside ``dest``'s parent
and is renamed into place only when complete, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import lzma
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ScdError

ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"})
_IGNORED_PARTS = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db"})


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds checked before extraction (decompression-bomb guards)."""

    max_total_bytes: int = 2 << 30
    max_files: int = 100_000
    max_ratio: float = 200.0  # uncompressed / compressed, per entry of more than 1 MiB


def _entry_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:  # no UTF-8 flag: zipfile decoded as cp437; try UTF-8 first
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return name


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(p in _IGNORED_PARTS or p.startswith("._") for p in parts)


def safe_extract_zip(archive: str | Path, dest: str | Path, limits: ArchiveLimits | None = None,
                     error: type[ScdError] = ScdError) -> Path:
    """Extract ``archive`` into ``dest`` (which must not exist yet) after validating every entry."""
    limits = limits or ArchiveLimits()
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise error(f"{archive.name}: not a valid zip archive ({exc})") from exc
    with zf:
        entries: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        for info in zf.infolist():
            name = _entry_name(info)
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
                raise error(f"{archive.name}: entry {name!r} has an absolute path")
            rel = PurePosixPath(name.replace("\\", "/"))
            if any(part == ".." for part in rel.parts):
                raise error(f"{archive.name}: entry {name!r} escapes the archive (path traversal)")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise error(f"{archive.name}: entry {name!r} is a symbolic link")
            if info.is_dir() or _is_ignored(rel.parts):
                continue
            if info.flag_bits & 0x1:
                raise error(f"{archive.name}: entry {name!r} is encrypted; upload an archive without a password")
            if rel.suffix.lower() in ARCHIVE_SUFFIXES:
                raise error(f"{archive.name}: entry {name!r} is a nested archive; unpack it first")
            if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise error(f"{archive.name}: entry {name!r} has a suspicious compression ratio "
                            f"({info.file_size / max(info.compress_size, 1):.0f}:1)")
            total += info.file_size
            entries.append((info, rel))
            if len(entries) > limits.max_files:
                raise error(f"{archive.name}: more than {limits.max_files} files")
            if total > limits.max_total_bytes:
                raise error(f"{archive.name}: uncompressed size exceeds {limits.max_total_bytes} bytes")
        if not entries:
            raise error(f"{archive.name}: the archive holds no files")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            for info, rel in entries:
                target = tmp.joinpath(*rel.parts)
                if tmp.resolve() not in target.resolve().parents:
                    raise error(f"{archive.name}: entry {rel} escapes the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > info.file_size:  # the header lied about the size
                            raise error(f"{archive.name}: entry {rel} is larger than declared")
                        out.write(block)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
            raise error(f"{archive.name}: corrupt or unsupported archive ({exc})") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def single_top_folder(root: Path, keep: Callable[[Path], bool] | None = None) -> Path:
    """Descend through folders that are the only entry of their parent (``data.zip/data/...``).

    ``keep(child)`` true stops the descent at ``root`` (e.g. the only child is a class or split folder).
    """
    while True:
        children = [c for c in root.iterdir() if not _is_ignored((c.name,))]
        if len(children) == 1 and children[0].is_dir() and not (keep and keep(children[0])):
            root = children[0]
        else:
            return root
