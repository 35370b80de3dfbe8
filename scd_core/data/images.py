"""Reading user images safely: every supported format and mode becomes an RGB PIL image.

Policy for bad images: **refuse**. A target set is validated by fully decoding every image once
(:func:`check_image_bytes`), so a truncated or corrupt file, a file that only pretends to be an image
(an HTML page named ``.jpg``, a zip named ``.png``), an image format outside PNG, JPEG, BMP, GIF, WebP
and TIFF, or an image over the pixel limit raises :class:`~scd_core.errors.TargetSetError` naming the
file, instead of failing (or being silently skipped) in the middle of a ranking or a distillation run.
A real image whose suffix names another format (a PNG saved as ``.jpg``) is accepted: the content
decides.

Only the PIL plugins of the supported formats are ever used to open a file (never e.g. EPS, whose
plugin runs Ghostscript). The pixel limit is ``SCD_MAX_IMAGE_PIXELS`` (default 64 megapixels) and is
checked from the header, before any pixel is decoded; PIL's own decompression-bomb errors become
the same refusal. Every mode is converted to 8-bit RGB: the first frame of animations, alpha
dropped, palettes expanded, CMYK and YCbCr converted, and 16/32-bit integer or float greyscale
rescaled to 0..255 (not clipped).
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from scd_core.config import settings
from scd_core.errors import TargetSetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PIL_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "WEBP", "TIFF"})
# The PIL plugins allowed to open a file (MPO files are opened by the JPEG plugin).
_OPEN_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP", "TIFF")
# What PIL's decoders raise on malformed data (struct.error for short TIFF/BMP headers, etc.).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, MemoryError, TypeError, KeyError, IndexError,
                  ZeroDivisionError, struct.error, Image.DecompressionBombWarning)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def max_image_pixels() -> int:
    """The pixel limit: ``SCD_MAX_IMAGE_PIXELS`` (default 64 megapixels, far below what exhausts memory)."""
    return settings().max_image_pixels


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (``img`` is already at the frame to use)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale: rescale, never clip
        # 32-bit integers and floats carry no range: values within 0..1 (float), 0..255 or 0..65535 are
        # read as that range; anything else is stretched from its minimum to its maximum.
        # float32 and in place: a 64-megapixel 16-bit image costs about 0.3 GB here, not several float64 copies
        arr = np.array(img, dtype=np.float32)  # our own copy: rescaled in place below
        if arr.ndim == 3:  # (H, W, 1) for some I;16 variants
            arr = arr[..., 0]
        if mode == "F" and not np.isfinite(arr).all():
            finite = arr[np.isfinite(arr)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            del finite
        else:
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if mode.startswith("I;16"):  # the bit depth is known: the full 16-bit range maps onto 0..255
            scale, lo = 255.0 / 65535.0, 0.0
        elif mode == "F" and lo >= 0.0 and hi <= 1.0:
            scale, lo = 255.0, 0.0
        elif lo >= 0.0 and hi <= 255.0:
            scale, lo = 1.0, 0.0
        elif lo >= 0.0 and hi <= 65535.0:
            scale, lo = 255.0 / 65535.0, 0.0
        else:
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey = arr
        grey -= np.float32(lo)
        grey *= np.float32(scale)
        np.nan_to_num(grey, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.rint(grey, out=grey)
        np.clip(grey, 0, 255, out=grey)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if mode in ("P", "PA", "LA", "La") or "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


# EXIF orientation -> the transpose that shows the image upright (EXIF 2.3, tag 0x0112; 1 is upright already)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of the decoded file (phone photos store the sensor's pixels and a rotation tag);
    1 when there is none or the EXIF block is malformed (orientation is a courtesy: it never refuses an image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; the user gets the pixels as stored
            value = img.getexif().get(0x0112, 1)
        return value if isinstance(value, int) else 1
    except Exception:  # any parse failure means "no usable tag"
        return 1


def _decode(fp: str | Path | IO[bytes], name: str) -> Image.Image:
    """Open with the allowed plugins only, check the pixel limit from the header, decode frame 0 to RGB."""
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(fp, formats=_OPEN_FORMATS) as img:
                fmt, (w, h) = img.format, img.size
                if fmt not in PIL_FORMATS:
                    raise TargetSetError(f"{name}: unsupported image format {fmt}")
                if w < 1 or h < 1:
                    raise TargetSetError(f"{name}: empty image ({w}x{h} pixels)")
                if w * h > limit:
                    raise TargetSetError(f"{name}: image of {w}x{h} pixels exceeds the limit of {limit} pixels")
                img.seek(0)
                img.load()
                rgb = _to_rgb(img)  # the 16-bit and float paths build a new image without the file's EXIF
                turn = _UPRIGHT.get(_orientation(img))
                return rgb.transpose(turn) if turn is not None else rgb
    except TargetSetError:
        raise
    except Image.DecompressionBombError as exc:
        raise TargetSetError(f"{name}: image exceeds the pixel limit (decompression bomb: {exc})") from exc
    except UnidentifiedImageError as exc:
        raise TargetSetError(f"{name}: not a readable image (not PNG, JPEG, BMP, GIF, WebP or TIFF content)") \
            from exc
    except _DECODE_ERRORS as exc:
        raise TargetSetError(f"{name}: truncated or corrupt image ({type(exc).__name__}: {exc})") from exc


def check_image_bytes(data: bytes, name: str) -> tuple[int, int]:
    """Validate an image completely (format, size, every byte decodes); returns (width, height)."""
    if not data:
        raise TargetSetError(f"{name}: empty file, not a readable image")
    return _decode(io.BytesIO(data), name).size


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB: first frame of animations, alpha dropped, any mode converted."""
    return _decode(path, str(path))
