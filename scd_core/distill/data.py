"""The images a run trains and evaluates on, decoded once, and their batched augmentation.

Images are decoded once into a uint8 tensor at the student's resolution; augmentation (random
translation and scale, optional flips) runs batched on the device with one ``grid_sample`` call.
The labeled ``train`` images come first in the pool, then (for teacher methods) the ``unlabeled`` ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scd_core.data.images import load_rgb
from scd_core.data.targets import TargetItem, TargetSet

STUDENT_MEAN = (0.5, 0.5, 0.5)
STUDENT_STD = (0.5, 0.5, 0.5)


def infer_image_size(items: list[TargetItem], sample: int = 64) -> int:
    """Median of the longer side of a sample of images, rounded to 8 and clipped to [32, 224]."""
    sides = []
    for it in items[:sample]:
        with Image.open(it.path) as img:
            sides.append(max(img.size))
    side = int(np.median(sides)) if sides else 64
    return int(min(224, max(32, 8 * round(side / 8))))


def preload_images(items: list[TargetItem], size: int) -> torch.Tensor:
    """Decode every image once to a (N, 3, size, size) uint8 tensor (RGB, bilinear resize)."""
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
    for i, it in enumerate(items):
        img = load_rgb(it.path).resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def labels_of(items: list[TargetItem]) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> (x / 255 - mean) / std with the student's mean and std."""
    mean = torch.tensor(STUDENT_MEAN, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(STUDENT_STD, device=images_u8.device).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translation (up to 1/8 of the side), scale (0.9-1.1) and optional flip, in one call."""
    b = images.shape[0]
    rand = torch.rand((b, 4), generator=generator).to(images.device)
    scale = 0.9 + 0.2 * rand[:, 0]
    sign = torch.where(rand[:, 3] < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=images.device)
    theta = torch.zeros((b, 2, 3), device=images.device)
    theta[:, 0, 0] = scale * sign
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = (rand[:, 1] - 0.5) * 0.25
    theta[:, 1, 2] = (rand[:, 2] - 0.5) * 0.25
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class TrainData:
    """The decoded pool (labeled first, then unlabeled) and the validation split."""

    labeled: list[TargetItem]
    unlabeled: list[TargetItem]
    size: int
    images: torch.Tensor  # (n_lab + n_unl, 3, size, size) uint8
    labels: torch.Tensor  # (n_lab + n_unl,), -1 for unlabeled images
    val_images: torch.Tensor
    val_labels: torch.Tensor
    budget_pool: int  # images per epoch: labeled + the target's unlabeled pool, whatever the method

    @property
    def pool(self) -> list[TargetItem]:
        return self.labeled + self.unlabeled


def load_data(target: TargetSet, *, use_unlabeled: bool, budget_unlabeled: bool,
              image_size: int | None = None) -> TrainData:
    """Decode the labeled train images, the unlabeled pool (when ``use_unlabeled``) and ``val``.

    ``budget_unlabeled``: count the target's unlabeled pool in an epoch even when this method does
    not train on it, so a teacher-free baseline gets as many optimizer steps as a teacher run.
    """
    labeled = [it for it in target.split("train") if it.label >= 0]
    unlabeled = target.split("unlabeled") if use_unlabeled else []
    val = target.split("val")
    size = image_size or infer_image_size(labeled)
    pool = labeled + unlabeled
    return TrainData(
        labeled=labeled, unlabeled=unlabeled, size=size, images=preload_images(pool, size), labels=labels_of(pool),
        val_images=preload_images(val, size), val_labels=labels_of(val),
        budget_pool=len(labeled) + (len(target.split("unlabeled")) if budget_unlabeled else 0),
    )


def without_unlabeled(data: TrainData) -> TrainData:
    """The same data with the unlabeled images dropped from the pool (the epoch budget unchanged)."""
    n = len(data.labeled)
    return replace(data, unlabeled=[], images=data.images[:n], labels=data.labels[:n])


class IndexStream:
    """Endless seeded permutations of range(n), shifted by ``offset``: every image once per cycle."""

    def __init__(self, n: int, generator: torch.Generator, offset: int = 0) -> None:
        if n < 1:  # take() would wait forever for indices of nothing
            raise ValueError("IndexStream needs at least one index to draw from")
        self.n, self.gen, self.offset = n, generator, offset
        self.buffer = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while self.buffer.numel() < k:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.gen)])
        out, self.buffer = self.buffer[:k], self.buffer[k:]
        return out + self.offset
