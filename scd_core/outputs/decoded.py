"""One decoded and resized pass over a target set, shared by every teacher with the same geometry.

A timm eval transform is ``[Resize, CenterCrop, ToTensor, Normalize]``: the first two steps (the
*geometry*) work on PIL images and are where the time goes (decoding a PNG/JPEG and resampling it),
the last two are per-pixel arithmetic x = (u / 255 - mean) / std. Most models share the geometry
(224 px, crop 0.875, bicubic) and differ at most in mean and std, so the geometric part runs once per
target set, in DataLoader worker processes, and its uint8 result (N, 3, H, W) is stored in the
workspace cache keyed by the geometry's fingerprint and the images' content. Every teacher then
reads batches of uint8 pixels, moves them to the device (4x fewer bytes than float32; pinned memory
on CUDA) and normalises them there with the same float32 operations ToTensor and Normalize use, so
the result equals the per-teacher PIL pipeline bit for bit.

Stores live next to the output entries (``<cache>/outputs/decoded-<key>/``) and count towards the
same size limit (least-recently-used eviction). Writes go to a temporary folder renamed into place;
a store whose checksum does not match is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scd_core.data.images import load_rgb
from scd_core.data.targets import TargetItem
from scd_core.fingerprint import combine, file_sha256, json_sha256
from scd_core.outputs import cache

STORE_VERSION = "decoded-v2"  # v2: images are turned upright by their EXIF orientation
__all__ = ["DecodedStore", "Geometry", "decoded_store", "split_transform"]


@dataclass(frozen=True)
class Geometry:
    """The PIL part of an eval transform, and the per-channel normalisation applied after it."""

    pil_transform: object  # callable PIL.Image -> PIL.Image (Resize, CenterCrop, ...)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str  # of the PIL part only: teachers that differ in mean/std still share pixels


def split_transform(transform) -> Geometry | None:
    """Split a torchvision ``Compose`` into its PIL steps and a final ``ToTensor, Normalize``.

    Returns None when the transform has any other shape (then the caller decodes per teacher).
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize):
        return None
    to_tensor = steps[-2]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    geometric = steps[:-2]
    allowed = (T.Resize, T.CenterCrop)
    if not all(isinstance(s, allowed) for s in geometric):
        return None
    fixed = geometric and (isinstance(geometric[-1], T.CenterCrop)
                           or (isinstance(geometric[-1].size, Sequence) and len(geometric[-1].size) == 2))
    if not fixed:  # images of different sizes cannot be stacked into one store
        return None
    norm = steps[-1]
    mean = tuple(float(v) for v in torch.as_tensor(norm.mean).flatten().tolist())
    std = tuple(float(v) for v in torch.as_tensor(norm.std).flatten().tolist())
    if len(mean) != 3 or len(std) != 3:
        return None
    return Geometry(T.Compose(geometric), mean, std, json_sha256([repr(s) for s in geometric]))


class _DecodeDataset(Dataset):
    """Image ``i`` decoded to RGB, through the geometric steps, as a uint8 (3, H, W) tensor."""

    def __init__(self, items: Sequence[TargetItem], pil_transform) -> None:
        self.paths = [it.path for it in items]
        self.pil_transform = pil_transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.pil_transform(load_rgb(self.paths[index]))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(u / 255 - mean) / std in float32 on ``pixels``' device, exactly as ToTensor + Normalize compute it."""
    x = pixels.to(torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


class DecodedStore:
    """A published store: uint8 pixels (N, 3, H, W), memory-mapped, in the order of the items."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pixels: np.ndarray = np.load(folder / "pixels.npy", mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, slice]]:
        """Contiguous uint8 batches ``(pixels (B, 3, H, W), rows)``, pinned when asked (CUDA transfers)."""
        n = len(self)
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            batch = torch.from_numpy(np.array(self.pixels[rows]))  # a writable copy, read from disk
            yield (batch.pin_memory() if pin_memory else batch), rows


def store_key(geometry: Geometry, items_fingerprint: str) -> str:
    return "decoded-" + combine(STORE_VERSION, geometry.fingerprint, items_fingerprint)[:40]


def _load(folder: Path) -> DecodedStore | None:
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if file_sha256(folder / "pixels.npy") != meta["checksum"]:  # memoised by (inode, size, mtime)
            raise ValueError("checksum mismatch")
        store = DecodedStore(folder)
        if store.pixels.dtype != np.uint8 or store.pixels.ndim != 4 or len(store) != meta["images"]:
            raise ValueError("inconsistent store")
        os.utime(folder)  # least-recently-used eviction looks at this
        return store
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        return None


def decoded_store(items: Sequence[TargetItem], items_fingerprint: str, geometry: Geometry, *,
                  num_workers: int = 0, batch_size: int = 64, progress=None) -> DecodedStore:
    """The store for these items and this geometry: from the cache, or decoded now and published.

    ``progress(fraction, message)`` is called per decoded batch. Decoding runs in ``num_workers``
    DataLoader processes (0: in this process).
    """
    folder = cache.entry_dir(store_key(geometry, items_fingerprint))
    if (hit := _load(folder)) is not None:
        return hit
    n = len(items)
    loader = DataLoader(_DecodeDataset(items, geometry.pil_transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, persistent_workers=False)
    tmp = cache.new_entry_dir()
    t0 = time.perf_counter()
    try:
        done = 0
        with open(tmp / "pixels.npy", "wb") as fh:
            for batch in loader:
                if done == 0:
                    np.lib.format.write_array_header_1_0(
                        fh, {"descr": np.dtype(np.uint8).str, "fortran_order": False,
                             "shape": (n, *batch.shape[1:])})
                fh.write(batch.numpy().tobytes())
                done += batch.shape[0]
                if progress:
                    progress(done / max(n, 1), f"decoding images: {done}/{n}")
            if done == 0:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (0, 3, 1, 1)})
        meta = {"images": n, "checksum": file_sha256(tmp / "pixels.npy"), "geometry": geometry.fingerprint,
                "created": time.time(), "decode_s": time.perf_counter() - t0}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process published the same store first: theirs is as good
            os.replace(tmp, folder)
        cache.evict(keep=folder.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    store = _load(folder)
    if store is None:
        raise RuntimeError("decoded image store vanished right after it was written")
    return store
