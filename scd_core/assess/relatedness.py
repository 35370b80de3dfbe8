"""Does a teacher repository look related to a target set at all? A cheap check before any forward pass.

The home page pairs a fresh upload with the session's teacher repository; when that repository is, say,
the demo zoo of coloured shapes and the upload holds flowers, the user should hear so at once rather
than after a ranking. :func:`repository_relatedness` decides from the label names alone (no forward
pass), and, when cost matrices between label spaces are at hand (e.g. from cached teacher outputs),
also from them:

- **names**: a teacher shares a label with the target when a label name is equal (case-insensitive,
  ``_``/``-`` read as spaces) or when both share a word of three letters or more (``tabby cat`` and
  ``cat``);
- **costs**: a cost matrix C (teacher classes x target classes, values in [0, 1]) is *near uniform* when
  no teacher class is clearly closer to a target class than the average one: the mean over target
  classes of ``mean_i C_ij - min_i C_ij`` is below ``uniform_tol``.

The repository *looks unrelated* when no teacher shares a label name with the target AND (when costs are
given) every teacher's cost matrix is near uniform.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Relatedness", "cost_contrast", "repository_relatedness", "shared_labels"]

_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
UNIFORM_TOL = 0.05


def _normal(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", str(name)).casefold().split())


def shared_labels(target_classes: Sequence[str], teacher_labels: Sequence[str]) -> list[str]:
    """The target classes a teacher's labels name: equal names, or a shared word of 3+ letters."""
    names = {_normal(n) for n in teacher_labels}
    words = {w for n in names for w in _WORD.findall(n)}
    out = []
    for cls in target_classes:
        key = _normal(cls)
        if key in names or any(w in words for w in _WORD.findall(key)):
            out.append(str(cls))
    return out


def cost_contrast(cost: np.ndarray) -> float:
    """How far a cost matrix (K_t x K_s, in [0, 1]) is from uniform: the mean over target classes of the gap
    between the average and the cheapest teacher class (0: every teacher class costs the same)."""
    c = np.asarray(cost, dtype=np.float64)
    if c.size == 0:
        return 0.0
    return float(np.nanmean(np.nanmean(c, axis=0) - np.nanmin(c, axis=0)))


@dataclass(frozen=True)
class Relatedness:
    """The verdict of :func:`repository_relatedness`.

    ``shared`` maps each teacher to the target classes its labels name; ``contrast`` each teacher with a
    cost matrix to its :func:`cost_contrast`; ``by_cost`` whether costs took part in the verdict.
    """

    unrelated: bool
    shared: dict[str, list[str]] = field(default_factory=dict)
    contrast: dict[str, float] = field(default_factory=dict)
    by_cost: bool = False

    @property
    def related_teachers(self) -> list[str]:
        """Teachers that share a label name with the target."""
        return [name for name, classes in self.shared.items() if classes]


def repository_relatedness(target_classes: Sequence[str], teachers: Mapping[str, Sequence[str]],
                           costs: Mapping[str, np.ndarray] | None = None,
                           uniform_tol: float = UNIFORM_TOL) -> Relatedness:
    """Whether the teachers (name -> label names) look unrelated to ``target_classes`` (see the module doc).

    An empty repository is not called unrelated (there is nothing to warn about but the emptiness, which
    the pages report on their own).
    """
    shared = {name: shared_labels(target_classes, labels) for name, labels in teachers.items()}
    contrast = {name: cost_contrast(c) for name, c in (costs or {}).items()}
    by_name = bool(teachers) and not any(shared.values())
    by_cost = bool(contrast)
    near_uniform = all(v < uniform_tol for v in contrast.values())
    return Relatedness(unrelated=by_name and near_uniform, shared=shared, contrast=contrast, by_cost=by_cost)
