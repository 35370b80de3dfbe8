"""Hardening: every hostile input the engine must refuse, and the real-world inputs it must accept.

Each table below is a list of named cases; the test ids carry the names, so
``pytest --collect-only -q tests/test_hardening.py`` lists every input tried, and
:func:`test_hostile_inventory` prints the count per category. All files are real and built here: zips
with :mod:`zipfile`, images with PIL, teachers with timm + safetensors, and a malicious pickle whose
``__reduce__`` would create a marker file.

Categories of hostile inputs (refused with a specific error class and a message naming the file):

1. ``ARCHIVE_CASES``, tried against both upload paths (target zips and teacher zips): path traversal,
   absolute paths, symbolic links, nested archives (by suffix and by content), encrypted and duplicate
   entries, decompression bombs (entry ratio, whole-archive ratio, file count and total size, the
   last three through their ``SCD_ARCHIVE_*`` limits), headers that lie, corrupt, truncated, empty
   and non-zip uploads. Besides the message, every case checks that the workspace is exactly as before
   (no half-written upload or extraction) and that no file landed outside it.
2. ``TARGET_CASES``: target-set content: empty class folder, a single class,
   only unlabeled images, stray and non-image files, bad split layouts, class names that differ only
   in case, and CSV files with missing columns, paths escaping the archive (relative and absolute),
   missing images, unknown splits, binary content, an oversized field, no rows, duplicates.
3. ``IMAGE_CASES``: images that are truncated (PNG, JPEG, GIF, WebP), corrupt, random bytes, HTML,
   empty, formats outside the supported ones (EPS, PPM, ICO) posing as PNG, garbage TIFF, and pixel
   bombs declared in PNG, BMP and GIF headers or beyond ``SCD_MAX_IMAGE_PIXELS``.
   **Policy: refuse.** Every image is decoded completely when a target set is validated; a truncated,
   corrupt or fake image refuses the whole upload with a :class:`TargetSetError` naming the file
   (``hostile.zip/b/bad.png: truncated or corrupt image ...``). Nothing is skipped silently, and no
   run fails half-way on an image that validation let through.
4. ``TEACHER_CASES`` (uploads) and ``PICKLE_CASES`` (teacher folders on the server): malicious pickles
   (in ``.bin``/``.pth`` files and disguised as ``model.safetensors``; the marker file must not
   appear), pickled files in uploads, unknown architectures, label names that do not match the head,
   missing or corrupt weights, weights of another head or architecture (a giant architecture beside
   tiny weights is refused before it is allocated), malformed configs, oversized heads, and
   ``model_args`` that would make timm load another file.
5. ``SYMLINK_CASES``: server folders whose images are symbolic links out of the target set.
6. ``CACHE_CASES``: corrupted teacher-output cache entries, detected and recomputed, never trusted.
7. Numerics (``NUMERIC_CASES`` and hypothesis properties): OT with zero-mass rows and columns, a
   teacher predicting one class, a target class of two images, a 21,843-class teacher, float16 and
   bfloat16 inputs, eps down to 1e-3 of the cost scale, NaN inputs; marginals and agreement with
   POT's ``ot.sinkhorn2`` / ``ot.emd2`` on random problems.

Accepted real-world inputs (``ACCEPTED_TARGETS``, ``IMAGE_MODES``): class names in any script (with
and without the zip UTF-8 flag, cp437, NFD vs NFC), CSV in Latin-1, Windows-1252, UTF-16, UTF-8 with
BOM, ``;``-separated or with Windows paths, every image mode (CMYK JPEG, 16-bit PNG and TIFF, palette
PNG with transparency, RGBA, grayscale BMP, animated GIF, float TIFF, 1-bit, LA, WebP, a PNG named
.jpg), split layouts nested in top folders, macOS metadata; valid teacher uploads.

Concurrency and resources: two sessions uploading, ranking and distilling at once do not share
files or jobs; cancelling a run frees its models; the output cache and the workspace
(``SCD_WORKSPACE_MAX_BYTES``) evict their oldest entries that are not in use.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import struct
import tarfile
import threading
import time
import unicodedata
import uuid
import weakref
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
from helpers import make_image, make_teacher, make_zip, write_image, write_image_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scd_core.data.images import load_rgb
from scd_core.data.targets import load_target
from scd_core.distill.losses import ot_divergence
from scd_core.errors import TargetSetError, TeacherError
from scd_core.ot.costs import conditional_cost, prototype_cost
from scd_core.ot.transport import exact_cost, exact_plan, sinkhorn
from scd_core.outputs import cache
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.runtime import workspace
from scd_core.runtime.jobs import Dispatcher, JobStatus, JobStore, submit_distill
from scd_core.runtime.session import (
    add_uploaded_teacher,
    load_uploaded_target,
    new_session_id,
    remove_session,
    session_dir,
)
from scd_core.runtime.settings import read_settings
from scd_core.runtime.worker import run_job
from scd_core.teachers.repository import TeacherRepository, load_teacher, spec_from_folder

ESCAPE = f"scd-escape-{uuid.uuid4().hex[:12]}"  # the name a hostile entry tries to write outside
TARGET_UPLOAD = "hostile.zip"
TEACHER_UPLOAD = "hostile_teacher.zip"
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------
# Building real files
# ------------------------------------------------------------------------------------------------


def _img_bytes(fmt: str = "PNG", size=16, mode: str = "RGB", seed: int = 0, **kwargs) -> bytes:
    buf = io.BytesIO()
    make_image(size, mode=mode, seed=seed).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png(seed: int = 0) -> bytes:
    return _img_bytes("PNG", seed=seed)


Entries = list[tuple[str | zipfile.ZipInfo, bytes]]


def _zip(entries: Entries, dirs: tuple[str, ...] = (), compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d), b"")
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _good(classes: tuple[str, ...] = ("a", "b"), n: int = 3, prefix: str = "") -> Entries:
    return [(f"{prefix}{c}/{i}.png", _png(zlib.crc32(f"{c}{i}".encode()) % 1000)) for c in classes for i in range(n)]


def _with_duplicate(entries: Entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in entries:
            zf.writestr(name, data)
        zf.writestr(entries[0][0], b"second copy")
    return buf.getvalue()


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _patched(data: bytes, edit: Callable[[bytearray], None]) -> bytes:
    raw = bytearray(data)
    edit(raw)
    return bytes(raw)


def _central(raw: bytearray, name: bytes) -> int:
    """Offset of the central directory record of entry ``name``."""
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        n = struct.unpack("<H", raw[pos + 28 : pos + 30])[0]
        if raw[pos + 46 : pos + 46 + n] == name:
            return pos
        pos = raw.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(name)


def _local(raw: bytearray, name: bytes) -> int:
    """Offset of the local header of entry ``name`` (from its central directory record)."""
    cd = _central(raw, name)
    return struct.unpack("<I", raw[cd + 42 : cd + 46])[0]


def _set_flag(name: str, bit: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        cd, lo = _central(raw, name.encode()), _local(raw, name.encode())
        raw[cd + 8] |= bit
        raw[lo + 6] |= bit

    return edit


def _set_method(name: str, method: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        cd, lo = _central(raw, name.encode()), _local(raw, name.encode())
        raw[cd + 10] = raw[lo + 8] = method

    return edit


def _lie_about_size(name: str) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        cd, lo = _central(raw, name.encode()), _local(raw, name.encode())
        raw[cd + 24 : cd + 28] = struct.pack("<I", 100)
        raw[lo + 22 : lo + 26] = struct.pack("<I", 100)

    return edit


def _flip_crc(name: str) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        raw[_central(raw, name.encode()) + 16] ^= 0xFF

    return edit


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = _png()
        info = tarfile.TarInfo("inner.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bmp_claiming(width: int, height: int) -> bytes:
    raw = bytearray(_img_bytes("BMP"))
    raw[18:26] = struct.pack("<ii", width, height)
    return bytes(raw)


def _gif_claiming(width: int, height: int) -> bytes:
    raw = bytearray(_img_bytes("GIF"))
    raw[6:10] = struct.pack("<HH", width, height)
    return bytes(raw)


def _corrupt_middle(data: bytes) -> bytes:
    raw = bytearray(data)
    for k in range(len(raw) // 3, len(raw) // 3 + 40):
        raw[k] ^= 0xA5
    return bytes(raw)


def _csv_bytes(rows: list[list[str]], header=("path", "label"), encoding="utf-8", delimiter=",") -> bytes:
    lines = [delimiter.join(header)] + [delimiter.join(r) for r in rows]
    return ("\r\n".join(lines) + "\r\n").encode(encoding)


def _csv_target(rows: list[list[str]] | None = None, **kwargs) -> Entries:
    images = [(f"imgs/{c}{i}.png", _png(i + (10 if c == "b" else 0))) for c in "ab" for i in range(3)]
    rows = rows if rows is not None else [[name, name[5]] for name, _ in images]
    return [*images, ("labels.csv", _csv_bytes(rows, **kwargs))]


# ------------------------------------------------------------------------------------------------
# Checking refusals
# ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    build: Callable[[], bytes]
    match: str
    names: tuple[str, ...] = ()  # must appear in the message (besides the upload's name)
    env: dict[str, str] = field(default_factory=dict)


def _snapshot(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*")}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace of the test's own, so that "nothing else was written" can be checked exactly."""
    root = tmp_path / "ws"
    monkeypatch.setenv("SCD_WORKSPACE", str(root))
    monkeypatch.setenv("SCD_CACHE_DIR", str(tmp_path / "cache"))
    return root


@pytest.fixture
def sid(ws):
    session = new_session_id()
    for parts in (("targets",), ("teachers",), ("runs",), ("uploads", "targets")):
        session_dir(session, *parts)
    yield session
    remove_session(session)


def _assert_refused(call: Callable[[], object], error: type[Exception], case: Case, upload: str, ws: Path,
                    tmp_path: Path, monkeypatch) -> str:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = _snapshot(ws)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert re.search(case.match, message), message
    assert upload in message, message  # names the upload ...
    for name in case.names:  # ... and the offending file inside it
        assert name in message, (name, message)
    assert str(ws) not in message and str(tmp_path) not in message, message  # no server paths
    assert "\n" not in message.strip()  # one line: no traceback text
    assert _snapshot(ws) == before  # no half-written upload, extraction or teacher folder
    escaped = [p for p in tmp_path.rglob(f"{ESCAPE}*")] + [p for p in Path("/tmp").glob(f"{ESCAPE}*")]
    assert escaped == []  # nothing was written outside the workspace
    return message


# ------------------------------------------------------------------------------------------------
# 1. Hostile archives (target and teacher uploads)
# ------------------------------------------------------------------------------------------------

_ZEROS_4M = bytes(4 << 20)

ARCHIVE_CASES = [
    Case("traversal-dotdot", lambda: _zip([*_good(), (f"../../../../{ESCAPE}.png", _png())]),
         r"escapes the archive \(path traversal\)", (ESCAPE,)),
    Case("traversal-inside-path", lambda: _zip([*_good(), (f"a/../../../../../{ESCAPE}.png", _png())]),
         r"path traversal", (ESCAPE,)),
    Case("traversal-backslash", lambda: _zip([*_good(), (f"a\\..\\..\\..\\{ESCAPE}.png", _png())]),
         r"path traversal", (ESCAPE,)),
    Case("absolute-posix", lambda: _zip([*_good(), (f"/tmp/{ESCAPE}.png", _png())]), "absolute path", (ESCAPE,)),
    Case("absolute-drive-letter", lambda: _zip([*_good(), (f"C:/{ESCAPE}.png", _png())]), "absolute path",
         (ESCAPE,)),
    Case("absolute-unc", lambda: _zip([*_good(), (f"\\\\server\\share\\{ESCAPE}.png", _png())]), "absolute path",
         (ESCAPE,)),
    Case("symlink-entry", lambda: _zip([*_good(), _symlink_entry("a/passwd.png", "/etc/passwd")]),
         "symbolic link", ("a/passwd.png",)),
    Case("symlink-dir-entry", lambda: _zip([_symlink_entry("a", "/"), *_good(("b", "c"))]), "symbolic link",
         ("'a'",)),
    Case("nested-zip-suffix", lambda: _zip([*_good(), ("a/inner.zip", _zip(_good()))]), "nested archive",
         ("a/inner.zip",)),
    Case("nested-tar-gz-suffix", lambda: _zip([*_good(), ("b/more.tar.gz", gzip.compress(_tar_bytes()))]),
         "nested archive", ("b/more.tar.gz",)),
    Case("nested-7z-suffix", lambda: _zip([*_good(), ("b/x.7z", b"7z\xbc\xaf\x27\x1c" + bytes(32))]),
         "nested archive", ("b/x.7z",)),
    Case("nested-zip-posing-as-png", lambda: _zip([*_good(), ("a/photo.png", _zip(_good()))]), "nested archive",
         ("a/photo.png",)),
    Case("nested-gzip-posing-as-jpg", lambda: _zip([*_good(), ("a/photo.jpg", gzip.compress(_png()))]),
         "nested archive", ("a/photo.jpg",)),
    Case("nested-tar-posing-as-bmp", lambda: _zip([*_good(), ("a/photo.bmp", _tar_bytes())]), "nested archive",
         ("a/photo.bmp",)),
    Case("encrypted-entry", lambda: _patched(_zip(_good()), _set_flag("a/0.png", 0x1)), "encrypted",
         ("a/0.png",)),
    Case("duplicate-entry", lambda: _with_duplicate(_good()), "appears twice", ("a/0.png",)),
    Case("bomb-entry-ratio", lambda: _zip([*_good(), ("a/zeros.bmp", _ZEROS_4M)]), "compression ratio",
         ("a/zeros.bmp",)),
    Case("bomb-whole-archive", lambda: _zip([*_good(), *[(f"a/z{i}.bmp", bytes(1 << 20)) for i in range(20)]]),
         r"expands from \d+ to \d+ bytes"),
    Case("bomb-file-count", lambda: _zip(_good(n=3)), r"more than 4 files", ("b/1.png",),
         env={"SCD_ARCHIVE_MAX_FILES": "4"}),
    Case("bomb-total-size", lambda: _zip(_good(n=3)), r"uncompressed size exceeds 1500 bytes",
         env={"SCD_ARCHIVE_MAX_BYTES": "1500"}),
    Case("bomb-ratio-limit", lambda: _zip([*_good(), ("b/flat.bmp", bytes(3 << 20))]), r"limit 50:1",
         ("b/flat.bmp",), env={"SCD_ARCHIVE_MAX_RATIO": "50"}),
    Case("size-header-lies",
         lambda: _patched(_zip([("a/0.png", _png() * 8), *_good()[1:]]), _lie_about_size("a/0.png")),
         "corrupt|larger than declared", ("a/0.png",)),
    Case("crc-mismatch", lambda: _patched(_zip(_good()), _flip_crc("b/2.png")), "corrupt", ("b/2.png",)),
    Case("unknown-compression", lambda: _patched(_zip(_good()), _set_method("a/1.png", 99)), "unsupported",
         ("a/1.png",)),
    Case("not-a-zip", lambda: os.urandom(4096), "not a valid zip archive"),
    Case("truncated-zip", lambda: _zip(_good())[:900], "not a valid zip archive"),
    Case("html-posing-as-zip", lambda: b"<html><body>404</body></html>", "not a valid zip archive"),
    Case("only-macos-metadata", lambda: _zip([("__MACOSX/._a.png", b"junk"), (".DS_Store", b"junk")]),
         "holds no files"),
    Case("empty-upload", lambda: b"", "empty"),
]


@pytest.mark.parametrize("case", ARCHIVE_CASES, ids=[c.id for c in ARCHIVE_CASES])
def test_hostile_archive_target_upload(case, sid, ws, tmp_path, monkeypatch):
    _assert_refused(lambda: load_uploaded_target(sid, TARGET_UPLOAD, case.build()), TargetSetError, case,
                    TARGET_UPLOAD, ws, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", ARCHIVE_CASES, ids=[c.id for c in ARCHIVE_CASES])
def test_hostile_archive_teacher_upload(case, sid, ws, tmp_path, monkeypatch):
    _assert_refused(lambda: add_uploaded_teacher(sid, TEACHER_UPLOAD, case.build(), check_weights=False),
                    TeacherError, case, TEACHER_UPLOAD, ws, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------------
# 2. Hostile target-set content
# ------------------------------------------------------------------------------------------------

TARGET_CASES = [
    Case("empty-class-folder", lambda: _zip(_good(("a", "c")), dirs=("b/",)), "class folder 'b' holds no images",
         (f"{TARGET_UPLOAD}/b",)),
    Case("single-class", lambda: _zip(_good(("only",))), r"only one class \('only'\)"),
    Case("only-unlabeled", lambda: _zip(_good(("unlabeled",))), "no classes"),
    Case("file-outside-class", lambda: _zip([*_good(), ("stray.png", _png(9))]), "file outside a class folder",
         ("stray.png",)),
    Case("non-image-file", lambda: _zip([*_good(), ("a/notes.txt", b"hello")]), "unsupported file type",
         ("a/notes.txt",)),
    Case("svg-image", lambda: _zip([*_good(), ("b/vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")]),
         "unsupported file type", ("b/vector.svg",)),
    Case("entry-beside-splits", lambda: _zip([*_good(prefix="train/"), *_good(prefix="extra/")]),
         "unexpected entry beside split folders", ("extra",)),
    Case("class-names-differ-in-case", lambda: _zip(_good(("Cat", "cat"))), "differ only in case", ("'Cat'",)),
    Case("csv-missing-column", lambda: _zip(_csv_target(header=("file", "label"))), r"missing column\(s\) path",
         ("labels.csv",)),
    Case("csv-path-escapes", lambda: _zip(_csv_target([["imgs/a0.png", "a"], ["../../../etc/passwd.png", "b"]])),
         "escapes the CSV's folder", ("labels.csv", "../../../etc/passwd.png")),
    Case("csv-absolute-path", lambda: _zip(_csv_target([["imgs/a0.png", "a"], ["/etc/hostname.png", "b"]])),
         "escapes the CSV's folder", ("labels.csv", "/etc/hostname.png")),
    Case("csv-missing-image", lambda: _zip(_csv_target([["imgs/a0.png", "a"], ["imgs/nothere.png", "b"]])),
         "does not exist", ("labels.csv", "imgs/nothere.png")),
    Case("csv-non-image", lambda: _zip([*_csv_target([["imgs/a0.png", "a"], ["readme.txt", "b"]]),
                                        ("readme.txt", b"x")]), "not a supported image type", ("readme.txt",)),
    Case("csv-unknown-split", lambda: _zip(_csv_target([["imgs/a0.png", "a", "holdout"]],
                                                       header=("path", "label", "split"))),
         "unknown split 'holdout'", ("labels.csv",)),
    Case("csv-binary", lambda: _zip([*_good(), ("labels.csv", b"path,label\n\x00\x01\x02\xff\x00")]),
         "not a text CSV", ("labels.csv",)),
    Case("csv-huge-field", lambda: _zip(_csv_target([["imgs/a0.png", '"' + "x" * 200_000 + '"']])),
         "malformed CSV", ("labels.csv",)),
    Case("csv-no-rows", lambda: _zip(_csv_target([])), "lists no images", ("labels.csv",)),
    Case("csv-listed-twice", lambda: _zip(_csv_target([["imgs/a0.png", "a"], ["imgs/a1.png", "a"], ["imgs/b0.png", "b"],
                                                       ["imgs/b1.png", "b"], ["imgs/a0.png", "b"]])),
         "listed twice", ("imgs/a0.png",)),
    Case("several-csvs", lambda: _zip([*_csv_target(), ("more.csv", _csv_bytes([["imgs/a0.png", "a"]]))]),
         "several CSV files", ("labels.csv", "more.csv")),
]


@pytest.mark.parametrize("case", TARGET_CASES, ids=[c.id for c in TARGET_CASES])
def test_hostile_target_content(case, sid, ws, tmp_path, monkeypatch):
    _assert_refused(lambda: load_uploaded_target(sid, TARGET_UPLOAD, case.build()), TargetSetError, case,
                    TARGET_UPLOAD, ws, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------------
# 3. Hostile images (policy: refuse, naming the file)
# ------------------------------------------------------------------------------------------------


def _bad_image(name: str, data: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: _zip([*_good(), (f"b/{name}", data())])


IMAGE_CASES = [
    Case("truncated-png", _bad_image("bad.png", lambda: _img_bytes("PNG", 32)[:300]), "truncated or corrupt",
         ("b/bad.png",)),
    Case("truncated-jpeg", _bad_image("bad.jpg", lambda: _img_bytes("JPEG", 32)[:-200]), "truncated or corrupt",
         ("b/bad.jpg",)),
    Case("truncated-gif", _bad_image("bad.gif", lambda: _img_bytes("GIF", 32)[:-300]), "truncated or corrupt",
         ("b/bad.gif",)),
    Case("truncated-webp", _bad_image("bad.webp", lambda: _img_bytes("WEBP", 32, lossless=True)[:-300]),
         "truncated or corrupt|not a readable image", ("b/bad.webp",)),
    Case("corrupt-png-data", _bad_image("bad.png", lambda: _corrupt_middle(_img_bytes("PNG", 32))),
         "truncated or corrupt", ("b/bad.png",)),
    Case("random-bytes-as-png", _bad_image("bad.png", lambda: np.random.default_rng(0).bytes(700)),
         "not a readable image", ("b/bad.png",)),
    Case("html-as-jpg", _bad_image("bad.jpg", lambda: b"<html><body>not an image</body></html>"),
         "not a readable image", ("b/bad.jpg",)),
    Case("empty-file-as-png", _bad_image("bad.png", lambda: b""), "empty file", ("b/bad.png",)),
    Case("eps-as-png", _bad_image("bad.png", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
                                                     b"showpage\n"), "not a readable image", ("b/bad.png",)),
    Case("ppm-as-png", _bad_image("bad.png", lambda: _img_bytes("PPM")), "not a readable image", ("b/bad.png",)),
    Case("ico-as-png", _bad_image("bad.png", lambda: _img_bytes("ICO")), "not a readable image", ("b/bad.png",)),
    Case("garbage-tiff", _bad_image("bad.tif", lambda: b"II*\x00" + np.random.default_rng(1).bytes(300)),
         "truncated or corrupt|not a readable image", ("b/bad.tif",)),
    Case("pixel-bomb-png-header", _bad_image("bad.png", lambda: _png_header(30_000, 30_000)), "exceeds",
         ("b/bad.png",)),
    Case("pixel-bomb-png-over-pil-limit", _bad_image("bad.png", lambda: _png_header(9000, 9000)),
         "exceeds the limit of 64000000 pixels", ("b/bad.png",)),
    Case("pixel-bomb-bmp-header", _bad_image("bad.bmp", lambda: _bmp_claiming(40_000, 40_000)),
         "exceeds|truncated or corrupt", ("b/bad.bmp",)),
    Case("pixel-bomb-gif-header", _bad_image("bad.gif", lambda: _gif_claiming(65_000, 65_000)), "exceeds",
         ("b/bad.gif",)),
    Case("pixel-limit-env", _bad_image("big.png", lambda: _img_bytes("PNG", (40, 30))),
         "40x30 pixels exceeds the limit of 1000 pixels", ("b/big.png",), env={"SCD_MAX_IMAGE_PIXELS": "1000"}),
]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_hostile_image(case, sid, ws, tmp_path, monkeypatch):
    _assert_refused(lambda: load_uploaded_target(sid, TARGET_UPLOAD, case.build()), TargetSetError, case,
                    TARGET_UPLOAD, ws, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------------
# 4. Hostile teachers and weights
# ------------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs code: it writes a marker file (unless the loader refuses callables)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


_MARKER: dict[str, Path] = {}


def _evil_pickle() -> bytes:
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(3, 4), "payload": _Evil(_MARKER["path"])}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("hardening_teacher") / "t", 3, img_size=32, labels=["x", "y", "z"])


@pytest.fixture(autouse=True)
def _marker(tmp_path):
    _MARKER["path"] = tmp_path / f"{ESCAPE}-PWNED"
    yield
    assert not _MARKER["path"].exists(), "a pickle executed code"


_T: dict[str, Path] = {}  # filled by the teacher_files fixture


def _config(**changes) -> bytes:
    config = json.loads((_T["dir"] / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config).encode()


def _weights() -> bytes:
    return (_T["dir"] / "model.safetensors").read_bytes()


def _teacher_zip(config: bytes | None = None, weights: bytes | None = None, extra: Entries = ()) -> bytes:
    entries: Entries = []
    if config is not None:
        entries.append(("t/config.json", config))
    if weights is not None:
        entries.append(("t/model.safetensors", weights))
    return _zip([*entries, *extra])


def _other_weights(**kwargs) -> bytes:
    folder = make_teacher(_T["dir"].parent / f"other-{uuid.uuid4().hex[:6]}", **kwargs)
    return (folder / "model.safetensors").read_bytes()


TEACHER_CASES = [
    Case("pickle-bin-in-upload", lambda: _teacher_zip(_config(), extra=[("t/pytorch_model.bin", _evil_pickle())]),
         "pickled or foreign weights file", ("pytorch_model.bin",)),
    Case("pickle-pth-beside-safetensors",
         lambda: _teacher_zip(_config(), _weights(), [("t/model.pth", _evil_pickle())]),
         "pickled or foreign weights file", ("model.pth",)),
    Case("pickle-posing-as-safetensors", lambda: _teacher_zip(_config(), _evil_pickle()),
         "cannot read weights safely", ("model.safetensors",)),
    Case("unknown-architecture", lambda: _teacher_zip(_config(architecture="resnet_from_mars"), _weights()),
         "unknown timm architecture 'resnet_from_mars'"),
    Case("label-names-vs-head", lambda: _teacher_zip(_config(num_classes=4), _weights()),
         "lists 3 label_names but the head has num_classes=4"),
    Case("label-names-not-strings", lambda: _teacher_zip(_config(label_names=[1, 2, 3]), _weights()),
         "must be a list of strings"),
    Case("missing-weights", lambda: _teacher_zip(_config()), "no model.safetensors"),
    Case("missing-config", lambda: _teacher_zip(None, _weights()), "no config.json"),
    Case("weights-of-another-head", lambda: _teacher_zip(_config(), _other_weights(num_classes=5)),
         r"weights do not fit 'test_resnet' with 3 classes.*size mismatch", ("model.safetensors",)),
    Case("weights-of-another-architecture",
         lambda: _teacher_zip(_config(), _other_weights(num_classes=3, arch="test_efficientnet")),
         "weights do not fit 'test_resnet'", ("model.safetensors",)),
    Case("giant-architecture-tiny-weights",
         lambda: _teacher_zip(_config(architecture="vit_giant_patch14_224", model_args=None), _weights()),
         "weights do not fit 'vit_giant_patch14_224'", ("model.safetensors",)),
    Case("corrupt-safetensors", lambda: _teacher_zip(_config(), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
         "cannot read weights safely", ("model.safetensors",)),
    Case("safetensors-header-lies", lambda: _teacher_zip(_config(), struct.pack("<Q", 1 << 40) + b"{}"),
         "cannot read weights safely", ("model.safetensors",)),
    Case("truncated-safetensors", lambda: _teacher_zip(_config(), _weights()[: len(_weights()) // 2]),
         "cannot read weights safely", ("model.safetensors",)),
    Case("config-invalid-json", lambda: _teacher_zip(b"{'architecture': test_resnet", _weights()),
         "not valid JSON", ("config.json",)),
    Case("config-not-an-object", lambda: _teacher_zip(b"[1, 2, 3]", _weights()), "expected a JSON object",
         ("config.json",)),
    Case("num-classes-not-int", lambda: _teacher_zip(_config(num_classes="three"), _weights()),
         "positive integer 'num_classes'"),
    Case("num-classes-negative", lambda: _teacher_zip(_config(num_classes=-3), _weights()),
         "positive integer 'num_classes'"),
    Case("num-classes-huge", lambda: _teacher_zip(_config(num_classes=10**9, label_names=None), _weights()),
         "exceeds the limit of 100000 classes"),
    Case("model-args-checkpoint-path", lambda: _teacher_zip(
        _config(model_args={"checkpoint_path": "/etc/passwd"}), _weights()), "may not set checkpoint_path"),
    Case("model-args-pretrained", lambda: _teacher_zip(_config(model_args={"pretrained": True}), _weights()),
         "may not set pretrained"),
    Case("model-args-unknown", lambda: _teacher_zip(_config(model_args={"no_such_arg": 1}), _weights()),
         "cannot build 'test_resnet'"),
    Case("pretrained-cfg-not-object", lambda: _teacher_zip(_config(pretrained_cfg=[1]), _weights()),
         "pretrained_cfg must be an object"),
    Case("several-teachers", lambda: _zip([("a/config.json", _config()), ("a/model.safetensors", _weights()),
                                           ("b/config.json", _config()), ("b/model.safetensors", _weights())]),
         "several teacher folders"),
]


@pytest.mark.parametrize("case", TEACHER_CASES, ids=[c.id for c in TEACHER_CASES])
def test_hostile_teacher_upload(case, teacher_dir, sid, ws, tmp_path, monkeypatch):
    _T["dir"] = teacher_dir
    data = case.build()
    _assert_refused(lambda: add_uploaded_teacher(sid, TEACHER_UPLOAD, data), TeacherError, case, TEACHER_UPLOAD,
                    ws, tmp_path, monkeypatch)


PICKLE_CASES = ["pytorch_model.bin", "model.pth", "model.bin"]


def test_the_malicious_pickle_really_executes_code(tmp_path):
    """Control: the payload is a working exploit (so refusing it below means something)."""
    path = tmp_path / "evil.bin"
    path.write_bytes(_evil_pickle())
    torch.load(path, weights_only=False)  # the unsafe way: runs the payload
    assert _MARKER["path"].exists()
    _MARKER["path"].unlink()


@pytest.mark.parametrize("filename", PICKLE_CASES)
def test_hostile_pickle_in_server_folder(filename, teacher_dir, tmp_path):
    folder = make_teacher(tmp_path / "evil", 3, img_size=32)
    (folder / "model.safetensors").unlink()
    (folder / filename).write_bytes(_evil_pickle())
    spec = spec_from_folder(folder)  # reading the config never touches the weights
    with pytest.raises(TeacherError, match=rf"{re.escape(filename)}: cannot read weights safely"):
        load_teacher(spec)
    assert not _MARKER["path"].exists()


# ------------------------------------------------------------------------------------------------
# 5. Symbolic links out of a server folder
# ------------------------------------------------------------------------------------------------

SYMLINK_CASES = ["file-link-out", "folder-link-out"]


@pytest.mark.parametrize("kind", SYMLINK_CASES)
def test_hostile_symlink_out_of_target_folder(kind, tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    outside = write_image(tmp_path / "secret" / "private.png")
    if kind == "file-link-out":
        (root / "b" / "linked.png").symlink_to(outside)
        name = "b/linked.png"
    else:
        (root / "c").symlink_to(outside.parent, target_is_directory=True)
        name = "c/private.png"
    with pytest.raises(TargetSetError, match="symbolic link") as info:
        load_target(root)
    assert name in str(info.value)


# ------------------------------------------------------------------------------------------------
# Accepted real-world inputs
# ------------------------------------------------------------------------------------------------


def _legacy_zip(entries: Entries, encoding: str) -> bytes:
    from helpers import _RawNameInfo

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = _RawNameInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.raw_name = name.encode(encoding)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def _csv_accept(labels: tuple[str, str], encoding: str, delimiter: str = ",", windows: bool = False) -> bytes:
    images = [(f"imgs/{k}{i}.png", _png(i + 10 * k)) for k in range(2) for i in range(3)]
    sep = "\\" if windows else "/"
    rows = [[name.replace("/", sep), labels[int(name[5])]] for name, _ in images]
    return _zip([*images, ("labels.csv", _csv_bytes(rows, encoding=encoding, delimiter=delimiter))])


NFD, NFC = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
SCRIPTS = ("ネコ", "σκύλος", "кошка", "قطة", "बिल्ली", "🐱")

ACCEPTED_TARGETS = [
    ("unicode-names-utf8-flag", lambda: _zip(_good(SCRIPTS, n=2)), sorted(SCRIPTS)),
    ("unicode-names-no-utf8-flag", lambda: _legacy_zip(_good(SCRIPTS, n=2), "utf-8"), sorted(SCRIPTS)),
    ("cp437-names", lambda: _legacy_zip(_good(("café", "naïve"), n=2), "cp437"), ["café", "naïve"]),
    ("class-of-two-images", lambda: _zip([*_good(("pair",), n=2), *_good(("many",), n=5)]), ["many", "pair"]),
    ("nfd-and-nfc-one-class", lambda: _zip([*_good((NFD, "b"), 2, "train/"), *_good((NFC, "b"), 2, "val/")]),
     ["b", NFC]),
    ("csv-latin1", lambda: _csv_accept(("Müller", "Señor"), "latin-1"), ["Müller", "Señor"]),
    ("csv-cp1252", lambda: _csv_accept(("€uro", "naïve–dash"), "cp1252"), ["naïve–dash", "€uro"]),
    ("csv-utf16-bom", lambda: _csv_accept(("ネコ", "кошка"), "utf-16"), ["кошка", "ネコ"]),
    ("csv-utf8-bom", lambda: _csv_accept(("ネコ", "chat"), "utf-8-sig"), ["chat", "ネコ"]),
    ("csv-semicolon", lambda: _csv_accept(("a", "b"), "utf-8", ";"), ["a", "b"]),
    ("csv-windows-paths", lambda: _csv_accept(("a", "b"), "utf-8", windows=True), ["a", "b"]),
    ("split-layout-nested-top-folders", lambda: _zip([*_good(prefix="outer/inner/train/"),
                                                      *_good(n=2, prefix="outer/inner/val/"),
                                                      *_good(n=1, prefix="outer/inner/test/"),
                                                      ("outer/inner/unlabeled/u0.png", _png(99))]), ["a", "b"]),
    ("split-folders-upper-case", lambda: _zip([*_good(prefix="Data/Train/"), *_good(n=2, prefix="Data/VAL/")]),
     ["a", "b"]),
    ("macos-metadata", lambda: _zip([*_good(prefix="d/"), ("__MACOSX/d/a/._0.png", b"junk"),
                                     ("d/.DS_Store", b"junk"), ("d/a/._1.png", b"junk")]), ["a", "b"]),
]


@pytest.mark.parametrize(("name", "build", "classes"), ACCEPTED_TARGETS, ids=[c[0] for c in ACCEPTED_TARGETS])
def test_accepted_target(name, build, classes, sid, ws):
    target = load_uploaded_target(sid, f"{name}.zip", build())
    assert target.class_names == classes
    assert session_dir(sid) in target.root.parents
    for item in target.items:
        assert load_rgb(item.path).mode == "RGB"


IMAGE_MODES = [  # (id, suffix, mode, save kwargs)
    ("cmyk-jpeg", "jpg", "CMYK", {}),
    ("png-16-bit", "png", "I;16", {}),
    ("tiff-16-bit", "tif", "I;16", {}),
    ("palette-png-transparency", "png", "P", {"transparency": 0}),
    ("rgba-png", "png", "RGBA", {}),
    ("grey-bmp", "bmp", "L", {}),
    ("animated-gif", "gif", "RGB", {"save_all": True, "frames": 3}),
    ("float-tiff", "tif", "F", {}),
    ("int32-tiff", "tif", "I", {}),
    ("bilevel-png", "png", "1", {}),
    ("grey-alpha-png", "png", "LA", {}),
    ("rgba-webp", "webp", "RGBA", {}),
    ("ycbcr-jpeg", "jpg", "YCbCr", {}),
    ("png-named-jpg", "jpg", "RGB", {"format": "PNG"}),
]


def _mode_image(suffix: str, mode: str, kwargs: dict, seed: int) -> bytes:
    fmt = kwargs.pop("format", {"jpg": "JPEG", "tif": "TIFF"}.get(suffix, suffix.upper()))
    frames = kwargs.pop("frames", 1)
    img = make_image(16, mode=mode, seed=seed)
    if mode == "F":
        img = Image.fromarray(np.asarray(make_image(16, "L", seed), dtype=np.float32) / 255.0)
    if mode == "I":
        img = Image.fromarray(np.asarray(make_image(16, "L", seed), dtype=np.int32) * 1000)
    if frames > 1:
        kwargs["append_images"] = [make_image(16, mode=mode, seed=seed + i) for i in range(1, frames)]
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "suffix", "mode", "kwargs"), IMAGE_MODES, ids=[m[0] for m in IMAGE_MODES])
def test_accepted_image_mode(name, suffix, mode, kwargs, sid, ws):
    entries = [(f"{name}/{i}.{suffix}", _mode_image(suffix, mode, dict(kwargs), i)) for i in range(2)]
    target = load_uploaded_target(sid, "modes.zip", _zip([*entries, *_good(("plain",), 2)]))
    assert target.class_names == sorted([name, "plain"])
    for item in target.items:
        img = load_rgb(item.path)
        px = np.asarray(img)
        assert img.mode == "RGB" and img.size == (16, 16)
        assert mode == "1" or px.std() > 0  # not flattened to one value (16-bit/float ranges are rescaled)


def test_accepted_teacher_uploads(teacher_dir, sid, tmp_path):
    folder_zip = make_zip(teacher_dir, tmp_path / "t.zip", prefix="t").read_bytes()
    spec = add_uploaded_teacher(sid, "my teacher.zip", folder_zip)
    assert spec.name == "t" and spec.label_names == ("x", "y", "z")
    flat = _zip([("config.json", (teacher_dir / "config.json").read_bytes()),
                 ("model.safetensors", (teacher_dir / "model.safetensors").read_bytes()),
                 ("README.md", b"# a teacher"), ("__MACOSX/._config.json", b"junk")])
    assert add_uploaded_teacher(sid, "flat.zip", flat).name == "flat"
    assert load_teacher(spec).num_classes == 3


# ------------------------------------------------------------------------------------------------
# 6. Corrupted cache entries: detected, removed, recomputed
# ------------------------------------------------------------------------------------------------


def _cache_entry(key: str, seed: int = 0, n: int = 12, k_t: int = 5, k_s: int = 3) -> TeacherOutputs:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k_t)).astype(np.float32)
    outputs = TeacherOutputs.from_arrays(logits, np.arange(n) % k_s, rng.normal(size=(n, 4)), num_target_classes=k_s)
    tmp = cache.new_entry_dir()
    np.save(tmp / "logits.npy", logits.astype(np.float16))
    return cache.save_entry(key, tmp, outputs)


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        edit(meta)
        (folder / "meta.json").write_text(json.dumps(meta))

    return run


CACHE_CASES = [
    ("flipped-byte-in-logits", lambda f: _flip(f / "logits.npy")),
    ("flipped-byte-in-stats", lambda f: _flip(f / "stats.npz")),
    ("truncated-stats", lambda f: (f / "stats.npz").write_bytes((f / "stats.npz").read_bytes()[:100])),
    ("missing-logits", lambda f: (f / "logits.npy").unlink()),
    ("meta-invalid-json", lambda f: (f / "meta.json").write_text("{oops")),
    ("meta-checksums-removed", lambda f: (_flip(f / "logits.npy"), _edit_meta(lambda m: m.update(checksums={}))(f))),
    ("meta-labels-inconsistent", _edit_meta(lambda m: m.update(teacher_labels=[*m["teacher_labels"], "extra"]))),
    ("pickled-stats", lambda f: _pickled_npz(f)),
]


def _pickled_npz(folder: Path) -> None:
    """Replace stats.npz by one holding an object array (a pickle), with a matching checksum."""
    from scd_core.fingerprint import file_sha256

    np.savez(folder / "stats.npz", labels=np.array([_Evil(_MARKER["path"])], dtype=object))
    _edit_meta(lambda m: m["checksums"].update({"stats.npz": file_sha256(folder / "stats.npz")}))(folder)


@pytest.mark.parametrize(("name", "corrupt"), CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_hostile_cache_entry(name, corrupt, fresh_cache):
    first = _cache_entry("k")
    assert cache.load_entry("k") is not None
    corrupt(first.source_dir)
    assert cache.load_entry("k") is None  # not trusted ...
    assert not cache.entry_dir("k").exists()  # ... and removed, so the next pass recomputes it
    again = _cache_entry("k")
    np.testing.assert_allclose(again.joint, first.joint)


def test_a_corrupted_cache_entry_is_recomputed_by_the_forward_pass(teacher_dir, fresh_cache, tmp_path):
    from scd_core.outputs.forward import teacher_outputs

    target = load_target(write_image_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=16))
    spec = spec_from_folder(teacher_dir)
    first = teacher_outputs(spec, target, device="cpu")
    _flip(first.source_dir / "logits.npy")
    again = teacher_outputs(spec, target, device="cpu")
    assert not again.timing.get("cached")
    np.testing.assert_allclose(np.asarray(again.logits), np.asarray(first.logits))
    assert teacher_outputs(spec, target, device="cpu").timing.get("cached")


def test_cache_size_limit_evicts_oldest_and_stale_temporaries(fresh_cache, monkeypatch):
    entries = [_cache_entry(f"k{i}", seed=i) for i in range(3)]
    for i, e in enumerate(entries):  # k0 oldest
        os.utime(e.source_dir, (1000 + i, 1000 + i))
    stale = cache.new_entry_dir()
    os.utime(stale, (1, 1))
    size = cache.cache_size_bytes()
    monkeypatch.setenv("SCD_CACHE_MAX_BYTES", str(size * 3 // 4))
    removed = cache.evict()
    assert removed == ["k0"] and not stale.exists()
    assert cache.load_entry("k1") is not None and cache.load_entry("k2") is not None


# ------------------------------------------------------------------------------------------------
# 7. Numerics: OT edge cases and properties
# ------------------------------------------------------------------------------------------------


def _check_result(res, a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> None:
    for t in (res.cost, res.f, res.g, res.plan):
        assert torch.isfinite(t).all()
    plan = res.plan.double()
    a64, b64 = a.double(), b.double()
    b64 = b64 * (a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True))
    slack = max(tol, 2 * res.marginal_error)  # rows are exact unless over-relaxation was on at the last step
    assert (plan.sum(2) - a64).abs().sum(1).max() <= slack
    assert (plan.sum(1) - b64).abs().sum(1).max() <= slack
    assert (plan >= 0).all()


def _emd2(a, b, C) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(ot.emd2(a / a.sum(), b / b.sum(), np.asarray(C, dtype=np.float64)))


def _case_zero_rows_cols():
    rng = np.random.default_rng(0)
    a, b, C = rng.dirichlet(np.ones(9), 3), rng.dirichlet(np.ones(5), 3), rng.random((9, 5))
    a[:, [0, 4, 8]] = 0
    b[:, 2] = 0
    b[1, 0] = 0
    for eps, log_domain in ((0.05, False), (0.05, True), (1e-3, None)):
        res = sinkhorn(a, b, C, eps, return_plan=True, log_domain=log_domain, max_iter=20_000)
        _check_result(res, torch.as_tensor(a), torch.as_tensor(b))
        assert float(res.plan[:, [0, 4, 8]].abs().max()) == 0 and float(res.plan[:, :, 2].abs().max()) == 0
    assert np.isclose(exact_cost(a[0], b[0], C), _emd2(a[0], b[0], C))


def _case_one_class_teacher():
    """Every image predicted as the same teacher class: a one-hot source, and a joint with one row."""
    rng = np.random.default_rng(1)
    a = np.zeros((4, 7))
    a[:, 3] = 1.0
    b = rng.dirichlet(np.ones(4), 4)
    joint = np.zeros((7, 4))
    joint[3] = [0.4, 0.3, 0.2, 0.1]
    C = conditional_cost(joint)
    assert np.isfinite(C).all() and np.allclose(C[[0, 1, 2, 4, 5, 6]], 1.0)
    for eps in (0.05, 1e-3):
        res = sinkhorn(a, b, C, eps, return_plan=True)
        _check_result(res, torch.as_tensor(a), torch.as_tensor(b))
        np.testing.assert_allclose(res.cost.numpy(), (C[3] * b).sum(1), atol=1e-9)  # one plan is feasible
    np.testing.assert_allclose(exact_plan(a[0], b[0], C)[3], b[0])


def _case_two_image_class():
    """A target class with two images: its prototype is a mean of two features; the costs stay finite."""
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2 + 6 + 6, 8))
    labels = np.array([0, 0] + [1] * 6 + [2] * 6)
    sums = np.stack([feats[labels == j].sum(0) for j in range(3)])
    C1 = prototype_cost(rng.normal(size=(10, 8)), sums, np.bincount(labels), feats.mean(0))
    joint = np.zeros((10, 3))
    np.add.at(joint, (rng.integers(0, 10, labels.size), labels), 1 / labels.size)
    C2 = conditional_cost(joint)
    a = np.full(10, 0.1)
    b = np.bincount(labels) / labels.size
    for C in (C1, C2):
        assert np.isfinite(C).all() and C.min() >= 0 and C.max() <= 1
        res = sinkhorn(a, b, C, 1e-3, return_plan=True, max_iter=20_000)
        _check_result(res, torch.as_tensor(a)[None], torch.as_tensor(b)[None])
        assert abs(float(res.cost[0]) - _emd2(a, b, C)) <= 1e-3 * np.log(30) + 2 * res.marginal_error + 1e-9


def _case_21843_classes():
    k_t, k_s = 21_843, 6
    gen = torch.Generator().manual_seed(3)
    a = torch.softmax(torch.randn(2, k_t, generator=gen) * 4, 1)
    b = torch.softmax(torch.randn(2, k_s, generator=gen), 1)
    head = torch.randn(k_t, 16, generator=gen).numpy()
    C = prototype_cost(head, np.random.default_rng(3).normal(size=(k_s, 16)), np.full(k_s, 2), np.zeros(16))
    res = sinkhorn(a, b, torch.as_tensor(C, dtype=torch.float32), 0.05, return_plan=True, max_iter=300)
    _check_result(res, a, b, tol=1e-4)
    short = sinkhorn(a.half(), b.half(), torch.as_tensor(C).half(), 1e-3, max_iter=3)  # log domain, few steps
    assert all(torch.isfinite(t).all() for t in (short.cost, short.f, short.g))
    plan = exact_plan(a[0], b[0], C)
    np.testing.assert_allclose(plan.sum(1), (a[0] / a[0].sum()).double().numpy(), atol=1e-9)
    joint = (a[0][:, None] * b[0][None, :]).double().numpy()
    assert np.isfinite(conditional_cost(joint)).all()


def _case_low_precision():
    gen = torch.Generator().manual_seed(4)
    a = torch.softmax(torch.randn(3, 12, generator=gen), 1)
    b = torch.softmax(torch.randn(3, 5, generator=gen), 1)
    C = torch.rand(12, 5, generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        for eps in (0.05, 1e-3):
            res = sinkhorn(a.to(dtype), b.to(dtype), C.to(dtype), eps, return_plan=True, max_iter=20_000)
            assert res.cost.dtype == torch.float32
            _check_result(res, a.to(dtype).float(), b.to(dtype).float(), tol=1e-4)
            ref = sinkhorn(a.to(dtype).double(), b.to(dtype).double(), C.to(dtype).double(), eps, max_iter=20_000)
            torch.testing.assert_close(res.cost.double(), ref.cost, atol=2e-4, rtol=1e-3)
        assert exact_plan(a[0].to(dtype), b[0].to(dtype), C.to(dtype)).shape == (12, 5)
        # the costs accept half-precision tensors too (bfloat16 has no numpy dtype)
        head, sums = torch.randn(12, 4, generator=gen).to(dtype), torch.randn(5, 4, generator=gen).to(dtype)
        proto = prototype_cost(head, sums, torch.full((5,), 2), sums.float().mean(0).to(dtype))
        cond = conditional_cost((a.T @ b / 3).to(dtype))
        for cost in (proto, cond):
            assert cost.dtype == np.float64 and np.isfinite(cost).all() and 0 <= cost.min() <= cost.max() <= 1


def _case_relative_eps():
    """eps is relative to the cost scale: (k C, k eps) gives the plan of (C, eps), down to eps = 1e-3."""
    rng = np.random.default_rng(5)
    a, b, C = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(5)), rng.random((8, 5))
    base = sinkhorn(a, b, C, 1e-3, return_plan=True, max_iter=20_000)
    for scale in (1e-4, 1e3):
        res = sinkhorn(a, b, C * scale, 1e-3 * scale, return_plan=True, max_iter=20_000)
        np.testing.assert_allclose(res.plan.numpy(), base.plan.numpy(), atol=1e-8)
        np.testing.assert_allclose(float(res.cost) / scale, float(base.cost), rtol=1e-7)


def _case_ot_divergence():
    """The scd loss's OT term: finite value and gradient for half precisions, tiny eps and one-hot rows."""
    gen = torch.Generator().manual_seed(6)
    C = torch.rand(40, 4, generator=gen)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for eps in (0.05, 1e-3):
            a = torch.softmax(torch.randn(5, 40, generator=gen) * 5, 1).to(dtype)
            a[0] = 0
            a[0, 7] = 1  # a teacher that is sure of one class
            b = torch.softmax(torch.randn(5, 4, generator=gen), 1).to(dtype).requires_grad_(True)
            value = ot_divergence(a, b, C, eps)
            value.sum().backward()
            assert torch.isfinite(value).all() and torch.isfinite(b.grad).all()


def _case_invalid_inputs():
    a, b, C = np.full(3, 1 / 3), np.full(2, 0.5), np.zeros((3, 2))
    for bad in (np.array([np.nan, 0.5, 0.5]), np.array([-0.1, 0.6, 0.5]), np.zeros(3)):
        with pytest.raises(ValueError):
            sinkhorn(bad, b, C, 0.1)
        with pytest.raises(ValueError):
            exact_cost(bad, b, C)
    with pytest.raises(ValueError, match="finite"):
        exact_plan(a, b, np.full((3, 2), np.inf))
    with pytest.raises(ValueError):
        sinkhorn(a, b, np.full((3, 2), np.nan), 0.1)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(a, b, C, 0.0)


NUMERIC_CASES = [
    ("zero-mass-rows-and-columns", _case_zero_rows_cols),
    ("one-class-teacher", _case_one_class_teacher),
    ("target-class-of-two-images", _case_two_image_class),
    ("teacher-of-21843-classes", _case_21843_classes),
    ("float16-and-bfloat16-inputs", _case_low_precision),
    ("eps-relative-to-cost-scale", _case_relative_eps),
    ("ot-divergence-half-precision-tiny-eps", _case_ot_divergence),
    ("nan-negative-zero-mass-inputs", _case_invalid_inputs),
]


@pytest.mark.parametrize(("name", "check"), NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_hostile_numerics(name, check):
    check()


def _histogram(draw, k: int, zeros: bool) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h = rng.dirichlet(np.full(k, draw(st.sampled_from([0.1, 1.0, 10.0]))))
    if zeros and k > 1:
        h[rng.random(k) < 0.3] = 0
        if h.sum() == 0:
            h[rng.integers(k)] = 1
    return h / h.sum()


@st.composite
def ot_problems(draw, max_k: int = 10):
    k_t, k_s = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    batch = draw(st.integers(1, 3))
    zeros = draw(st.booleans())
    a = np.stack([_histogram(draw, k_t, zeros) for _ in range(batch)])
    b = np.stack([_histogram(draw, k_s, zeros) for _ in range(batch)])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return a, b, rng.random((k_t, k_s))


@HYPOTHESIS
@given(problem=ot_problems(), eps=st.sampled_from([0.01, 0.05, 0.2, 1.0]), log_domain=st.sampled_from([None, True]))
def test_property_sinkhorn_marginals_and_pot_sinkhorn2(problem, eps, log_domain):
    a, b, C = problem
    res = sinkhorn(a, b, C, eps, return_plan=True, log_domain=log_domain, max_iter=20_000, tol=1e-10)
    _check_result(res, torch.as_tensor(a), torch.as_tensor(b), tol=1e-8)
    for i in range(a.shape[0]):
        rows, cols = a[i] > 0, b[i] > 0  # POT on the support (its log-domain solver is not meant for zeros)
        ref = ot.sinkhorn2(a[i][rows], b[i][cols], C[rows][:, cols], eps, method="sinkhorn_log", numItermax=20_000,
                           stopThr=1e-12)
        assert abs(float(res.cost[i]) - float(ref)) < 1e-6


@HYPOTHESIS
@given(problem=ot_problems(max_k=8))
def test_property_tiny_eps_is_finite_and_close_to_emd2(problem):
    a, b, C = problem
    eps = 1e-3
    res = sinkhorn(a, b, C, eps, return_plan=True, max_iter=3000)
    _check_result(res, torch.as_tensor(a), torch.as_tensor(b), tol=1e-8)
    k = a.shape[1] * b.shape[1]
    for i in range(a.shape[0]):
        exact = exact_cost(a[i], b[i], C)
        assert np.isclose(exact, _emd2(a[i], b[i], C))
        assert abs(float(res.cost[i]) - exact) <= eps * np.log(k + 1) + 2 * res.marginal_error + 1e-9


@HYPOTHESIS
@given(problem=ot_problems(max_k=8), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       eps=st.sampled_from([1e-3, 0.05]))
def test_property_half_precision_inputs(problem, dtype, eps):
    a, b, C = (torch.as_tensor(x).to(dtype) for x in problem)
    if (a.sum(1) == 0).any() or (b.sum(1) == 0).any():  # underflowed to zero mass in this dtype
        return
    res = sinkhorn(a, b, C, eps, return_plan=True, max_iter=3000)
    assert res.cost.dtype == torch.float32
    _check_result(res, a.float(), b.float(), tol=1e-4)
    ref = sinkhorn(a.double(), b.double(), C.double(), eps, max_iter=3000)
    torch.testing.assert_close(res.cost.double(), ref.cost, atol=1e-4, rtol=1e-3)


@HYPOTHESIS
@given(problem=ot_problems())
def test_property_exact_plan_marginals_and_emd2(problem):
    a, b, C = problem
    plan = exact_plan(a[0], b[0], C)
    np.testing.assert_allclose(plan.sum(1), a[0] / a[0].sum(), atol=1e-9)
    np.testing.assert_allclose(plan.sum(0), b[0] / b[0].sum(), atol=1e-9)
    assert (plan >= 0).all()
    assert np.isclose((plan * C).sum(), exact_cost(a[0], b[0], C)) and np.isclose(exact_cost(a[0], b[0], C),
                                                                                      _emd2(a[0], b[0], C))


# ------------------------------------------------------------------------------------------------
# Concurrency and resources
# ------------------------------------------------------------------------------------------------


def test_two_sessions_uploading_the_same_zip_at_once_do_not_share(ws):
    data = _zip(_good(("a", "b"), 3))
    sessions = [new_session_id(), new_session_id()]
    results: dict[str, object] = {}

    def upload(s: str) -> None:
        try:
            results[s] = load_uploaded_target(s, "same.zip", data)
        except Exception as exc:  # pragma: no cover - reported below
            results[s] = exc

    threads = [threading.Thread(target=upload, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    roots = [results[s].root for s in sessions]
    assert roots[0] != roots[1]
    for s, root in zip(sessions, roots):
        assert session_dir(s) in root.parents and results[s].class_names == ["a", "b"]
    # a refused upload in one session leaves the other's files alone; removing a session only removes it
    with pytest.raises(TargetSetError):
        load_uploaded_target(sessions[1], "bad.zip", _zip(_good(("single",))))
    before = _snapshot(session_dir(sessions[0]))
    remove_session(sessions[1])
    assert _snapshot(session_dir(sessions[0])) == before and not (ws / "sessions" / sessions[1]).exists()
    remove_session(sessions[0])


def _dispatcher(tmp_path, workers: int = 1) -> Dispatcher:
    from dataclasses import replace

    store = JobStore(tmp_path / "jobs.sqlite")
    config = replace(read_settings(), workers=workers, torch_threads=1, session_max_running=1)
    return Dispatcher(store, config=config, poll_s=0.05, warm=False).start()


def _wait(store: JobStore, job_id: str, timeout: float, until=lambda j: not j.active):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get(job_id)
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not get there in time: {store.get(job_id)}")


def test_two_sessions_ranking_and_distilling_at_once(teacher_dir, ws, tmp_path):
    from scd_core.assess.ranking import rank
    from scd_core.distill.trainer import DistillConfig

    dispatcher = _dispatcher(tmp_path)
    store = dispatcher.store
    alice, bob = new_session_id(), new_session_id()
    splits = {"train": {"red": 4, "blue": 4}, "val": {"red": 2, "blue": 2}}
    folder = write_image_folder(tmp_path / "t", {}, size=16, splits=splits)
    data = make_zip(folder, tmp_path / "t.zip").read_bytes()
    target_a = load_uploaded_target(alice, "t.zip", data)
    target_b = load_uploaded_target(bob, "t.zip", data)
    run_dir = session_dir(alice, "runs") / "run-1"
    config = DistillConfig(method="ce", student="test_resnet", epochs=1, batch_size=4, device="cpu")
    repo = TeacherRepository.from_folder(teacher_dir)
    try:
        job_a = submit_distill(store, alice, target=target_a.source, extract_dir=str(session_dir(alice, "targets")),
                               teacher=None, config=config, run_dir=run_dir, label="distill")
        dispatcher.kick()
        ranked = rank(target_b, repo, metrics=["scd", "leep"], device="cpu").names  # meanwhile, here
        done_a = _wait(store, job_a, 180)
        assert done_a.status is JobStatus.FINISHED, done_a.error
        assert ranked == ["t"]
        assert [j.id for j in store.jobs(alice)] == [job_a] and store.jobs(bob) == []
        assert store.get(job_a, session=bob) is None and not store.request_cancel(job_a, session=bob)
        assert not store.forget(job_a, session=bob)
        assert (run_dir / "student" / "config.json").is_file()
        assert target_a.root != target_b.root and session_dir(bob) in target_b.root.parents
        assert not any(session_dir(bob).rglob("run.json"))  # bob's folders hold no trace of alice's run
    finally:
        dispatcher.shutdown()
        remove_session(alice)
        remove_session(bob)


def test_a_cancelled_real_run_never_held_models_in_the_server_process(teacher_dir, tmp_path, monkeypatch):
    import timm

    from scd_core.distill.trainer import DistillConfig

    created: list[weakref.ref] = []
    original = timm.create_model

    def tracking(*args, **kwargs):
        model = original(*args, **kwargs)
        created.append(weakref.ref(model))
        return model

    monkeypatch.setattr(timm, "create_model", tracking)
    folder = write_image_folder(tmp_path / "t", {"red": 6, "blue": 6}, size=16)
    teacher = spec_from_folder(teacher_dir)
    config = DistillConfig(method="scd", student="test_resnet", epochs=500, batch_size=4, device="cpu")
    dispatcher = _dispatcher(tmp_path)
    store = dispatcher.store
    try:
        job_id = submit_distill(store, "s", target=str(folder), extract_dir=None, teacher=teacher, config=config,
                                run_dir=tmp_path / "run", label="long")
        dispatcher.kick()
        _wait(store, job_id, 180, until=lambda j: j.history or not j.active)
        assert store.request_cancel(job_id, session="s"), store.get(job_id).error
        assert _wait(store, job_id, 30).status is JobStatus.CANCELLED
    finally:
        dispatcher.shutdown()
    assert created == []  # the teacher and the student lived in the worker, never in this process


# -- workspace size limit ------------------------------------------------------------------------


def _entry(entry: Path, rel: str | None, size: int, age: float) -> Path:
    """A workspace entry (a folder holding ``rel``, or a file when ``rel`` is None), last modified ``age`` s ago."""
    file = entry / rel if rel else entry
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"x" * size)
    stamp = time.time() - age
    for path in [*(entry.rglob("*") if rel else []), entry]:
        os.utime(path, (stamp, stamp))
    return entry


def test_workspace_limit_evicts_oldest_entries_not_in_use(ws):
    s = ws / "sessions" / "s1"
    old_run = _entry(s / "runs" / "r-old", "run.json", 4000, age=5000)
    old_zip = _entry(s / "uploads" / "targets" / "old.zip", None, 4000, age=4000)
    held_target = _entry(s / "targets" / "held", "a/0.png", 4000, age=3000)
    kept_teacher = _entry(s / "teachers" / "kept", "config.json", 4000, age=2500)
    mid_cli = _entry(ws / "uploads" / "targets" / "cli", "a.png", 4000, age=2000)
    young_run = _entry(ws / "runs" / "young", "run.json", 4000, age=10)
    demo = _entry(ws / "demo" / "world", "big.bin", 8000, age=9000)
    stale_tmp = _entry(s / "targets" / ".extract-crashed", "x.png", 100, age=2 * 86400)
    assert workspace.usage_bytes() == 4000 * 6 + 8000 + 100
    with workspace.hold(held_target / "a"):
        assert workspace.in_use(held_target)
        removed = workspace.enforce_limit(8000 + 3 * 4000, keep=[kept_teacher], min_age_s=60)
    assert removed == [old_run, old_zip, mid_cli]  # oldest first, until the limit is met
    for gone in (old_run, old_zip, mid_cli, stale_tmp):
        assert not gone.exists()
    for kept in (held_target, kept_teacher, young_run, demo):  # held, kept, young, demo: never evicted
        assert kept.exists()
    assert not workspace.in_use(held_target)
    with workspace.hold(held_target):  # without the age guard: only what is held or kept survives
        assert workspace.enforce_limit(1, keep=[kept_teacher], min_age_s=0) == [young_run]
    assert held_target.exists() and kept_teacher.exists()
    assert sorted(workspace.enforce_limit(1, min_age_s=0)) == sorted([held_target, kept_teacher])
    assert demo.exists() and workspace.usage_bytes() == 8000  # demo worlds are never evicted


def test_workspace_limit_applies_to_uploads(ws, monkeypatch):
    monkeypatch.setenv("SCD_WORKSPACE_MIN_AGE_S", "0")
    old_session, new_session = new_session_id(), new_session_id()
    old = load_uploaded_target(old_session, "old.zip", _zip(_good(("a", "b"), 3)))
    for path in (*session_dir(old_session).rglob("*"), old.root):
        os.utime(path, (1000, 1000))
    monkeypatch.setenv("SCD_WORKSPACE_MAX_BYTES", str(workspace.usage_bytes() + 3000))
    new = load_uploaded_target(new_session, "new.zip", _zip(_good(("c", "d"), 3)))
    assert not any(session_dir(old_session, "uploads").rglob("*.zip")) and not old.root.exists()
    assert new.root.exists() and any(session_dir(new_session, "uploads").rglob("*.zip"))
    assert workspace.usage_bytes() <= workspace.max_bytes()


def test_a_running_distillation_holds_its_files(monkeypatch, tmp_path, ws):
    from scd_core.distill import trainer
    from scd_core.distill.trainer import DistillConfig

    seen = {}

    class Result:
        def __init__(self, run_dir) -> None:
            self.run_dir = str(run_dir)

        def to_json(self) -> dict:
            return {"run_dir": self.run_dir, "status": "finished"}

    def fake_distill(target, teacher, config, *, progress, cancel, run_dir):
        seen["target"] = workspace.in_use(target.root / "a")
        seen["run"] = workspace.in_use(run_dir)
        Path(run_dir).mkdir(parents=True)
        return Result(run_dir)

    monkeypatch.setattr(trainer, "distill", fake_distill)
    folder = write_image_folder(tmp_path / "t", {"a": 2, "b": 2})
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = submit_distill(store, "s", target=str(folder), extract_dir=None, teacher=None,
                            config=DistillConfig(method="ce"), run_dir=tmp_path / "run", label="x")
    assert store.claim(job_id)
    assert run_job(str(store.path), job_id) == "finished"  # the worker's entry point, here in this process
    assert seen == {"target": True, "run": True}
    assert store.get(job_id).result["run_dir"] == str(tmp_path / "run")  # published under its final name
    assert not workspace.in_use(folder) and not workspace.in_use(tmp_path / "run")


# ------------------------------------------------------------------------------------------------
# The inventory
# ------------------------------------------------------------------------------------------------

HOSTILE = {
    "archives (target uploads)": len(ARCHIVE_CASES),
    "archives (teacher uploads)": len(ARCHIVE_CASES),
    "target-set content": len(TARGET_CASES),
    "images": len(IMAGE_CASES),
    "teacher uploads": len(TEACHER_CASES),
    "pickles in server folders": len(PICKLE_CASES),
    "symbolic links in server folders": len(SYMLINK_CASES),
    "corrupted cache entries": len(CACHE_CASES),
    "numerics (fixed cases)": len(NUMERIC_CASES),
    "numerics (hypothesis examples, 4 properties x up to 25)": 4 * 25,
}
ACCEPTED = {"target sets": len(ACCEPTED_TARGETS), "image modes": len(IMAGE_MODES), "teacher uploads": 2}


def test_hostile_inventory(capsys):
    """The count of hostile inputs tried, per category (shown with ``pytest -s`` or ``-rP``)."""
    with capsys.disabled():
        print("\nhostile inputs tried:")
        for category, count in HOSTILE.items():
            print(f"  {count:4d}  {category}")
        print(f"  {sum(HOSTILE.values()):4d}  in all; accepted real-world inputs: "
              + ", ".join(f"{v} {k}" for k, v in ACCEPTED.items()))
    assert len({c.id for c in ARCHIVE_CASES + TARGET_CASES + IMAGE_CASES + TEACHER_CASES}) == (
        len(ARCHIVE_CASES) + len(TARGET_CASES) + len(IMAGE_CASES) + len(TEACHER_CASES))
    assert min(HOSTILE.values()) >= 2
