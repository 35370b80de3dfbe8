"""The ``glyphs`` family: capital letters rendered from installed fonts, in several type styles.

Each image is one letter drawn in one of four type styles (sans, serif, mono, bold; the DejaVu fonts),
warped by a random affine map (scale, rotation, shear, shift), in a random ink colour on a random
paper colour with an occasional ruled line and pixel noise. A class is a set of letters (a union, so
that merged label spaces are classes too) and optionally one style; images of a class draw a member
letter and, when the class leaves it open, a style uniformly. The letter is the target's cue; the
style is a cue of the same images that says nothing about the letter (a misleading teacher).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scd_core.demo.common import FamilyBase, SizeConfig, Teacher, affine_thetas, seed_rng
from scd_core.errors import ScdError

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: type style -> font file (DejaVu: shipped by most Linux distributions, package fonts-dejavu-core)
STYLES: dict[str, str] = {"sans": "DejaVuSans.ttf", "serif": "DejaVuSerif.ttf", "mono": "DejaVuSansMono.ttf",
                          "bold": "DejaVuSans-Bold.ttf"}
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/usr/share/fonts/truetype", "/Library/Fonts",
              "C:/Windows/Fonts")
_MASK = 48  # side of the pre-rendered glyph masks (pixels)

#: a class: (letters it covers, style index or -1 for any style)
GlyphClass = tuple[tuple[int, ...], int]


def _find_font(file: str) -> Path:
    for root in _FONT_DIRS:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        hit = next(iter(sorted(base.rglob(file))), None)
        if hit is not None:
            return hit
    raise ScdError(f"the glyphs world needs the font {file} (DejaVu fonts, e.g. the package fonts-dejavu-core); "
                   "it was not found in the usual font folders")


@functools.lru_cache(maxsize=1)
def glyph_masks() -> np.ndarray:
    """Coverage masks (styles, letters, M, M) in [0, 1]: each letter centred in its square, 70% high."""
    from PIL import Image, ImageDraw, ImageFont

    out = np.zeros((len(STYLES), len(LETTERS), _MASK, _MASK), dtype=np.float32)
    for s, file in enumerate(STYLES.values()):
        font = ImageFont.truetype(str(_find_font(file)), size=int(_MASK * 0.7))
        for k, letter in enumerate(LETTERS):
            img = Image.new("L", (_MASK, _MASK), 0)
            ImageDraw.Draw(img).text((_MASK / 2, _MASK / 2), letter, fill=255, font=font, anchor="mm")
            out[s, k] = np.asarray(img, dtype=np.float32) / 255.0
    return out


def render_glyphs(letter: np.ndarray, style: np.ndarray, rng: np.random.Generator, image: int) -> np.ndarray:
    """Draw letter ``letter[i]`` in style ``style[i]`` as uint8 RGB (n, S, S, 3), batched with grid sampling."""
    import torch
    import torch.nn.functional as F

    n = len(letter)
    scale = rng.uniform(0.8, 1.15, n)  # > 1 zooms out
    rot = rng.uniform(-0.25, 0.25, n)
    shear = rng.uniform(-0.15, 0.15, n)
    shift = rng.uniform(-0.12, 0.12, (n, 2))
    theta = affine_thetas(scale, rot, shear, shift)
    paper = np.clip(rng.uniform(0.6, 0.98, (n, 1)) + rng.normal(0, 0.08, (n, 3)), 0, 1)
    ink = np.clip(rng.uniform(0.0, 0.45, (n, 1)) + rng.normal(0, 0.12, (n, 3)), 0, 1)
    ruled = rng.random(n) < 0.4
    rule_y = rng.uniform(0.05, 0.95, n)
    noise_sigma = rng.uniform(0.01, 0.05, n)
    noise = rng.normal(0, 1, (n, image, image, 3))
    masks = glyph_masks()[style, letter]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
        grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, image, image], align_corners=False)
        stroke = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()
    stroke = np.clip(stroke, 0, 1)[..., None]
    ys = (np.arange(image) + 0.5) / image
    line = (np.abs(ys[None, :] - rule_y[:, None]) < 0.6 / image) & ruled[:, None]
    base = paper[:, None, None, :] * (1 - 0.3 * line[:, :, None, None])
    img = base * (1 - stroke) + ink[:, None, None, :] * stroke + noise * noise_sigma[:, None, None, None]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def glyph_class(letters: str, style: str | None = None) -> GlyphClass:
    """The class of ``letters`` (any of them) in ``style`` (None: any style)."""
    return tuple(LETTERS.index(ch) for ch in letters), (list(STYLES).index(style) if style else -1)


def _sample(classes: Sequence[GlyphClass], n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Labels uniform over the classes, a member letter uniform within the class, free styles uniform."""
    labels = rng.integers(0, len(classes), n)
    pick = rng.random(n)
    sizes = np.asarray([len(c[0]) for c in classes])
    members = np.full((len(classes), sizes.max()), -1, dtype=np.int64)
    for c, (letters, _) in enumerate(classes):
        members[c, :len(letters)] = letters
    letter = members[labels, np.minimum((pick * sizes[labels]).astype(np.int64), sizes[labels] - 1)]
    fixed = np.asarray([c[1] for c in classes], dtype=np.int64)[labels]
    style = np.where(fixed >= 0, fixed, rng.integers(0, len(STYLES), n))
    return letter, style, labels


class GlyphsFamily(FamilyBase):
    """Glyph worlds: a target of letter classes, a teacher zoo over letters and styles, and sizes."""

    intro_default = ("**Target**: capital letters rendered from installed fonts in four type styles, warped, "
                     "in random ink and paper colours with noise. The teachers were trained on other renderings "
                     "of the same kind, labelled in their own label spaces: letters, merged letters, letters by "
                     "style, the style alone (the wrong cue), or noise.")

    def __init__(self, name: str, target: Sequence[GlyphClass], target_labels: Sequence[str],
                 teachers: Sequence[Teacher], configs: dict[str, SizeConfig], intro: str | None = None) -> None:
        self.name, self.intro = name, intro or self.intro_default
        self.target, self.labels = tuple(target), list(target_labels)
        self._teachers, self.configs = list(teachers), configs

    def target_classes(self) -> list[str]:
        return list(self.labels)

    def sampler(self, cfg: SizeConfig, seed: int) -> GlyphsSampler:
        return GlyphsSampler(self, cfg, seed)


class GlyphsSampler:
    """The images of a glyphs world, drawn per purpose from independent seed streams."""

    def __init__(self, family: GlyphsFamily, cfg: SizeConfig, seed: int) -> None:
        self.family, self.cfg, self.seed = family, cfg, seed

    def target(self) -> tuple[dict[str, list[tuple[int, np.ndarray]]], np.ndarray, np.ndarray]:
        cfg, classes = self.cfg, self.family.target
        rng = seed_rng(self.seed, 2)
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        for split, count in (("train", cfg.train_per_class), ("val", cfg.val_per_class),
                             ("test", cfg.test_per_class)):
            out[split] = []
            for c in range(len(classes)):
                letter, style, _ = _sample([classes[c]], count, rng)
                out[split].append((c, render_glyphs(letter, style, rng, cfg.image)))
        letter, style, labels = _sample(classes, cfg.unlabeled, rng)
        return out, render_glyphs(letter, style, rng, cfg.image), labels

    def teacher_data(self, t: Teacher, k: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        rng = seed_rng(self.seed, 100 + k, 1 if held_out else 0)
        letter, style, labels = _sample(t.classes, cfg.teacher_heldout if held_out else cfg.teacher_train, rng)
        return render_glyphs(letter, style, rng, cfg.image), labels
