"""Label-space mappings of one teacher onto the target: the transport plan, the soft joint, the cost.

The dataset-level plan is G = argmin_{G in U(a, b)} <G, C> with a = J 1 (the teacher's mean
prediction), b = J^T 1 (the label frequencies) and C the teacher-to-target cost (exact, POT's
network simplex), or its entropic version G_eps = argmin <G, C> - eps H(G) when ``eps`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scd_core.data.targets import TargetSet
from scd_core.errors import ScdError
from scd_core.ot.costs import DEFAULT_COST, cost_matrix
from scd_core.ot.transport import entropic_plan, exact_plan
from scd_core.outputs.forward import teacher_outputs
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.sources import as_repository, as_target
from scd_core.teachers.repository import TeacherRepository

KINDS = ("plan", "joint", "cost")


@dataclass
class LabeledMatrix:
    """A matrix with teacher class names on the rows and target class names on the columns."""

    rows: list[str]
    cols: list[str]
    matrix: np.ndarray
    kind: str = "plan"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.matrix, index=pd.Index(self.rows, name="teacher_class"),
                            columns=pd.Index(self.cols, name="target_class"))

    def to_csv(self, path: str | Path) -> None:
        self.to_frame().to_csv(path)

    def to_json(self) -> dict:
        return {"kind": self.kind, "rows": self.rows, "cols": self.cols, "matrix": self.matrix.tolist()}

    def top_rows(self, k: int) -> LabeledMatrix:
        """The ``k`` rows with the most mass (plan, joint) or the lowest minimum cost (cost)."""
        if k >= len(self.rows):
            return self
        key = -self.matrix.min(axis=1) if self.kind == "cost" else self.matrix.sum(axis=1)
        keep = np.sort(np.argsort(-key, kind="stable")[:k])
        return LabeledMatrix([self.rows[i] for i in keep], self.cols, self.matrix[keep], self.kind)


def plan_from_outputs(outputs: TeacherOutputs, kind: str = "plan", *, cost: str = DEFAULT_COST,
                      eps: float | None = None) -> LabeledMatrix:
    """Plan, joint or cost of a teacher from its outputs (no forward pass)."""
    if kind not in KINDS:
        raise ScdError(f"unknown matrix kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "joint":
        matrix = np.asarray(outputs.joint, dtype=np.float64)
    else:
        c = cost_matrix(outputs, cost)
        if kind == "cost":
            matrix = c
        else:
            a, b = outputs.joint.sum(axis=1), outputs.joint.sum(axis=0)
            matrix = exact_plan(a, b, c) if eps is None else entropic_plan(a, b, c, eps)
    return LabeledMatrix(list(outputs.teacher_labels), list(outputs.target_labels), np.asarray(matrix), kind)


def transport_plan(target: TargetSet | str | Path, repo: TeacherRepository | str | Path, teacher: str,
                   kind: str = "plan", *, cost: str = DEFAULT_COST, eps: float | None = None,
                   device: str = "auto", batch_size: int = 64, progress=None) -> LabeledMatrix:
    """The labeled plan (default), soft joint or cost matrix between a teacher and the target."""
    if kind not in KINDS:
        raise ScdError(f"unknown matrix kind {kind!r}; choose one of {', '.join(KINDS)}")
    target, repo = as_target(target), as_repository(repo)
    outputs = teacher_outputs(repo.get(teacher), target, device=device, batch_size=batch_size, progress=progress)
    return plan_from_outputs(outputs, kind, cost=cost, eps=eps)
