"""Safe extraction of uploaded zip archives (target sets and teacher folders).

Archives are hostile until proven otherwise. Refused before anything is written, each with a message
naming the archive and the entry: absolute paths (``/x``, ``\\x``, ``C:x``), ``..`` components (path
traversal), symbolic links, encrypted entries, duplicate entries, nested archives (by suffix, and by
content when extracting: zip, gzip, bzip2, xz, zstd, 7z, rar and tar signatures), and decompression
bombs: more files, more uncompressed bytes, or a higher compression ratio (per entry over 1 MiB,
and for the whole archive once it expands past 16 MiB) than :class:`ArchiveLimits` allows. The
limits come from ``SCD_ARCHIVE_MAX_BYTES``, ``SCD_ARCHIVE_MAX_FILES`` and ``SCD_ARCHIVE_MAX_RATIO``
when set. Entry headers that lie about their size are caught while extracting.

Extraction goes to a temporary folder inside ``dest``'s parent and is renamed into place only when
complete, so a failed upload leaves nothing behind and readers never see half an archive. Empty
folders in the archive are kept (so that an empty class folder is reported, not silently dropped).
"""

from __future__ import annotations

import contextlib
import errno
import lzma
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from scd_core.config import DEFAULTS, settings
from scd_core.errors import ScdError
from scd_core.progress import ProgressFn, emit

ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz4",
                              ".lzma", ".tbz2", ".txz", ".cab", ".jar", ".war", ".iso"})
_IGNORED_PARTS = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})  # written by file browsers
# Leading bytes of archive formats; never the start of a supported image, JSON or text file.
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00",
                  b"\x28\xb5\x2f\xfd", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")
# Not sniffed: safetensors headers may start with any bytes, and torch checkpoints and numpy .npz files
# are zips by design (a teacher upload refuses those by suffix, with a message saying why).
_NO_SNIFF_SUFFIXES = frozenset({".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz"})
_WHOLE_RATIO_MIN_BYTES = 16 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds checked before extraction (decompression-bomb guards)."""

    max_total_bytes: int = DEFAULTS.archive_max_bytes
    max_files: int = DEFAULTS.archive_max_files
    # uncompressed / compressed, per entry of more than 1 MiB and for the whole archive
    max_ratio: float = DEFAULTS.archive_max_ratio

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        """The limits configured by ``SCD_ARCHIVE_MAX_BYTES`` / ``_MAX_FILES`` / ``_MAX_RATIO``."""
        config = settings()
        return cls(config.archive_max_bytes, config.archive_max_files, config.archive_max_ratio)


def _entry_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:  # no UTF-8 flag: zipfile decoded as cp437; try UTF-8 first
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return name


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(p in _IGNORED_PARTS or p.startswith("._") for p in parts)


def _looks_like_archive(head: bytes) -> bool:
    return head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def safe_extract_zip(archive: str | Path, dest: str | Path, limits: ArchiveLimits | None = None,
                     error: type[ScdError] = ScdError, progress: ProgressFn | None = None) -> Path:
    """Extract ``archive`` into ``dest`` after validating every entry; returns ``dest``.

    ``dest`` is published atomically (a rename). When ``dest`` appears meanwhile (another session or
    process extracting the same content-addressed archive), the existing folder is kept and ours is
    discarded. ``limits`` default to :meth:`ArchiveLimits.from_env`. ``progress`` hears the fraction of
    the uncompressed bytes written (about a hundred events for a large archive).
    """
    limits = limits or ArchiveLimits.from_env()
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise error(f"{archive.name}: not a valid zip archive ({exc})") from exc
    with zf:
        entries: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        folders: list[PurePosixPath] = []
        seen: set[PurePosixPath] = set()
        total = 0
        for info in zf.infolist():
            name = _entry_name(info)
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
                raise error(f"{archive.name}: entry {name!r} has an absolute path")
            if "\x00" in name:
                raise error(f"{archive.name}: entry {name!r} has a NUL character in its name")
            rel = PurePosixPath(name.replace("\\", "/"))
            if any(part == ".." for part in rel.parts):
                raise error(f"{archive.name}: entry {name!r} escapes the archive (path traversal)")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise error(f"{archive.name}: entry {name!r} is a symbolic link")
            if _is_ignored(rel.parts) or not rel.parts:
                continue
            if info.is_dir():
                folders.append(rel)
                continue
            if info.flag_bits & 0x1:
                raise error(f"{archive.name}: entry {name!r} is encrypted; upload an archive without a password")
            if rel in seen:
                raise error(f"{archive.name}: entry {name!r} appears twice in the archive")
            seen.add(rel)
            if rel.suffix.lower() in ARCHIVE_SUFFIXES:
                raise error(f"{archive.name}: entry {name!r} is a nested archive; unpack it first")
            if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise error(f"{archive.name}: entry {name!r} has a suspicious compression ratio "
                            f"({info.file_size / max(info.compress_size, 1):.0f}:1, limit {limits.max_ratio:.0f}:1;"
                            " decompression bomb?)")
            total += info.file_size
            entries.append((info, rel))
            if len(entries) > limits.max_files:
                raise error(f"{archive.name}: more than {limits.max_files} files (entry {name!r} is one too many)")
            if total > limits.max_total_bytes:
                raise error(f"{archive.name}: uncompressed size exceeds {limits.max_total_bytes} bytes "
                            f"(reached at entry {name!r}; decompression bomb?)")
        if not entries:
            raise error(f"{archive.name}: the archive holds no files")
        packed = max(archive.stat().st_size, 1)
        if total > _WHOLE_RATIO_MIN_BYTES and total > limits.max_ratio * packed:
            raise error(f"{archive.name}: expands from {packed} to {total} bytes ({total / packed:.0f}:1, limit "
                        f"{limits.max_ratio:.0f}:1; decompression bomb?)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        current = ""
        done_bytes, step, next_report = 0, max(total // 100, 1), 0
        emit(progress, f"extracting {len(entries)} files", 0.0, "extract")
        try:
            root = tmp.resolve()
            for rel in folders:
                current = str(rel)
                folder = tmp.joinpath(*rel.parts)
                if root != folder.resolve() and root not in folder.resolve().parents:
                    raise error(f"{archive.name}: entry {rel} escapes the archive")
                folder.mkdir(parents=True, exist_ok=True)
            for info, rel in entries:
                current = str(rel)
                target = tmp.joinpath(*rel.parts)
                if root not in target.resolve().parents:
                    raise error(f"{archive.name}: entry {rel} escapes the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                sniff = rel.suffix.lower() not in _NO_SNIFF_SUFFIXES
                with zf.open(info) as src, open(target, "xb") as out:
                    while block := src.read(1 << 20):
                        if sniff and written == 0 and _looks_like_archive(block):
                            raise error(f"{archive.name}: entry {rel} is an archive inside the archive "
                                        "(nested archive); unpack it first")
                        written += len(block)
                        if written > info.file_size:  # the header lied about the size
                            raise error(f"{archive.name}: entry {rel} is larger than declared")
                        out.write(block)
                done_bytes += written
                if done_bytes >= next_report:
                    next_report = done_bytes + step
                    emit(progress, f"extracting: {done_bytes / max(total, 1):.0%} of {total:,} bytes",
                         min(1.0, done_bytes / max(total, 1)), "extract")
            current = ""
            emit(progress, f"extracted {len(entries)} files", 1.0, "extract")
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():
                    raise
                # the same content was published meanwhile by someone else: theirs is as good as ours
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError,
                RuntimeError) as exc:
            where = f" at entry {current}" if current else ""
            if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # not corrupt: the name is too long
                raise error(f"{archive.name}: a file or folder name{where} is too long for the server's file "
                            "system (at most 255 bytes per name; shorten it)") from exc
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise error(f"{archive.name}: corrupt or unsupported archive{where} ({reason})") from exc
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
