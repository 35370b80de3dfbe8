"""The ``shapes`` family: procedurally drawn coloured shapes with fill patterns, clutter and noise.

RGB images of a coloured shape (circle, square, triangle, star, heart) filled with a pattern (plain,
striped, dotted, checked), of random size, position and tilt, on a tinted background with clutter
(lines, grey blobs) and pixel noise. A class is a constraint on the attributes (colour, shape,
pattern; unconstrained attributes are drawn uniformly). The demo target combines colour and shape
("red circle", "blue square", ...); the teachers were trained on other label spaces over the same kind
of images (the same six classes, a superset, shape only, colour only, pattern only, noisy labels, and
an untrained network).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scd_core.demo.common import FamilyBase, SizeConfig, Teacher, make_teacher, seed_rng

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


def _shapes_teachers() -> list[Teacher]:
    target = [(_shape_label(c, s), _shape_class(c, s)) for c, s in _SHAPES_TARGET]
    superset = [(_shape_label(c, s), _shape_class(c, s))
                for c in COLOURS[:4] for s in SHAPES[:4]]
    shapes = [(s, _shape_class(shape=s)) for s in SHAPES]
    colours = [(c, _shape_class(colour=c)) for c in COLOURS]
    patterns = [(p, _shape_class(pattern=p)) for p in PATTERNS]

    make = make_teacher

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
# The family
# ----------------------------------------------------------------------------------------------

# full: the real demo (<= 90 s per world on 2 cores); small: for tests (a few seconds, teachers
# only partly trained, same layout and label spaces).
CONFIGS: dict[str, SizeConfig] = {
    "full": SizeConfig(image=32, train_per_class=8, val_per_class=30, test_per_class=30,
                       unlabeled=300, teacher_train=3000, teacher_heldout=600, epochs=4),
    "small": SizeConfig(image=32, train_per_class=3, val_per_class=3, test_per_class=3,
                        unlabeled=24, teacher_train=640, teacher_heldout=192, epochs=2),
}

INTRO = (
    "**Target**: six classes that combine a colour and a shape, arranged as a Latin square "
    "(red circle, red square, green circle, green triangle, blue square, blue triangle), so every "
    "colour and every shape belongs to exactly two classes and only the combination identifies the "
    "class. Images are drawn procedurally: shape with a random size, position and tilt, filled with "
    "a pattern (plain, striped, dotted, checked), on a tinted background with lines, grey blobs and "
    "noise. The teachers were trained on freshly drawn images of the same kind (a separate seed "
    "stream), each labelled in its own label space."
)


class ShapesFamily(FamilyBase):
    """Shapes worlds: a target of attribute constraints, a teacher zoo, and sizes.

    ``target`` holds one (colour, shape[, pattern]) tuple of names per class, None meaning any.
    """

    def __init__(self, name: str = "shapes", target: Sequence[tuple[str | None, ...]] = _SHAPES_TARGET,
                 teachers: Sequence[Teacher] | None = None, configs: dict[str, SizeConfig] | None = None,
                 intro: str = INTRO) -> None:
        self.name, self.intro = name, intro
        self.target = tuple(tuple(t) for t in target)
        self._teachers = list(teachers) if teachers is not None else _shapes_teachers()
        self.configs = configs or CONFIGS

    def target_classes(self) -> list[str]:
        return [_shape_label(*t) for t in self.target]

    def sampler(self, cfg: SizeConfig, seed: int) -> ShapesSampler:
        return ShapesSampler(self, cfg, seed)


class ShapesSampler:
    """The images of a shapes world, drawn per purpose from independent seed streams."""

    def __init__(self, family: ShapesFamily, cfg: SizeConfig, seed: int) -> None:
        self.family, self.cfg, self.seed = family, cfg, seed
        self.constraints = np.asarray([_shape_class(*t) for t in family.target], dtype=np.int64)

    @staticmethod
    def _fill_free(attrs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw the unconstrained attributes (-1) uniformly, one column at a time."""
        for col, size in enumerate((len(COLOURS), len(SHAPES), len(PATTERNS))):
            free = attrs[:, col] < 0
            if free.any():
                attrs[:, col] = np.where(free, rng.integers(0, size, len(attrs)), attrs[:, col])
        return attrs

    def target(self) -> tuple[dict[str, list[tuple[int, np.ndarray]]], np.ndarray, np.ndarray]:
        """Per split, (class index, images); unlabeled images and their hidden labels."""
        cfg = self.cfg
        rng = seed_rng(self.seed, 2)
        counts = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
        k = len(self.constraints)
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        for split, count in counts.items():
            out[split] = []
            for c in range(k):
                attrs = self._fill_free(np.tile(self.constraints[c], (count, 1)), rng)
                out[split].append((c, render_shapes(attrs, rng, cfg.image)))
        labels = rng.permutation(np.arange(cfg.unlabeled) % k)
        attrs = self._fill_free(self.constraints[labels].copy(), rng)
        return out, render_shapes(attrs, rng, cfg.image), labels

    def teacher_data(self, t: Teacher, k: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """Images and clean labels of teacher ``t``'s task (training stream or held-out stream)."""
        cfg = self.cfg
        rng = seed_rng(self.seed, 100 + k, 1 if held_out else 0)
        n = cfg.teacher_heldout if held_out else cfg.teacher_train
        attrs, labels = _shapes_sample(t.classes, n, rng)
        return render_shapes(attrs, rng, cfg.image), labels
