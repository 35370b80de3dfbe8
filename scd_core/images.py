"""Reading user images safely: every supported format and mode becomes an RGB PIL image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import TargetSetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PIL_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "WEBP", "TIFF"})
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs well before they exhaust memory


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def check_image_bytes(data: bytes, name: str) -> tuple[int, int]:
    """Validate an image's header (format, size) without decoding pixels; returns (width, height)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TargetSetError(f"{name}: not a readable image ({exc.__class__.__name__})") from exc
    if fmt not in PIL_FORMATS:
        raise TargetSetError(f"{name}: unsupported image format {fmt}")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise TargetSetError(f"{name}: image of {size[0]}x{size[1]} pixels exceeds the limit of "
                             f"{MAX_IMAGE_PIXELS} pixels")
    if size[0] < 1 or size[1] < 1:
        raise TargetSetError(f"{name}: empty image")
    return size


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB: first frame of animations, alpha dropped, any mode converted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                    raise TargetSetError(f"{path}: image exceeds the limit of {MAX_IMAGE_PIXELS} pixels")
                img.seek(0)
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8-bit before RGB
                    img = img.point(lambda v: v / 256).convert("L")
                if img.mode in ("P", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    img = img.convert("RGBA")
                return img.convert("RGB")
    except TargetSetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise TargetSetError(f"{path}: cannot decode image ({exc})") from exc
