"""Test helpers that write real files: images in every format and mode, ImageFolders, CSVs, zips, teachers.

Everything here is deterministic for a given ``seed`` and small (16-32 px images, ``test_resnet``
teachers) so tests stay fast on a CPU.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# suffix -> PIL format name
FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WEBP",
    "tif": "TIFF",
    "tiff": "TIFF",
}


def _seed_of(*parts: object) -> int:
    """A stable 32-bit seed from arbitrary parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def class_color(name: str) -> tuple[int, int, int]:
    """A stable, class-specific mean colour, so images of one class look alike (learnable)."""
    digest = hashlib.sha256(name.encode()).digest()
    return digest[0], digest[1], digest[2]


def rgb_array(size: int | tuple[int, int] = 16, seed: int = 0, color: Sequence[int] | None = None,
              noise: int = 40) -> np.ndarray:
    """A uint8 HxWx3 array: ``color`` (default random) plus uniform noise of +-``noise``."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    base = np.array(color if color is not None else rng.integers(0, 256, 3), dtype=np.int16)
    pixels = base + rng.integers(-noise, noise + 1, (h, w, 3), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_image(size: int | tuple[int, int] = 16, mode: str = "RGB", seed: int = 0,
               color: Sequence[int] | None = None) -> Image.Image:
    """A PIL image in any mode: RGB, RGBA, L, LA, 1, P (palette), CMYK, I;16, I, F."""
    rgb = Image.fromarray(rgb_array(size, seed, color))
    if mode == "RGB":
        return rgb
    if mode == "I;16":  # 16-bit grey, full 0..65535 range
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(grey)
    if mode == "RGBA":
        alpha = Image.fromarray(np.random.default_rng(seed + 1).integers(0, 256, rgb.size[::-1], dtype=np.uint8))
        img = rgb.convert("RGBA")
        img.putalpha(alpha)
        return img
    if mode == "P":
        return rgb.quantize(colors=16)
    return rgb.convert(mode)


def write_image(path: str | Path, size: int | tuple[int, int] = 16, mode: str = "RGB", seed: int = 0,
                color: Sequence[int] | None = None, frames: int = 1, transparency: bool = False) -> Path:
    """Write one real image; the format follows the suffix. ``frames > 1`` writes an animated GIF/WebP/PNG;
    ``transparency`` marks palette index 0 as transparent (mode ``P``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[path.suffix.lower().lstrip(".")]
    img = make_image(size, mode, seed, color)
    kwargs: dict = {}
    if transparency:
        kwargs["transparency"] = 0
    if frames > 1:
        extra = [make_image(size, mode, seed + 1000 + i) for i in range(frames - 1)]
        kwargs.update(save_all=True, append_images=extra, duration=40, loop=0)
    if fmt == "JPEG":
        kwargs["quality"] = 90
    img.save(path, format=fmt, **kwargs)
    return path


def write_class_images(folder: str | Path, count: int, size: int = 16, fmt: str = "png", seed: int = 0,
                       color: Sequence[int] | None = None, start: int = 0) -> list[Path]:
    """``count`` distinct images ``<folder>/<i>.<fmt>`` around ``color``."""
    folder = Path(folder)
    return [write_image(folder / f"{i:03d}.{fmt}", size, seed=_seed_of(seed, str(folder.name), i), color=color)
            for i in range(start, start + count)]


def write_image_folder(root: str | Path, classes: Mapping[str, int], size: int = 16, fmt: str = "png",
                       splits: Iterable[str] | Mapping[str, Mapping[str, int]] | None = None,
                       unlabeled: int = 0, seed: int = 0) -> Path:
    """Write an ImageFolder target set and return ``root``.

    - ``splits=None``: ``<root>/<class>/<i>.<fmt>`` with ``classes[class]`` images each;
    - ``splits=("train", "val", ...)``: the same class counts under every split folder;
    - ``splits={"train": {...}, "test": {...}}``: explicit counts per split and class (``classes`` unused).
    ``unlabeled`` images go to ``<root>/unlabeled/``. Every image is distinct (its own noise), and
    images of a class share a class colour, so a tiny network can learn the task.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if splits is None:
        layout: dict[str | None, Mapping[str, int]] = {None: classes}
    elif isinstance(splits, Mapping):
        layout = dict(splits)
    else:
        layout = {s: classes for s in splits}
    for split, counts in layout.items():
        base = root / split if split else root
        for name, count in counts.items():
            write_class_images(base / name, count, size, fmt, seed=_seed_of(seed, split), color=class_color(name))
    if unlabeled:
        write_class_images(root / "unlabeled", unlabeled, size, fmt, seed=_seed_of(seed, "unlabeled"))
    return root


def write_csv(csv_path: str | Path, rows: Iterable[Sequence[str]], header: Sequence[str] = ("path", "label"),
              encoding: str = "utf-8") -> Path:
    """Write a CSV (``header`` then ``rows``) in the given encoding."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return csv_path


def write_csv_target(root: str | Path, labels: Mapping[str, str | None], size: int = 16, fmt: str = "png",
                     splits: Mapping[str, str] | None = None, csv_name: str = "labels.csv",
                     encoding: str = "utf-8", seed: int = 0) -> Path:
    """Write images ``<root>/<rel>`` for each ``rel -> label`` (None: unlabeled, empty cell) and a CSV
    ``path,label[,split]`` beside them; returns the CSV's path."""
    root = Path(root)
    rows = []
    for i, (rel, label) in enumerate(labels.items()):
        color = class_color(label) if label else None
        write_image(root / rel, size, seed=_seed_of(seed, rel, i), color=color)
        row = [rel, label or ""]
        if splits is not None:
            row.append(splits.get(rel, ""))
        rows.append(row)
    header = ("path", "label", "split") if splits is not None else ("path", "label")
    return write_csv(root / csv_name, rows, header, encoding)


class _RawNameInfo(zipfile.ZipInfo):
    """A ZipInfo whose name is stored as given bytes, without the UTF-8 flag (as old zip tools do)."""

    raw_name: bytes = b""

    def _encodeFilenameFlags(self):  # overrides a private zipfile hook
        return self.raw_name, self.flag_bits & ~0x800


def make_zip(src_dir: str | Path, zip_path: str | Path, prefix: str | None = None,
             legacy_encoding: str | None = None, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Zip every file under ``src_dir`` (paths relative to it, under ``prefix/`` when given).

    ``legacy_encoding`` (e.g. ``"utf-8"`` or ``"cp437"``) stores names in that encoding *without* the
    zip UTF-8 flag, like Windows Explorer or old macOS tools; by default Python's zipfile sets the flag
    for non-ASCII names.
    """
    src_dir, zip_path = Path(src_dir), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
        for file in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            name = file.relative_to(src_dir).as_posix()
            if prefix:
                name = f"{prefix.strip('/')}/{name}"
            if legacy_encoding is None:
                zf.write(file, name)
                continue
            info = _RawNameInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.raw_name = name.encode(legacy_encoding)
            info.compress_type = compression
            zf.writestr(info, file.read_bytes())
    return zip_path


def make_teacher(folder: str | Path, num_classes: int, arch: str = "test_resnet",
                 labels: Sequence[str] | None = None, img_size: int = 16, seed: int = 0,
                 description: str | None = None, model_args: Mapping | None = None) -> Path:
    """Write a teacher folder (config.json + model.safetensors) of a randomly initialised timm model.

    ``labels`` default to ``t0..t{K-1}``; the teacher's eval transform works at ``img_size``.
    """
    import timm
    import torch

    from scd_core.teachers.repository import save_teacher

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **dict(model_args or {}))
    with torch.no_grad():  # timm zero-inits some heads; make outputs depend on the weights
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.1)
    labels = list(labels) if labels is not None else [f"t{i}" for i in range(num_classes)]
    data_config = {"input_size": (3, img_size, img_size), "crop_pct": 1.0}
    return save_teacher(model.eval(), labels, folder, description=description, data_config=data_config)


def write_teacher_config(folder: str | Path, config: Mapping, weights: bytes | None = b"\0") -> Path:
    """A teacher folder with a hand-written config.json (and a placeholder weights file unless None):
    enough for spec-level tests that never load weights."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config)), encoding="utf-8")
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def zip_bytes(files: Mapping[str, bytes]) -> bytes:
    """An in-memory zip holding ``files`` (archive name -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()
