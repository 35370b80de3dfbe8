"""The ranking-science suite: 16 small worlds from three families, and the tuning / held-out split.

Every world has a target set and a zoo of 8 teachers spanning the relations that matter for a
ranking: the same labels; a superset (or finer labels); coarser (merged) labels; a partial overlap;
related but misleading (the same images, the wrong cue); noisy labels; an unrelated task (a label
space the target's images fall outside of); and an untrained network. Architectures rotate over the
roles from world to world, so architecture is not confounded with relation.

The worlds differ in family (procedural shapes, scikit-learn's real digits, letters rendered from
fonts), target label set, number of classes (3 to 9), labeled images per class (3 to 10) and image
size (32, 36 or 40 px; the tiny ConvNeXt teacher needs at least 32). They are kept tiny (64 images
in the labeled + unlabeled pool, so one optimiser step per epoch for the default student) because the
ground truth is 3 students per teacher on a shared 2-core machine.

The split below was declared (and committed) before any ground truth existed. Every choice of a
score's hyperparameters (temperature, cost, smoothing, combinations) is made on ``TUNING`` only;
``HELD_OUT`` is looked at once, for the final table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scd_core.demo.common import SizeConfig, Teacher, make_teacher
from scd_core.demo.digits import DigitsFamily
from scd_core.demo.glyphs import LETTERS, STYLES, GlyphsFamily, glyph_class
from scd_core.demo.shapes import COLOURS, PATTERNS, SHAPES, ShapesFamily, _shape_class, _shape_label

SUITE_VERSION = 1
POOL = 64  # labeled train + unlabeled images per world: one step per epoch at the student's batch of 64
ARCHS = ("test_efficientnet", "test_resnet", "test_efficientnet_gn", "test_convnext", "test_vit")
ROLES = ("same", "superset", "coarse", "partial", "misleading", "noisy", "unrelated", "untrained")

# ------------------------------------------------------------------------------------------------
# The split, declared before looking at any ground truth
# ------------------------------------------------------------------------------------------------

TUNING: tuple[str, ...] = ("shapes-cs6", "shapes-cp4", "shapes-cs9", "digits-0to5", "digits-even",
                           "digits-3to9", "glyphs-5", "glyphs-4big", "glyphs-8", "digits-017")
HELD_OUT: tuple[str, ...] = ("shapes-cs4", "shapes-sp6", "digits-odd", "digits-2568", "glyphs-6", "glyphs-3")


def _config(image: int, classes: int, train_per_class: int) -> SizeConfig:
    return SizeConfig(image=image, train_per_class=train_per_class, val_per_class=4, test_per_class=12,
                      unlabeled=POOL - classes * train_per_class, teacher_train=480, teacher_heldout=160,
                      epochs=3)


def _arch(role: str, world_index: int) -> str:
    return ARCHS[(ROLES.index(role) + world_index) % len(ARCHS)]


# ------------------------------------------------------------------------------------------------
# Shapes: the target constrains two attributes (cue), the third is free (the misleading cue)
# ------------------------------------------------------------------------------------------------

_ATTRS = {"colour": COLOURS, "shape": SHAPES, "pattern": PATTERNS}


def _shape_cls(**kw: str | None) -> tuple[str, tuple[int, int, int]]:
    return _shape_label(kw.get("colour"), kw.get("shape"), kw.get("pattern")), _shape_class(
        kw.get("colour"), kw.get("shape"), kw.get("pattern"))


def _shapes_world(name: str, index: int, cue: tuple[str, str], pairs: list[tuple[str, str]], image: int,
                  train_per_class: int) -> ShapesFamily:
    a1, a2 = cue
    wrong = next(a for a in _ATTRS if a not in cue)
    target = [_shape_cls(**{a1: x, a2: y}) for x, y in pairs]
    used1, used2 = sorted({x for x, _ in pairs}, key=_ATTRS[a1].index), sorted({y for _, y in pairs},
                                                                            key=_ATTRS[a2].index)
    extra1 = [v for v in _ATTRS[a1] if v not in used1]
    extra2 = [v for v in _ATTRS[a2] if v not in used2]
    sup_vals1, sup_vals2 = used1 + extra1[:1], used2 + extra2[:1]
    superset = [_shape_cls(**{a1: x, a2: y}) for x in sup_vals1 for y in sup_vals2]
    half = pairs[: len(pairs) // 2]
    partial = [_shape_cls(**{a1: x, a2: y}) for x, y in half] + [
        _shape_cls(**{a1: x, a2: y}) for x in extra1[:2] for y in used2[:2]]
    coarse = [_shape_cls(**{a1: v}) for v in _ATTRS[a1]]
    misleading = [_shape_cls(**{wrong: v}) for v in _ATTRS[wrong]]
    unrelated = [_shape_cls(**{a1: v}) for v in extra1] if len(extra1) >= 2 else [
        _shape_cls(**{a2: v}) for v in extra2]

    def t(role: str, classes: list, why: str, usefulness: str, **kw) -> Teacher:
        return make_teacher(role, _arch(role, index), classes, f"{role}: {len(classes)} classes", usefulness,
                            why, **kw)

    zoo = [
        t("same", target, "the target's own label space", "high"),
        t("superset", superset, "every target class plus others", "high"),
        t("coarse", coarse, f"{a1} only: half of the cue", "medium"),
        t("partial", partial, "half of the target classes, plus classes outside the target", "medium"),
        t("misleading", misleading, f"{wrong}: the same images, a cue independent of the label", "none"),
        t("noisy", superset, "superset labels, 70% replaced at random", "low", label_noise=0.7),
        t("unrelated", unrelated, "values of the cue the target never shows", "low"),
        t("untrained", superset, "random weights", "none", trained=False),
    ]
    return ShapesFamily(name=name, target=[_as_triple(cue, x, y) for x, y in pairs], teachers=zoo,
                        configs={"bench": _config(image, len(pairs), train_per_class)},
                        intro=f"Shapes world: target = {a1} x {a2}, {len(pairs)} classes, {image} px.")


def _as_triple(cue: tuple[str, str], x: str, y: str) -> tuple[str | None, str | None, str | None]:
    vals = {cue[0]: x, cue[1]: y}
    return vals.get("colour"), vals.get("shape"), vals.get("pattern")


# ------------------------------------------------------------------------------------------------
# Digits: classes are sets of digits
# ------------------------------------------------------------------------------------------------


def _digits_world(name: str, index: int, target: tuple[int, ...], image: int, train_per_class: int) -> DigitsFamily:
    others = tuple(d for d in range(10) if d not in target)
    lab = "digit {}".format

    def grp(ds: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return (" or ".join(map(str, ds)), ds)

    pairs = [target[i:i + 2] for i in range(0, len(target), 2)]
    half = target[: max(1, len(target) // 2)]
    coarse = [grp(p) for p in pairs] + ([grp(others)] if others else [])
    partial = [(lab(d), (d,)) for d in half + others[:3]]
    misleading = [grp(tuple(d for d in range(10) if d % 3 == r)) for r in range(3)]
    unrelated = [(lab(d), (d,)) for d in others] if len(others) >= 2 else [grp((0, 1, 2, 3, 4)), grp((5, 6, 7, 8, 9))]
    every = [(lab(d), (d,)) for d in range(10)]

    def t(role: str, classes: list, why: str, usefulness: str, **kw) -> Teacher:
        return make_teacher(role, _arch(role, index), classes, f"{role}: {len(classes)} classes", usefulness,
                            why, **kw)

    zoo = [
        t("same", [(lab(d), (d,)) for d in target], "the target digits", "high"),
        t("superset", every, "all ten digits", "high"),
        t("coarse", coarse, "target digits merged in pairs", "medium"),
        t("partial", partial, "half of the target digits plus others", "medium"),
        t("misleading", misleading, "residue mod 3: groups that cut across the target", "low"),
        t("noisy", every, "all digits, 70% of labels replaced at random", "low", label_noise=0.7),
        t("unrelated", unrelated, "only digits the target does not contain", "low"),
        t("untrained", every, "random weights", "none", trained=False),
    ]
    cfg = _config(image, len(target), train_per_class)
    cfg = SizeConfig(**{**cfg.__dict__, "teacher_heldout": 0})  # digits: a fifth of the teacher pool is held out
    return DigitsFamily(name=name, target=target, teachers=zoo, configs={"bench": cfg},
                        intro=f"Digits world: target = digits {target}, {image} px.")


# ------------------------------------------------------------------------------------------------
# Glyphs: letters; the style is the misleading cue
# ------------------------------------------------------------------------------------------------


def _glyphs_world(name: str, index: int, target: str, image: int, train_per_class: int) -> GlyphsFamily:
    others = "".join(ch for ch in LETTERS if ch not in target)
    styles = list(STYLES)
    pairs = [target[i:i + 2] for i in range(0, len(target), 2)]
    half = target[: max(1, len(target) // 2)]

    def cls(letters: str, style: str | None = None) -> tuple[str, tuple]:
        label = ("any letter" if len(letters) > 8 else " or ".join(letters)) + (f" ({style})" if style else "")
        return label, glyph_class(letters, style)

    finer = [cls(ch, s) for ch in target for s in styles[:2]] + [cls(ch, s) for ch in target for s in styles[2:3]]

    def t(role: str, classes: list, why: str, usefulness: str, **kw) -> Teacher:
        return make_teacher(role, _arch(role, index), classes, f"{role}: {len(classes)} classes", usefulness,
                            why, **kw)

    zoo = [
        t("same", [cls(ch) for ch in target], "the target letters", "high"),
        t("superset", finer if index % 2 else [cls(ch) for ch in target + others[:4]],
          "finer: each target letter split by style" if index % 2 else "the target letters plus four others",
          "high"),
        t("coarse", [cls(p) for p in pairs] + [cls(others[:6])], "target letters merged in pairs", "medium"),
        t("partial", [cls(ch) for ch in half + others[:3]], "half of the target letters plus others", "medium"),
        t("misleading", [cls(LETTERS, s) for s in styles], "the type style: same images, wrong cue", "none"),
        t("noisy", [cls(ch) for ch in target + others[:4]], "letters, 70% of labels replaced at random", "low",
          label_noise=0.7),
        t("unrelated", [cls(ch) for ch in others[-6:]], "only letters the target does not contain", "low"),
        t("untrained", [cls(ch) for ch in target + others[:4]], "random weights", "none", trained=False),
    ]
    return GlyphsFamily(name=name, target=[glyph_class(ch) for ch in target], target_labels=[f"letter {ch}"
                                                                                             for ch in target],
                        teachers=zoo, configs={"bench": _config(image, len(target), train_per_class)},
                        intro=f"Glyphs world: target = letters {target}, {image} px.")


# ------------------------------------------------------------------------------------------------
# The suite
# ------------------------------------------------------------------------------------------------


def _families() -> dict[str, object]:
    w: dict[str, object] = {}
    specs = [
        ("shapes-cs6", lambda i, n: _shapes_world(n, i, ("colour", "shape"), [
            ("red", "circle"), ("red", "square"), ("green", "circle"), ("green", "triangle"), ("blue", "square"),
            ("blue", "triangle")], 32, 4)),
        ("shapes-cp4", lambda i, n: _shapes_world(n, i, ("colour", "pattern"), [
            ("red", "plain"), ("red", "striped"), ("blue", "plain"), ("blue", "striped")], 40, 6)),
        ("shapes-cs9", lambda i, n: _shapes_world(n, i, ("colour", "shape"), [
            (c, s) for c in ("red", "green", "blue") for s in ("circle", "square", "triangle")], 32, 3)),
        ("shapes-cs4", lambda i, n: _shapes_world(n, i, ("colour", "shape"), [
            ("green", "star"), ("green", "heart"), ("purple", "star"), ("purple", "heart")], 36, 8)),
        ("shapes-sp6", lambda i, n: _shapes_world(n, i, ("shape", "pattern"), [
            ("circle", "plain"), ("circle", "striped"), ("square", "striped"), ("square", "checked"),
            ("triangle", "plain"), ("triangle", "checked")], 40, 4)),
        ("digits-0to5", lambda i, n: _digits_world(n, i, (0, 1, 2, 3, 4, 5), 32, 4)),
        ("digits-even", lambda i, n: _digits_world(n, i, (0, 2, 4, 6, 8), 36, 6)),
        ("digits-3to9", lambda i, n: _digits_world(n, i, (3, 4, 5, 6, 7, 8, 9), 32, 3)),
        ("digits-017", lambda i, n: _digits_world(n, i, (0, 1, 7), 40, 10)),
        ("digits-odd", lambda i, n: _digits_world(n, i, (1, 3, 5, 7, 9), 32, 5)),
        ("digits-2568", lambda i, n: _digits_world(n, i, (2, 5, 6, 8), 36, 6)),
        ("glyphs-5", lambda i, n: _glyphs_world(n, i, "ABCDE", 32, 5)),
        ("glyphs-4big", lambda i, n: _glyphs_world(n, i, "KMRX", 40, 8)),
        ("glyphs-8", lambda i, n: _glyphs_world(n, i, "BDEFHLPT", 32, 3)),
        ("glyphs-6", lambda i, n: _glyphs_world(n, i, "CGOQSU", 32, 4)),
        ("glyphs-3", lambda i, n: _glyphs_world(n, i, "AVW", 36, 10)),
    ]
    for i, (name, make) in enumerate(specs):
        w[name] = make(i, name)
    return w


WORLDS: dict[str, object] = _families()
assert set(TUNING) | set(HELD_OUT) == set(WORLDS) and not set(TUNING) & set(HELD_OUT)
