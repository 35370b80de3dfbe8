"""Tests of scd_core.data.archives: hostile zips are refused before anything lands at the destination."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from helpers import make_image, make_zip, write_image, write_image_folder

from scd_core.data.archives import ArchiveLimits, safe_extract_zip, single_top_folder
from scd_core.errors import ScdError, TargetSetError


def _zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    make_image(16, seed=seed).save(buf, format="PNG")
    return buf.getvalue()


def _assert_refused(archive: Path, dest: Path, match: str, limits: ArchiveLimits | None = None) -> ScdError:
    with pytest.raises(TargetSetError, match=match) as info:
        safe_extract_zip(archive, dest, limits=limits, error=TargetSetError)
    assert isinstance(info.value, ValueError)
    assert archive.name in str(info.value)
    assert not dest.exists()
    if dest.parent.exists():  # no half-extracted temporary folder left beside the destination
        assert [p.name for p in dest.parent.iterdir()] == []
    return info.value


def test_extracts_valid_zip(tmp_path):
    src = write_image_folder(tmp_path / "src", {"a": 2, "b": 2})
    archive = make_zip(src, tmp_path / "data.zip", prefix="data")
    dest = safe_extract_zip(archive, tmp_path / "out" / "x")
    assert dest == tmp_path / "out" / "x"
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["data/a/000.png", "data/a/001.png", "data/b/000.png", "data/b/001.png"]
    assert (dest / "data/a/000.png").read_bytes() == (src / "a/000.png").read_bytes()
    assert single_top_folder(dest) == dest / "data"
    assert [p.name for p in dest.parent.iterdir()] == ["x"]


def test_ignores_macos_metadata(tmp_path):
    archive = _zip(tmp_path / "m.zip", {"d/a/1.png": _png_bytes(), "__MACOSX/d/a/._1.png": b"junk",
                                        "d/.DS_Store": b"junk", "d/a/._2.png": b"junk"})
    dest = safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["d/a/1.png"]


def test_windows_desktop_ini_is_ignored_like_thumbs_db(tmp_path):
    archive = _zip(tmp_path / "w.zip", {"d/a/1.png": _png_bytes(), "d/a/desktop.ini": b"[.ShellClassInfo]",
                                        "d/Thumbs.db": b"junk"})
    dest = safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["d/a/1.png"]


def test_a_name_too_long_for_the_file_system_says_so(tmp_path):
    archive = _zip(tmp_path / "n.zip", {f"d/{'x' * 300}/1.png": _png_bytes(), "d/b/1.png": _png_bytes()})
    with pytest.raises(TargetSetError, match="too long for the server's file system") as info:
        safe_extract_zip(archive, tmp_path / "out", error=TargetSetError)
    assert "corrupt" not in str(info.value)


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "a\\..\\..\\evil.png"])
def test_path_traversal_refused(tmp_path, name):
    archive = _zip(tmp_path / "t.zip", {"a/ok.png": _png_bytes(), name: _png_bytes(1)})
    _assert_refused(archive, tmp_path / "out" / "dest", "path traversal")
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out" / "evil.png").exists()


@pytest.mark.parametrize("name", ["/etc/evil.png", "\\evil.png", "C:/evil.png"])
def test_absolute_path_refused(tmp_path, name):
    archive = _zip(tmp_path / "abs.zip", {"a/ok.png": _png_bytes(), name: _png_bytes(1)})
    _assert_refused(archive, tmp_path / "out" / "dest", "absolute path")


def test_symlink_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/ok.png", _png_bytes())
        info = zipfile.ZipInfo("a/link.png")
        info.create_system = 3  # unix
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    _assert_refused(archive, tmp_path / "out" / "dest", "symbolic link")


@pytest.mark.parametrize("inner", ["a/inner.zip", "a/data.tar.gz", "a/x.7z"])
def test_nested_archive_refused(tmp_path, inner):
    nested = _zip(tmp_path / "nested.zip", {"b/1.png": _png_bytes()}).read_bytes()
    archive = _zip(tmp_path / "outer.zip", {"a/ok.png": _png_bytes(), inner: nested})
    _assert_refused(archive, tmp_path / "out" / "dest", "nested archive")


def test_too_many_files_refused(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"a/{i}.png": _png_bytes(i) for i in range(5)})
    _assert_refused(archive, tmp_path / "out" / "dest", "more than 3 files", ArchiveLimits(max_files=3))
    safe_extract_zip(archive, tmp_path / "ok", limits=ArchiveLimits(max_files=5))  # the limit is inclusive


def test_too_large_total_refused(tmp_path):
    archive = _zip(tmp_path / "big.zip", {f"a/{i}.bin.png": os.urandom(400) for i in range(3)})
    _assert_refused(archive, tmp_path / "out" / "dest", "uncompressed size exceeds 1000 bytes",
                    ArchiveLimits(max_total_bytes=1000))


def test_compression_ratio_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"a/zeros.png": bytes(2 << 20)})
    err = _assert_refused(archive, tmp_path / "out" / "dest", "suspicious compression ratio",
                          ArchiveLimits(max_ratio=50))
    assert "a/zeros.png" in str(err)


def test_small_highly_compressible_files_are_fine(tmp_path):
    archive = _zip(tmp_path / "small.zip", {"a/zeros.png": bytes(100_000)})  # ratio only checked above 1 MiB
    dest = safe_extract_zip(archive, tmp_path / "out", limits=ArchiveLimits(max_ratio=2))
    assert (dest / "a/zeros.png").stat().st_size == 100_000


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04 not really a zip", os.urandom(2048)])
def test_corrupt_bytes_refused(tmp_path, data):
    archive = tmp_path / "corrupt.zip"
    archive.write_bytes(data)
    _assert_refused(archive, tmp_path / "out" / "dest", "not a valid zip archive")


def test_truncated_zip_refused(tmp_path):
    full = _zip(tmp_path / "full.zip", {"a/1.png": _png_bytes(), "a/2.png": _png_bytes(1)}).read_bytes()
    archive = tmp_path / "cut.zip"
    archive.write_bytes(full[: len(full) // 2])
    _assert_refused(archive, tmp_path / "out" / "dest", "not a valid zip archive")


def _single_entry_zip(payload: bytes) -> tuple[bytearray, int]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/x.png", payload)
    raw = bytearray(buf.getvalue())
    return raw, raw.rfind(b"PK\x01\x02")  # start of the central directory record


def test_corrupt_entry_data_refused(tmp_path):
    """A valid directory with damaged deflate data: refused with a clear message, nothing left behind."""
    raw, _ = _single_entry_zip(os.urandom(3000) + bytes(5000))
    start = 30 + len("a/x.png")  # local header + name: the compressed data begins here
    for k in range(start + 10, start + 300, 7):
        raw[k] ^= 0xFF
    archive = tmp_path / "damaged.zip"
    archive.write_bytes(raw)
    _assert_refused(archive, tmp_path / "out" / "dest", "corrupt")


def test_crc_mismatch_refused(tmp_path):
    raw, cd = _single_entry_zip(b"hello " * 10)
    raw[cd + 16] ^= 0xFF  # the CRC-32 of the central directory is the one checked on reading
    archive = tmp_path / "crc.zip"
    archive.write_bytes(raw)
    _assert_refused(archive, tmp_path / "out" / "dest", "corrupt")


def test_encrypted_entry_refused(tmp_path):
    raw, cd = _single_entry_zip(b"secret " * 100)
    raw[6] |= 0x1  # "encrypted" flag in the local header and the central directory
    raw[cd + 8] |= 0x1
    archive = tmp_path / "locked.zip"
    archive.write_bytes(raw)
    _assert_refused(archive, tmp_path / "out" / "dest", "encrypted")


def test_unsupported_compression_refused(tmp_path):
    raw, cd = _single_entry_zip(b"data " * 100)
    raw[8] = raw[cd + 10] = 99  # AES / unknown method
    archive = tmp_path / "method.zip"
    archive.write_bytes(raw)
    _assert_refused(archive, tmp_path / "out" / "dest", "unsupported")


def test_empty_archive_refused(tmp_path):
    archive = _zip(tmp_path / "empty.zip", {"__MACOSX/._x": b"junk"})
    _assert_refused(archive, tmp_path / "out" / "dest", "holds no files")


def test_error_class_defaults_to_scd_error(tmp_path):
    archive = _zip(tmp_path / "t.zip", {"../evil.png": _png_bytes()})
    with pytest.raises(ScdError, match="path traversal"):
        safe_extract_zip(archive, tmp_path / "dest")


@pytest.mark.parametrize("encoding", ["utf-8", "cp437"])
def test_legacy_name_encodings(tmp_path, encoding):
    """Entries without the UTF-8 flag: UTF-8 bytes (macOS, 7-Zip) and real cp437 both decode right."""
    names = {"café": 2, "naïve": 2} if encoding == "cp437" else {"ネコ": 2, "σκύλος": 2}
    src = write_image_folder(tmp_path / "src", names)
    archive = make_zip(src, tmp_path / "legacy.zip", legacy_encoding=encoding)
    with zipfile.ZipFile(archive) as zf:
        assert all(not info.flag_bits & 0x800 for info in zf.infolist())
    dest = safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)


def test_single_top_folder(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    write_image(tmp_path / "a" / "b" / "c" / "1.png")
    (tmp_path / "a" / "__MACOSX").mkdir()
    assert single_top_folder(tmp_path) == tmp_path / "a" / "b" / "c"
    assert single_top_folder(tmp_path, keep=lambda p: p.name == "c") == tmp_path / "a" / "b"
