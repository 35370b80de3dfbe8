"""Exporting a run: the student in the teacher-folder layout and ``run.json``, both written atomically.

The whole run folder is staged in a temporary sibling and renamed into place, so a cancelled or
killed run never leaves a half-written student or record behind: a reader sees no run folder (or the
previous one) or the complete new one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from scd_core.data.targets import TargetSet
from scd_core.distill.config import DistillResult
from scd_core.distill.data import STUDENT_MEAN, STUDENT_STD
from scd_core.teachers.repository import save_teacher
from scd_core.utils import replacing_folder, slug


def new_run_id(method: str, teacher: str | None, seed: int) -> str:
    """A unique, readable run id: time, method, teacher, seed and a microsecond suffix."""
    return (f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(method, 40, 'run')}-{slug(teacher or 'none', 40, 'run')}-s{seed}"
            f"-{int(time.time() * 1e6) % 1_000_000:06d}")


def export_run(student: torch.nn.Module, target: TargetSet, result: DistillResult, size: int) -> DistillResult:
    """Write the run folder ``result.run_dir``: ``student/`` (a teacher folder that loads with plain timm)
    and ``run.json``.

    Both are written into a temporary sibling folder that is renamed into place at the end, so the run
    folder appears complete or not at all; an existing run folder at that path is replaced.
    """
    cfg = result.config
    final = Path(result.run_dir)
    with replacing_folder(final) as tmp:
        save_teacher(
            student.eval(), target.class_names, tmp / "student",
            description=f"student ({cfg['student']}) distilled with {cfg['method']}"
                        + (f" from {result.teacher}" if result.teacher else "") + f" on {target.name}",
            data_config={"input_size": (3, size, size), "mean": STUDENT_MEAN, "std": STUDENT_STD, "crop_pct": 1.0,
                         "interpolation": "bilinear"},
        )
        result.student_dir = str(final / "student")
        (tmp / "run.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result
