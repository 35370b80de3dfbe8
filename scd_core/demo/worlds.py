"""Demo worlds: a target set and a zoo of teachers with known relationships to it, built offline.

Two worlds ship with the engine, both built from nothing but a seed (no download):

- ``shapes``: procedurally drawn RGB images of a coloured shape (circle, square, triangle, star, heart)
  filled with a pattern (plain, striped, dotted, checked), of random size, position and tilt, on a
  tinted background with clutter (lines, grey blobs) and pixel noise. The target combines colour and
  shape ("red circle", "blue square", ...); the teachers were trained on other label spaces over the
  same kind of images (the same six classes, a superset, shape only, colour only, pattern only, noisy
  labels, and an untrained network).
- ``digits``: the real handwritten digits that ship with scikit-learn (8x8, 1797 images), upscaled
  with small random affine jitter onto paper-like RGB images. The target is the digits 0-5; the
  teachers saw all digits, other digits, or groupings (parity, ranges, residues mod 3, curved versus
  straight strokes), plus a noisy-label and an untrained teacher. Target and teachers use disjoint
  source images.

A built world is a folder::

    <root>/world.json                      manifest: target counts, teachers, their held-out accuracy
    <root>/target/{train,val,test}/<class>/*.png
    <root>/target/unlabeled/*.png
    <root>/teachers/<teacher>/{config.json,model.safetensors}

The target folder is an ordinary ImageFolder and goes through the same loader as a user's upload; the
teachers folder is an ordinary teacher repository. :func:`ensure_world` builds a world once into the
workspace and reuses it afterwards; :func:`world_description` explains which teachers should help.
``world.json`` also records the hidden labels of the unlabeled pool (outside the target folder, so no
loader sees them) and each teacher's accuracy on held-out images of its own task.

Sizes: ``full`` (the demo; about 60 s of one CPU core per world, teacher training included) and
``small`` (for tests; a few seconds, same layout and label spaces, teachers only partly trained).
A build is deterministic for a seed: the same PNG bytes and teacher weights (torch is pinned to
:data:`BUILD_THREADS` threads during the build).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scd_core.config import settings
from scd_core.errors import ScdError
from scd_core.utils import slug

WORLDS: tuple[str, ...] = ("shapes", "digits")
SIZES: tuple[str, ...] = ("full", "small")
VERSION = 1
MANIFEST_NAME = "world.json"

ProgressFn = Callable[[float, str], None]

# peak learning rates (AdamW, one-cycle) that train each tiny timm architecture fast at 32 px
_LR = {"test_resnet": 5e-3, "test_efficientnet": 1e-2, "test_efficientnet_gn": 5e-3, "test_convnext": 5e-3,
       "test_vit": 2e-3}
# torch threads during a build: these tiny models gain little from a second thread (about 1.3x)
# but lose a lot when the cores are shared (threads spin at every barrier), and a fixed count keeps
# the teachers' weights identical from one machine to the next
BUILD_THREADS = 1

_MEAN = (0.485, 0.456, 0.406)  # timm's ImageNet defaults: the teachers' normalisation
_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Public types
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoWorld:
    """A built demo world: where its target set and teacher repository live, and what to expect."""

    name: str
    size: str
    root: Path
    target_dir: Path
    teachers_dir: Path
    seed: int = 0
    class_names: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    #: teacher name -> why it should (or should not) help on the target
    expectations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: teacher name -> expected usefulness: "high", "medium", "low" or "none"
    usefulness: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: the parsed ``world.json``
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def target_spec(self) -> str:
        """How to name this world's target set on the command line."""
        return f"demo:{self.name}"


@dataclass(frozen=True)
class _SizeConfig:
    """How big a world is: image side, images per split and per teacher, training epochs."""

    image: int
    train_per_class: int
    val_per_class: int
    test_per_class: int
    unlabeled: int
    teacher_train: int  # training images per teacher (drawn, or augmented copies of real digits)
    teacher_heldout: int  # shapes: held-out images per teacher (digits: a fifth of the teacher pool)
    epochs: int
    batch: int = 32


# full: the real demo (<= 90 s per world on 2 cores); small: for tests (a few seconds, teachers
# only partly trained, same layout and label spaces).
_CONFIGS: dict[tuple[str, str], _SizeConfig] = {
    ("shapes", "full"): _SizeConfig(image=32, train_per_class=8, val_per_class=30, test_per_class=30,
                                    unlabeled=300, teacher_train=3000, teacher_heldout=600, epochs=4),
    ("shapes", "small"): _SizeConfig(image=32, train_per_class=3, val_per_class=3, test_per_class=3,
                                     unlabeled=24, teacher_train=640, teacher_heldout=192, epochs=2),
    ("digits", "full"): _SizeConfig(image=32, train_per_class=8, val_per_class=25, test_per_class=25,
                                    unlabeled=240, teacher_train=3000, teacher_heldout=0, epochs=4),
    ("digits", "small"): _SizeConfig(image=32, train_per_class=3, val_per_class=3, test_per_class=3,
                                     unlabeled=24, teacher_train=640, teacher_heldout=0, epochs=2),
}


@dataclass(frozen=True)
class _Teacher:
    """One teacher of a world: its label space (as attribute constraints) and what it should do."""

    name: str
    arch: str
    labels: tuple[str, ...]
    classes: tuple[Any, ...]  # world-specific class definitions, one per label
    description: str
    usefulness: str  # "high" | "medium" | "low" | "none"
    why: str
    label_noise: float = 0.0
    trained: bool = True


# ----------------------------------------------------------------------------------------------
# The shapes world: vectorised drawing
# ----------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = ("red", "green", "blue", "yellow", "purple")
PATTERNS = ("plain", "striped", "dotted", "checked")
_RGB = np.array([
    (0.86, 0.12, 0.12),  # red
    (0.13, 0.62, 0.22),  # green
    (0.16, 0.32, 0.88),  # blue
    (0.96, 0.82, 0.12),  # yellow
    (0.58, 0.22, 0.72),  # purple
], dtype=np.float32)
_SUPERSAMPLE = 2
_RADIUS = (0.24, 0.38)  # circumradius range, fraction of the image side
_TILT = 0.2  # radians
_CHUNK = 256

# the target: three colours x three shapes in a Latin square, so that every shape and every colour
# belongs to exactly two target classes and only the combination identifies the class.
_SHAPES_TARGET = (("red", "circle"), ("red", "square"), ("green", "circle"),
                  ("green", "triangle"), ("blue", "square"), ("blue", "triangle"))


def _shape_class(colour: str | None = None, shape: str | None = None,
                 pattern: str | None = None) -> tuple[int, int, int]:
    """Attribute constraints of one class: indices into COLOURS, SHAPES, PATTERNS; -1 = any."""
    return (COLOURS.index(colour) if colour else -1, SHAPES.index(shape) if shape else -1,
            PATTERNS.index(pattern) if pattern else -1)


def _shape_label(colour: str | None = None, shape: str | None = None, pattern: str | None = None) -> str:
    return " ".join(p for p in (pattern, colour, shape) if p)


def _shapes_teachers() -> list[_Teacher]:
    target = [(_shape_label(c, s), _shape_class(c, s)) for c, s in _SHAPES_TARGET]
    superset = [(_shape_label(c, s), _shape_class(c, s))
                for c in COLOURS[:4] for s in SHAPES[:4]]
    shapes = [(s, _shape_class(shape=s)) for s in SHAPES]
    colours = [(c, _shape_class(colour=c)) for c in COLOURS]
    patterns = [(p, _shape_class(pattern=p)) for p in PATTERNS]

    def make(name: str, arch: str, classes: list[tuple[str, tuple[int, int, int]]], description: str,
             usefulness: str, why: str, **kw: Any) -> _Teacher:
        return _Teacher(name, arch, tuple(n for n, _ in classes), tuple(c for _, c in classes),
                        description, usefulness, why, **kw)

    return [
        make("near_identical", "test_efficientnet", target,
             "Colour-and-shape classifier over the same six classes as the target, own training images.",
             "high", "Same label space as the target (another network, other images): its prediction is "
             "the answer, and the transport plan is close to the identity."),
        make("superset", "test_resnet", superset,
             "Colour-and-shape classifier over 16 combinations of 4 colours and 4 shapes.",
             "high", "Its 16 classes include all six target classes; the plan sends each matching "
             "class to its target class and leaves the yellow and star classes almost empty."),
        make("shape_only", "test_efficientnet_gn", shapes,
             "Shape classifier (circle, square, triangle, star, heart) over all colours and patterns.",
             "medium", "Knows the shape but not the colour: each shape flows to the two target classes "
             "of that shape, so it halves the uncertainty."),
        make("colour_only", "test_vit", colours,
             "Colour classifier (red, green, blue, yellow, purple) over all shapes and patterns.",
             "medium", "Knows the colour but not the shape: each colour flows to the two target classes "
             "of that colour, so it halves the uncertainty."),
        make("pattern_only", "test_resnet", patterns,
             "Fill-pattern classifier (plain, striped, dotted, checked) over all shapes and colours.",
             "none", "The fill pattern is drawn independently of the target class, so its predictions "
             "say nothing about the label (only its low-level features can help)."),
        make("noisy_labels", "test_resnet", superset,
             "Colour-and-shape classifier over 16 combinations, trained with 70% of labels replaced at random.",
             "low", "Same label space as the superset teacher, but most of its training labels were "
             "wrong: its predictions are soft and often off.", label_noise=0.7),
        make("untrained", "test_convnext", superset,
             "Randomly initialised network with the superset's 16 class names, never trained (a control).",
             "none", "Random weights: its outputs carry no information about the images.", trained=False),
    ]


def _shapes_sample(teacher_classes: Sequence[tuple[int, int, int]], n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels uniform over the classes; attributes fixed by the class, the rest uniform."""
    labels = rng.integers(0, len(teacher_classes), n)
    cons = np.asarray(teacher_classes, dtype=np.int64)[labels]
    free = np.stack([rng.integers(0, len(COLOURS), n), rng.integers(0, len(SHAPES), n),
                     rng.integers(0, len(PATTERNS), n)], axis=1)
    attrs = np.where(cons >= 0, cons, free)
    return attrs, labels


def _shape_masks(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-masks (n, R, R) of each image's shape in its own unit coordinates (u right, v down)."""
    inside = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        uu, vv = u[sel], v[sel]
        if name == "circle":
            m = uu * uu + vv * vv <= 0.92 ** 2
        elif name == "square":
            m = np.maximum(np.abs(uu), np.abs(vv)) <= 0.78
        elif name == "triangle":  # pointing up (v down), centroid at the origin
            m = np.ones(uu.shape, dtype=bool)
            for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 - 2 * np.pi / 3):
                m &= uu * np.cos(a) + vv * np.sin(a) <= 0.6
        elif name == "star":  # five points, one pointing up
            rho = np.sqrt(uu * uu + vv * vv)
            phi = np.arctan2(vv, uu) + np.pi / 2
            t = np.mod(phi * 5 / (2 * np.pi), 1.0)
            m = rho <= 0.42 + 0.68 * np.abs(1 - 2 * t) ** 1.3
        else:  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, tip down
            hx, hy = uu * 1.15, -vv * 1.15 + 0.15
            q = hx * hx + hy * hy - 1
            m = q * q * q - hx * hx * hy * hy * hy <= 0
        inside[sel] = m
    return inside


def _pattern_masks(pattern: np.ndarray, x: np.ndarray, y: np.ndarray, angle: np.ndarray,
                   period: np.ndarray) -> np.ndarray:
    """Masks (n, R, R) of the secondary colour of each image's fill pattern (canvas units)."""
    ca, sa = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    a = (x * ca + y * sa) / period[:, None, None]
    b = (-x * sa + y * ca) / period[:, None, None]
    out = np.zeros(a.shape, dtype=bool)
    striped, dotted, checked = (pattern == PATTERNS.index(p) for p in ("striped", "dotted", "checked"))
    if striped.any():
        out[striped] = np.mod(a[striped], 1.0) < 0.45
    if dotted.any():
        da, db = np.mod(a[dotted], 1.0) - 0.5, np.mod(b[dotted], 1.0) - 0.5
        out[dotted] = da * da + db * db < 0.27 ** 2
    if checked.any():
        out[checked] = (np.floor(a[checked]) + np.floor(b[checked])) % 2 == 0
    return out


def render_shapes(attrs: np.ndarray, rng: np.random.Generator, image: int) -> np.ndarray:
    """Draw one image per row of ``attrs`` (colour, shape, pattern indices) as uint8 (n, S, S, 3).

    Size, position, tilt, colour jitter, pattern scale and angle, background tint, gradient,
    clutter and noise are drawn from ``rng``. Fully vectorised with numpy over images and pixels:
    coverage maps (shape, pattern, grey clutter) are drawn at twice the resolution and averaged
    down for smooth edges, then combined with the colours at the final resolution.
    """
    n = len(attrs)
    colour, shape, pattern = attrs[:, 0], attrs[:, 1], attrs[:, 2]
    f32 = np.float32

    def u(lo: float, hi: float, shape_: Any = None) -> np.ndarray:
        return rng.uniform(lo, hi, n if shape_ is None else shape_).astype(f32)

    # per-image parameters, all drawn up front so that the chunking never changes the stream
    radius = u(*_RADIUS)
    cx = (radius * 1.05 + rng.random(n) * (1 - 2.1 * radius)).astype(f32)
    cy = (radius * 1.05 + rng.random(n) * (1 - 2.1 * radius)).astype(f32)
    tilt = u(-_TILT, _TILT)
    fill = np.clip(_RGB[colour] * u(0.85, 1.08, (n, 1)) + rng.normal(0, 0.04, (n, 3)), 0, 1).astype(f32)
    pale = (0.3 * fill + 0.7 * u(0.9, 1.0, (n, 1))).astype(f32)
    p_angle = u(0, np.pi)
    p_period = u(0.13, 0.18)
    bg = np.clip(u(0.55, 0.92, (n, 1)) + rng.normal(0, 0.04, (n, 3)), 0, 1).astype(f32)
    grad = rng.normal(0, 0.12, (n, 2)).astype(f32)
    n_lines, n_blobs = 2, 2
    line_angle = u(0, np.pi, (n, n_lines))
    line_offset = u(-0.5, 0.5, (n, n_lines))
    line_width = u(0.008, 0.025, (n, n_lines))
    blob_xy = u(0, 1, (n, n_blobs, 2))
    blob_r = u(0.03, 0.08, (n, n_blobs))
    grey = u(0.15, 0.85, (n, n_lines + n_blobs))
    alpha = u(0.0, 0.6, (n, n_lines + n_blobs))
    noise_sigma = u(0.015, 0.05)

    r_side = image * _SUPERSAMPLE
    coord = (np.arange(r_side, dtype=f32) + 0.5) / r_side
    gy, gx = coord[None, :, None], coord[None, None, :]
    small = (np.arange(image, dtype=f32) + 0.5) / image
    sy, sx = small[None, :, None], small[None, None, :]
    out = np.empty((n, image, image, 3), dtype=np.uint8)

    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), image, _SUPERSAMPLE, image, _SUPERSAMPLE).mean(axis=(2, 4))

    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))

        def col(a: np.ndarray, sl: slice = sl) -> np.ndarray:  # per-image scalar -> broadcastable
            return a[sl, None, None]

        # grey clutter as one coverage layer: composite = bg * (1 - cover) + value
        cover = np.zeros((sl.stop - sl.start, r_side, r_side), dtype=f32)
        value = np.zeros_like(cover)
        for k in range(n_lines + n_blobs):
            if k < n_lines:
                ang = col(line_angle[:, k])
                dist = (gx - 0.5) * np.cos(ang) + (gy - 0.5) * np.sin(ang) - col(line_offset[:, k])
                on = np.abs(dist) <= col(line_width[:, k])
            else:
                b = k - n_lines
                dx, dy = gx - col(blob_xy[:, b, 0]), gy - col(blob_xy[:, b, 1])
                on = dx * dx + dy * dy <= col(blob_r[:, b]) ** 2
            a = on * col(alpha[:, k])
            value = value * (1 - a) + a * col(grey[:, k])
            cover = cover + a * (1 - cover)
        # the shape, in its own rotated unit coordinates, filled with its pattern
        ox, oy = gx - col(cx), gy - col(cy)
        ct, st = np.cos(col(tilt)), np.sin(col(tilt))
        su, sv = (ox * ct + oy * st) / col(radius), (-ox * st + oy * ct) / col(radius)
        inside = _shape_masks(shape[sl], su, sv)
        secondary = _pattern_masks(pattern[sl], ox, oy, p_angle[sl], p_period[sl])
        w_bg = down(~inside * (1 - cover))
        w_clutter = down(~inside * value)
        w_fill = down(inside & ~secondary)
        w_pale = down(inside & secondary)
        shade = 1 + col(grad[:, 0]) * (sx - 0.5) + col(grad[:, 1]) * (sy - 0.5)
        img = (bg[sl, None, None, :] * (shade * w_bg)[..., None] + w_clutter[..., None]
               + fill[sl, None, None, :] * w_fill[..., None] + pale[sl, None, None, :] * w_pale[..., None])
        img += rng.standard_normal(img.shape, dtype=f32) * noise_sigma[sl, None, None, None]
        out[sl] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------
# The digits world: scikit-learn's real handwritten digits on paper
# ----------------------------------------------------------------------------------------------

_DIGITS_TARGET = (0, 1, 2, 3, 4, 5)
_CURVED = (0, 2, 3, 5, 6, 8, 9)
_STRAIGHT = (1, 4, 7)


def _digit_label(d: int) -> str:
    return f"digit {d}"


def _digits_teachers() -> list[_Teacher]:
    def make(name: str, arch: str, groups: list[tuple[str, tuple[int, ...]]], description: str,
             usefulness: str, why: str, **kw: Any) -> _Teacher:
        return _Teacher(name, arch, tuple(n for n, _ in groups), tuple(g for _, g in groups),
                        description, usefulness, why, **kw)

    all_digits = [(_digit_label(d), (d,)) for d in range(10)]
    return [
        make("all_digits", "test_resnet", all_digits,
             "Handwritten digit classifier over all ten digits 0-9.",
             "high", "Its label space contains the six target digits: the plan maps digit d to digit d "
             "and leaves 6-9 nearly empty."),
        make("mod3", "test_convnext", [("0, 3, 6 or 9", (0, 3, 6, 9)), ("1, 4 or 7", (1, 4, 7)),
                                       ("2, 5 or 8", (2, 5, 8))],
             "Digit residue mod 3: {0,3,6,9}, {1,4,7}, {2,5,8}.",
             "medium", "Each residue holds exactly two target digits ({0,3}, {1,4}, {2,5}): it narrows the "
             "answer to a pair."),
        make("parity", "test_efficientnet", [("even digit", (0, 2, 4, 6, 8)), ("odd digit", (1, 3, 5, 7, 9))],
             "Even versus odd handwritten digits.",
             "low", "Splits the six target digits into two groups of three: one bit of information "
             "(parity and mod 3 together would identify 0-5 exactly, as residues mod 6)."),
        make("ranges", "test_efficientnet_gn", [("0 to 3", (0, 1, 2, 3)), ("4 to 6", (4, 5, 6)), ("7 to 9", (7, 8, 9))],
             "Digit value range: 0-3, 4-6, 7-9.",
             "low", "Only separates {0,1,2,3} from {4,5}; the third range holds no target digit."),
        make("curves_vs_strokes", "test_resnet", [("curved digit", _CURVED), ("straight-stroke digit", _STRAIGHT)],
             "Digits drawn with curves (0 2 3 5 6 8 9) versus straight strokes only (1 4 7).",
             "low", "Only separates {1,4} from {0,2,3,5}; a coarse, unbalanced grouping."),
        make("other_digits", "test_convnext", [(_digit_label(d), (d,)) for d in (6, 7, 8, 9)],
             "Handwritten digit classifier over the digits 6-9 only.",
             "low", "Same kind of images but none of the target digits in its label space: only its "
             "features transfer; its class probabilities on 0-5 are guesses."),
        make("noisy_labels", "test_efficientnet", all_digits,
             "Ten-digit classifier trained with 85% of its labels replaced at random.",
             "medium", "Same label space as all_digits, but most training labels were wrong: its "
             "predictions are soft and less often right.", label_noise=0.85),
        make("untrained", "test_convnext", all_digits,
             "Randomly initialised network with the ten digit names, never trained (a control).",
             "none", "Random weights: its outputs carry no information about the images.", trained=False),
    ]


def render_digits(src: np.ndarray, rng: np.random.Generator, image: int) -> np.ndarray:
    """Upscale 8x8 digit images (values 0-16) to uint8 RGB (n, S, S, 3) on paper, with jitter.

    Each digit gets a random small affine warp (scale, rotation, shift; bicubic), ink and paper
    colours, an occasional ruled line and pixel noise. Vectorised with torch's grid sampling.
    """
    import torch
    import torch.nn.functional as F

    n = len(src)
    scale = rng.uniform(1.12, 1.32, n)  # > 1 zooms out: a margin around the digit
    rot = rng.uniform(-0.17, 0.17, n)
    shift = rng.uniform(-0.1, 0.1, (n, 2))
    shear = rng.uniform(-0.12, 0.12, n)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = scale * np.cos(rot)
    theta[:, 0, 1] = -scale * np.sin(rot) + shear
    theta[:, 1, 0] = scale * np.sin(rot)
    theta[:, 1, 1] = scale * np.cos(rot)
    theta[:, :, 2] = shift
    paper = np.clip(rng.uniform(0.8, 0.97, (n, 1)) + rng.normal(0, 0.025, (n, 3)), 0, 1)
    ink = np.clip(np.array([0.1, 0.1, 0.25]) * rng.uniform(0.4, 1.6, (n, 1)) + rng.normal(0, 0.04, (n, 3)), 0, 1)
    ruled = rng.random(n) < 0.5
    rule_y = rng.uniform(0.05, 0.95, n)
    noise_sigma = rng.uniform(0.01, 0.035, n)
    noise = rng.normal(0, 1, (n, image, image, 3))

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32) / 16.0)[:, None]
        grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, image, image], align_corners=False)
        stroke = F.grid_sample(x, grid, mode="bicubic", padding_mode="zeros", align_corners=False)[:, 0].numpy()
    stroke = np.clip((stroke - 0.1) * 1.35, 0, 1)[..., None]
    ys = (np.arange(image) + 0.5) / image
    line = (np.abs(ys[None, :] - rule_y[:, None]) < 0.6 / image) & ruled[:, None]
    base = paper[:, None, None, :] * (1 - 0.25 * line[:, :, None, None] * np.array([0.6, 0.3, 0.0]))
    img = base * (1 - stroke) + ink[:, None, None, :] * stroke + noise * noise_sigma[:, None, None, None]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Training a teacher
# ----------------------------------------------------------------------------------------------


def _to_tensor(images: np.ndarray):
    """uint8 (n, S, S, 3) -> normalised float tensor (n, 3, S, S): what the teacher's eval transform gives."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _create(arch: str, num_classes: int, image: int):
    import timm

    kwargs: dict[str, Any] = {}
    if arch.startswith("test_vit"):  # 4x4 tokens at 32 px (recorded in the config's model_args)
        kwargs = {"img_size": image, "patch_size": max(2, image // 4)}
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def _accuracy(model, x, y) -> float:
    import torch

    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(y), 512):
            correct += int((model(x[lo:lo + 512]).argmax(1) == y[lo:lo + 512]).sum())
    return correct / len(y)


def _train(model, x, y, cfg: _SizeConfig, lr: float, seed: int, tick: Callable[[float], None]) -> None:
    """AdamW with a one-cycle schedule on full batches of a seeded permutation."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    batch = min(cfg.batch, n)
    per_epoch = max(1, n // batch)
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.2)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 8 == 0 or step == total:
                tick(step / total)
    model.eval()


# ----------------------------------------------------------------------------------------------
# Building a world
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent numpy stream per purpose (target, each teacher's training and held-out data)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in WORLDS:
        raise ScdError(f"unknown demo world {name!r} (valid: {', '.join(WORLDS)})")
    return key


def _check_size(size: str) -> str:
    key = str(size).strip().lower()
    if key not in SIZES:
        raise ScdError(f"unknown demo world size {size!r} (valid: {', '.join(SIZES)})")
    return key


def _teachers(name: str) -> list[_Teacher]:
    return _shapes_teachers() if name == "shapes" else _digits_teachers()


def _target_classes(name: str) -> list[str]:
    if name == "shapes":
        return [_shape_label(c, s) for c, s in _SHAPES_TARGET]
    return [_digit_label(d) for d in _DIGITS_TARGET]


class _Split:
    """The images of a world, drawn per purpose from independent seed streams."""

    def __init__(self, name: str, cfg: _SizeConfig, seed: int) -> None:
        self.name, self.cfg, self.seed = name, cfg, seed
        if name == "digits":
            from sklearn.datasets import load_digits

            data = load_digits()
            self.images, self.digits = data.images, data.target.astype(np.int64)
            self._split_digits()

    # -- digits: disjoint source images for the target and the teachers --------------------------
    def _split_digits(self) -> None:
        cfg = self.cfg
        rng = _rng(self.seed, 1)
        per_class = cfg.train_per_class + cfg.val_per_class + cfg.test_per_class
        unl_per_class = math.ceil(cfg.unlabeled / len(_DIGITS_TARGET))
        self.target_idx: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
        unl: list[np.ndarray] = []
        teacher_pool: list[np.ndarray] = []
        for d in range(10):
            idx = rng.permutation(np.flatnonzero(self.digits == d))
            if d in _DIGITS_TARGET:
                a, b = cfg.train_per_class, cfg.train_per_class + cfg.val_per_class
                self.target_idx["train"][d] = idx[:a]
                self.target_idx["val"][d] = idx[a:b]
                self.target_idx["test"][d] = idx[b:per_class]
                unl.append(idx[per_class:per_class + unl_per_class])
                idx = idx[per_class + unl_per_class:]
            teacher_pool.append(idx)
        self.unlabeled_idx = rng.permutation(np.concatenate(unl))[:cfg.unlabeled]
        pool = np.concatenate(teacher_pool)
        # a fifth of the teachers' source images is held out to measure their accuracy
        held = np.zeros(len(pool), dtype=bool)
        held[rng.permutation(len(pool))[:max(len(pool) // 5, 10)]] = True
        self.teacher_train_idx, self.teacher_held_idx = pool[~held], pool[held]

    # -- target set ---------------------------------------------------------------------------------
    def target(self) -> tuple[dict[str, list[tuple[int, np.ndarray]]], np.ndarray, np.ndarray]:
        """Per split, (class index, images); unlabeled images and their hidden labels."""
        cfg = self.cfg
        rng = _rng(self.seed, 2)
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        image = cfg.image
        counts = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
        if self.name == "shapes":
            k = len(_SHAPES_TARGET)
            for split, count in counts.items():
                out[split] = []
                for c, (colour, shape) in enumerate(_SHAPES_TARGET):
                    attrs = np.tile(_shape_class(colour, shape), (count, 1))
                    attrs[:, 2] = rng.integers(0, len(PATTERNS), count)
                    out[split].append((c, render_shapes(attrs, rng, image)))
            labels = rng.permutation(np.arange(cfg.unlabeled) % k)
            attrs = np.asarray([_shape_class(*_SHAPES_TARGET[c]) for c in labels], dtype=np.int64)
            attrs[:, 2] = rng.integers(0, len(PATTERNS), len(labels))
            return out, render_shapes(attrs, rng, image), labels
        for split in counts:
            out[split] = [(c, render_digits(self.images[self.target_idx[split][d]], rng, image))
                          for c, d in enumerate(_DIGITS_TARGET)]
        idx = self.unlabeled_idx
        labels = np.asarray([_DIGITS_TARGET.index(d) for d in self.digits[idx]], dtype=np.int64)
        return out, render_digits(self.images[idx], rng, image), labels

    # -- a teacher's own data ------------------------------------------------------------------------
    def teacher_data(self, t: _Teacher, k: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """Images and clean labels of teacher ``t``'s task (training stream or held-out stream)."""
        cfg = self.cfg
        rng = _rng(self.seed, 100 + k, 1 if held_out else 0)
        if self.name == "shapes":
            n = cfg.teacher_heldout if held_out else cfg.teacher_train
            attrs, labels = _shapes_sample(t.classes, n, rng)
            return render_shapes(attrs, rng, cfg.image), labels
        # digits: labels uniform over the teacher's classes, digits uniform within a class, then a
        # source image of that digit (each held-out source image is used once)
        pool = self.teacher_held_idx if held_out else self.teacher_train_idx
        lut = np.full(10, -1, dtype=np.int64)  # digit -> the teacher's class, -1 outside its label space
        for c, group in enumerate(t.classes):
            lut[list(group)] = c
        eligible = pool[lut[self.digits[pool]] >= 0]
        if held_out:
            src = eligible
        else:
            classes = rng.integers(0, len(t.classes), cfg.teacher_train)
            src = np.empty(cfg.teacher_train, dtype=np.int64)
            for c, group in enumerate(t.classes):
                rows = np.flatnonzero(classes == c)
                digits = np.asarray(group)[rng.integers(0, len(group), len(rows))]
                for d in group:
                    at = rows[digits == d]
                    of_d = eligible[self.digits[eligible] == d]
                    src[at] = of_d[rng.integers(0, len(of_d), len(at))]
        labels = lut[self.digits[src]]
        return render_digits(self.images[src], rng, cfg.image), labels


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array, mode="RGB").save(path, format="PNG", compress_level=6)


def _write_target(root: Path, class_names: list[str],
                  splits: dict[str, list[tuple[int, np.ndarray]]], unlabeled: np.ndarray,
                  unlabeled_labels: np.ndarray) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for split, items in splits.items():
        counts[split] = {}
        for c, images in items:
            folder = root / split / class_names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                _save_png(img, folder / f"{slug(class_names[c])}-{i:03d}.png")
            counts[split][class_names[c]] = len(images)
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for i, img in enumerate(unlabeled):
        file = f"u{i:04d}.png"
        _save_png(img, root / "unlabeled" / file)
        truth[file] = class_names[int(unlabeled_labels[i])]
    return {"classes": class_names, "counts": counts, "unlabeled": len(unlabeled), "unlabeled_labels": truth}


@contextlib.contextmanager
def _torch_state(threads: int) -> Iterator[None]:
    """Fork torch's global RNG (so callers' seeds are untouched) and pin the thread count."""
    import torch

    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(max(1, threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _data_config(image: int) -> dict[str, Any]:
    return {"input_size": (3, image, image), "mean": _MEAN, "std": _STD, "crop_pct": 1.0,
            "interpolation": "bilinear", "crop_mode": "center"}


def _build_into(name: str, size: str, root: Path, seed: int, progress: ProgressFn) -> dict[str, Any]:
    import torch

    from scd_core.teachers.repository import save_teacher

    started = time.perf_counter()
    cfg = _CONFIGS[(name, size)]
    teachers = _teachers(name)
    classes = _target_classes(name)
    weights = [0.06] + [1.0 if t.trained else 0.05 for t in teachers]
    total = sum(weights)
    done = 0.0

    def report(part: float, weight: float, message: str) -> None:
        progress(min(1.0, (done + part * weight) / total), message)

    report(0, 0, f"{name}: drawing the target set")
    data = _Split(name, cfg, seed)
    splits, unlabeled, unlabeled_labels = data.target()
    target_info = _write_target(root / "target", classes, splits, unlabeled, unlabeled_labels)
    done += weights[0]

    records = []
    for k, t in enumerate(teachers):
        t0 = time.perf_counter()
        report(0, weights[k + 1], f"{name}: teacher {k + 1}/{len(teachers)} {t.name}: drawing images")
        images, labels = data.teacher_data(t, k, held_out=False)
        held_images, held_labels = data.teacher_data(t, k, held_out=True)
        y = torch.from_numpy(labels)
        if t.label_noise:
            noise_rng = _rng(seed, 100 + k, 2)
            flip = noise_rng.random(len(labels)) < t.label_noise
            noisy = labels.copy()
            noisy[flip] = noise_rng.integers(0, len(t.labels), int(flip.sum()))
            y = torch.from_numpy(noisy)
        torch.manual_seed(seed * 1000 + k)
        model = _create(t.arch, len(t.labels), cfg.image)
        if t.trained:
            weight = weights[k + 1]
            _train(model, _to_tensor(images), y, cfg, _LR.get(t.arch, 3e-3), seed * 1000 + k,
                   lambda f, w=weight, t=t: report(f, w, f"{name}: training teacher {t.name}"))
        model.eval()
        acc = _accuracy(model, _to_tensor(held_images), torch.from_numpy(held_labels))
        save_teacher(model, t.labels, root / "teachers" / t.name, description=t.description,
                     data_config=_data_config(cfg.image))
        done += weights[k + 1]
        records.append({
            "name": t.name, "architecture": t.arch, "num_classes": len(t.labels), "label_names": list(t.labels),
            "description": t.description, "heldout_accuracy": round(acc, 4),
            "chance_accuracy": round(float(np.bincount(held_labels).max() / max(1, len(held_labels))), 4),
            "heldout_images": len(held_labels), "train_images": len(labels) if t.trained else 0,
            "epochs": cfg.epochs if t.trained else 0, "label_noise": t.label_noise, "trained": t.trained,
            "usefulness": t.usefulness, "why": t.why,
            "seconds": round(time.perf_counter() - t0, 2),
        })
        report(0, 0, f"{name}: teacher {t.name} ready (held-out accuracy {acc:.0%})")
    return {
        "name": name, "size": size, "version": VERSION, "seed": seed, "image_size": cfg.image,
        "target_dir": "target", "teachers_dir": "teachers",
        "target": target_info, "teachers": records,
        "build_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": torch.get_num_threads(),
    }


def open_world(root: str | Path) -> DemoWorld:
    """The :class:`DemoWorld` of an already built folder (reads its ``world.json``)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScdError(f"{root} is not a built demo world ({MANIFEST_NAME}: {exc})") from exc
    teachers = manifest.get("teachers", [])
    return DemoWorld(
        name=manifest["name"], size=manifest["size"], root=root,
        target_dir=root / manifest.get("target_dir", "target"),
        teachers_dir=root / manifest.get("teachers_dir", "teachers"),
        seed=int(manifest.get("seed", 0)),
        class_names=tuple(manifest.get("target", {}).get("classes", [])),
        teachers=tuple(t["name"] for t in teachers),
        expectations={t["name"]: t.get("why", "") for t in teachers},
        usefulness={t["name"]: t.get("usefulness", "") for t in teachers},
        manifest=manifest,
    )


def _is_world(root: Path) -> bool:
    return (root / MANIFEST_NAME).is_file()


def build_world(name: str, out_dir: str | Path, *, size: str = "full", seed: int = 0,
                progress: ProgressFn | None = None, threads: int = BUILD_THREADS) -> DemoWorld:
    """Build demo world ``name`` into ``out_dir`` (``target/``, ``teachers/``, ``world.json``).

    Deterministic for a given ``seed``, ``size`` and torch thread count. The world is built in a
    temporary sibling folder and renamed into place at the end, so an interrupted build leaves
    nothing half-written. An existing demo world (or empty folder) at ``out_dir`` is replaced; any
    other existing folder is refused. ``progress(fraction, message)`` is called as the build goes.
    """
    name = _check_name(name)
    size = _check_size(size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (_is_world(out_dir) or not any(out_dir.iterdir()))):
        raise ScdError(f"{out_dir} already exists and is not a demo world; choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, message: None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        with _torch_state(threads):
            manifest = _build_into(name, size, tmp, seed, report)
        manifest["description"] = world_description(name)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(trash / "world")
            tmp.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"{name}: world ready")
    return open_world(out_dir)


# ----------------------------------------------------------------------------------------------
# The cached worlds in the workspace
# ----------------------------------------------------------------------------------------------

_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX flock; on other systems the thread lock only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def world_dir(name: str, size: str | None = None) -> Path:
    """Where :func:`ensure_world` keeps world ``name`` of ``size`` in the workspace."""
    from scd_core.runtime.workspace import subdir

    size = _check_size(size or settings().demo_size)
    return subdir("demo") / f"{_check_name(name)}-{size}-v{VERSION}"


def ensure_world(name: str, *, size: str | None = None, progress: ProgressFn | None = None) -> DemoWorld:
    """The demo world ``name`` from the workspace cache, built (seed 0) on first use.

    ``size`` defaults to ``$SCD_DEMO_SIZE`` or ``"full"``. A thread lock and a file lock make
    concurrent callers wait for one build instead of building twice.
    """
    name = _check_name(name)
    size = _check_size(size or settings().demo_size)
    root = world_dir(name, size)
    if _is_world(root):
        return open_world(root)
    with _BUILD_LOCK, _file_lock(root.parent / f".{root.name}.lock"):
        if _is_world(root):
            return open_world(root)
        # leftovers of a build that was killed (we hold the lock: no build of this world is running)
        for stale in [*root.parent.glob(f".{root.name}.building-*"), *root.parent.glob(f".{root.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if root.exists() and not any(root.iterdir()):
            root.rmdir()
        return build_world(name, root, size=size, seed=0, progress=progress)


# ----------------------------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------------------------

_INTRO = {
    "shapes": (
        "**Target**: six classes that combine a colour and a shape, arranged as a Latin square "
        "(red circle, red square, green circle, green triangle, blue square, blue triangle), so every "
        "colour and every shape belongs to exactly two classes and only the combination identifies the "
        "class. Images are drawn procedurally: shape with a random size, position and tilt, filled with "
        "a pattern (plain, striped, dotted, checked), on a tinted background with lines, grey blobs and "
        "noise. The teachers were trained on freshly drawn images of the same kind (a separate seed "
        "stream), each labelled in its own label space."
    ),
    "digits": (
        "**Target**: the handwritten digits 0-5 (scikit-learn's real 8x8 digits, upscaled onto paper "
        "with small random warps). The teachers were trained on other source images of the same "
        "collection (target and teachers never share an image), labelled in their own label spaces: "
        "digits, groupings of digits, or noise."
    ),
}

_RANK = {"high": "yes, strongly", "medium": "partly", "low": "little", "none": "no"}


def world_description(name: str) -> str:
    """Markdown: what the world's target is, and for each teacher whether and why it should help."""
    name = _check_name(name)
    lines = [f"### Demo world `{name}`", "", _INTRO[name], "",
             "| teacher | label space | should help? | why |", "|---|---|---|---|"]
    for t in _teachers(name):
        space = ("; ".join(t.labels) if len(t.labels) <= 6
                 else f"{len(t.labels)} classes: {'; '.join(t.labels[:4])}; ...")
        lines.append(f"| `{t.name}` ({t.arch}) | {space} | {_RANK[t.usefulness]} | {t.why} |")
    lines += ["", "A good ranking puts the teachers that help strongly first and the untrained and "
              "unrelated ones last."]
    return "\n".join(lines)
