"""World families beyond the shipped demos: the glyphs family, and the ranking-science suite's definition."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from scd_core.demo.common import SizeConfig, build_atomically, build_into, make_teacher, open_world, torch_state
from scd_core.demo.glyphs import LETTERS, STYLES, GlyphsFamily, _sample, glyph_class, render_glyphs
from scd_core.sources import as_repository, as_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

_TINY = {"tiny": SizeConfig(image=32, train_per_class=2, val_per_class=2, test_per_class=2, unlabeled=6,
                            teacher_train=64, teacher_heldout=32, epochs=1)}


def _family() -> GlyphsFamily:
    zoo = [make_teacher("letters", "test_resnet", [(f"letter {c}", glyph_class(c)) for c in "ABC"], "letters",
                       "high", "same letters"),
           make_teacher("style", "test_efficientnet", [(s, glyph_class("".join(LETTERS), s)) for s in STYLES],
                        "styles", "none", "the wrong cue")]
    return GlyphsFamily("glyphs-tiny", [glyph_class(c) for c in "ABC"], ["A", "B", "C"], zoo, _TINY)


def _build(root: Path):
    fam = _family()

    def fill(tmp: Path) -> dict:
        with torch_state(1):
            return build_into(fam, "tiny", tmp, 0, lambda f, m: None)

    build_atomically(root, fill)
    return open_world(root)


def test_glyph_world_builds_loads_and_is_deterministic(tmp_path):
    world = _build(tmp_path / "a")
    target, repo = as_target(world.target_dir), as_repository(world.teachers_dir)
    assert target.class_names == ["A", "B", "C"] and len(target.split("train")) == 6
    assert sorted(repo.names) == ["letters", "style"]
    assert list(repo.get("style").label_names) == list(STYLES)
    again = _build(tmp_path / "b")

    def digest(root: Path) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))]

    assert digest(world.target_dir) == digest(again.target_dir)


def test_glyph_sampling_respects_classes_and_styles():
    rng = np.random.default_rng(0)
    classes = [glyph_class("AB"), glyph_class("C", "mono")]
    letter, style, labels = _sample(classes, 400, rng)
    assert set(letter[labels == 0]) == {0, 1} and set(letter[labels == 1]) == {2}
    assert set(style[labels == 1]) == {list(STYLES).index("mono")} and len(set(style[labels == 0])) == len(STYLES)
    img = render_glyphs(letter[:5], style[:5], rng, 32)
    assert img.shape == (5, 32, 32, 3) and img.dtype == np.uint8 and img.std() > 10


def test_suite_definition_spans_families_relations_and_a_declared_split():
    suite = pytest.importorskip("suite")
    assert len(suite.WORLDS) >= 16 and len(suite.HELD_OUT) >= 6
    families = {name.split("-")[0] for name in suite.WORLDS}
    assert families == {"shapes", "digits", "glyphs"}
    assert {name.split("-")[0] for name in suite.HELD_OUT} == families  # held-out worlds in every family
    sizes, class_counts = set(), set()
    for fam in suite.WORLDS.values():
        teachers = fam.teachers()
        assert 8 <= len(teachers) <= 12
        assert [t.name for t in teachers] == list(suite.ROLES)
        assert len({t.arch for t in teachers}) >= 4  # different architectures in every zoo
        cfg = fam.config("bench")
        assert cfg.train_per_class * len(fam.target_classes()) + cfg.unlabeled == suite.POOL
        sizes.add(cfg.image)
        class_counts.add(len(fam.target_classes()))
    assert len(sizes) >= 3 and len(class_counts) >= 5
