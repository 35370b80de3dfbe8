"""The home page's "does this repository look related to the upload?" check (names, optionally costs)."""

from __future__ import annotations

import numpy as np

from scd_core.assess.relatedness import cost_contrast, repository_relatedness, shared_labels

SHAPES_ZOO = {"shape_only": ["circle", "square", "triangle"], "colour_only": ["red", "green", "blue"]}


def test_names_in_common_are_found_case_insensitively_and_by_word():
    assert shared_labels(["Cat", "dog", "owl"], ["cat", "DOG"]) == ["Cat", "dog"]
    assert shared_labels(["tabby_cat"], ["Tabby Cat"]) == ["tabby_cat"]  # _ and - read as spaces
    assert shared_labels(["cat"], ["tabby cat", "tiger"]) == ["cat"]  # a shared word of 3+ letters
    assert shared_labels(["ox"], ["ox cart"]) == []  # words under 3 letters are too weak a hint
    assert shared_labels(["daisy", "rose"], SHAPES_ZOO["shape_only"]) == []


def test_a_repository_without_a_name_in_common_looks_unrelated():
    flowers = ["daisy", "rose", "tulip"]
    verdict = repository_relatedness(flowers, SHAPES_ZOO)
    assert verdict.unrelated and not verdict.by_cost and verdict.related_teachers == []
    related = repository_relatedness(["red circle", "blue square"], SHAPES_ZOO)
    assert not related.unrelated and set(related.related_teachers) == {"shape_only", "colour_only"}
    assert not repository_relatedness(flowers, {}).unrelated  # nothing to compare with: no warning


def test_a_cost_matrix_with_contrast_clears_the_warning():
    uniform = np.full((3, 3), 0.5) + np.random.default_rng(0).uniform(-0.01, 0.01, (3, 3))
    informative = np.array([[0.1, 0.9, 0.9], [0.9, 0.1, 0.9], [0.9, 0.9, 0.1]])
    assert cost_contrast(uniform) < 0.05 < cost_contrast(informative)
    assert cost_contrast(np.zeros((0, 3))) == 0.0
    flowers = ["daisy", "rose", "tulip"]
    both_uniform = repository_relatedness(flowers, SHAPES_ZOO, costs={"shape_only": uniform, "colour_only": uniform})
    assert both_uniform.unrelated and both_uniform.by_cost
    one_informative = repository_relatedness(flowers, SHAPES_ZOO,
                                             costs={"shape_only": uniform, "colour_only": informative})
    assert not one_informative.unrelated and one_informative.contrast["colour_only"] > 0.05
