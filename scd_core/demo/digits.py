"""The ``digits`` family: scikit-learn's real handwritten digits, upscaled onto paper.

The real 8x8 digits that ship with scikit-learn (1797 images), upscaled with small random affine
jitter onto paper-like RGB images. The demo target is the digits 0-5; the teachers saw all digits,
other digits, or groupings (parity, ranges, residues mod 3, curved versus straight strokes), plus a
noisy-label and an untrained teacher. Target and teachers use disjoint source images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scd_core.demo.common import FamilyBase, SizeConfig, Teacher, affine_thetas, make_teacher, seed_rng

_DIGITS_TARGET = (0, 1, 2, 3, 4, 5)
_CURVED = (0, 2, 3, 5, 6, 8, 9)
_STRAIGHT = (1, 4, 7)


def _digit_label(d: int) -> str:
    return f"digit {d}"


def _digits_teachers() -> list[Teacher]:
    make = make_teacher

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
    theta = affine_thetas(scale, rot, shear, shift)
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
# The family
# ----------------------------------------------------------------------------------------------

CONFIGS: dict[str, SizeConfig] = {
    "full": SizeConfig(image=32, train_per_class=8, val_per_class=25, test_per_class=25,
                       unlabeled=240, teacher_train=3000, teacher_heldout=0, epochs=4),
    "small": SizeConfig(image=32, train_per_class=3, val_per_class=3, test_per_class=3,
                        unlabeled=24, teacher_train=640, teacher_heldout=0, epochs=2),
}

INTRO = (
    "**Target**: the handwritten digits 0-5 (scikit-learn's real 8x8 digits, upscaled onto paper "
    "with small random warps). The teachers were trained on other source images of the same "
    "collection (target and teachers never share an image), labelled in their own label spaces: "
    "digits, groupings of digits, or noise."
)


class DigitsFamily(FamilyBase):
    """Digits worlds: a target digit set, a teacher zoo (classes are groups of digits), and sizes."""

    def __init__(self, name: str = "digits", target: Sequence[int] = _DIGITS_TARGET,
                 teachers: Sequence[Teacher] | None = None, configs: dict[str, SizeConfig] | None = None,
                 intro: str = INTRO) -> None:
        self.name, self.intro = name, intro
        self.target = tuple(int(d) for d in target)
        self._teachers = list(teachers) if teachers is not None else _digits_teachers()
        self.configs = configs or CONFIGS

    def target_classes(self) -> list[str]:
        return [_digit_label(d) for d in self.target]

    def sampler(self, cfg: SizeConfig, seed: int) -> DigitsSampler:
        return DigitsSampler(self, cfg, seed)


class DigitsSampler:
    """The images of a digits world: disjoint source images for the target and for the teachers."""

    def __init__(self, family: DigitsFamily, cfg: SizeConfig, seed: int) -> None:
        from sklearn.datasets import load_digits

        self.family, self.cfg, self.seed = family, cfg, seed
        data = load_digits()
        self.images, self.digits = data.images, data.target.astype(np.int64)
        self._split_digits()

    def _split_digits(self) -> None:
        cfg, target = self.cfg, self.family.target
        rng = seed_rng(self.seed, 1)
        per_class = cfg.train_per_class + cfg.val_per_class + cfg.test_per_class
        unl_per_class = math.ceil(cfg.unlabeled / len(target))
        self.target_idx: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
        unl: list[np.ndarray] = []
        teacher_pool: list[np.ndarray] = []
        for d in range(10):
            idx = rng.permutation(np.flatnonzero(self.digits == d))
            if d in target:
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

    def target(self) -> tuple[dict[str, list[tuple[int, np.ndarray]]], np.ndarray, np.ndarray]:
        """Per split, (class index, images); unlabeled images and their hidden labels."""
        cfg, target = self.cfg, self.family.target
        rng = seed_rng(self.seed, 2)
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        for split in ("train", "val", "test"):
            out[split] = [(c, render_digits(self.images[self.target_idx[split][d]], rng, cfg.image))
                          for c, d in enumerate(target)]
        idx = self.unlabeled_idx
        labels = np.asarray([target.index(d) for d in self.digits[idx]], dtype=np.int64)
        return out, render_digits(self.images[idx], rng, cfg.image), labels

    def teacher_data(self, t: Teacher, k: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """Images and clean labels of teacher ``t``'s task (training stream or held-out stream).

        Labels are uniform over the teacher's classes, digits uniform within a class, then a source
        image of that digit (each held-out source image is used once).
        """
        cfg = self.cfg
        rng = seed_rng(self.seed, 100 + k, 1 if held_out else 0)
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
