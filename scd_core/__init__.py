"""scd_core: selective cross-task distillation engine (no UI code; never imports streamlit).

The public API, in the order of the method::

    import scd_core

    target = scd_core.load_target("demo:shapes")        # a folder, .zip, .csv or demo:WORLD
    repo = scd_core.open_repository("demo:shapes")      # a folder, hub names, or demo:WORLD
    ranking = scd_core.rank(target, repo)               # a Ranking, best teacher first
    plan = scd_core.transport_plan(target, repo, ranking.best)
    result = scd_core.distill.distill(target, repo.get(ranking.best), scd_core.DistillConfig())
    report = scd_core.validate(target, repo)            # distill from each teacher, check the ranking

Everything but the error types is imported on first use, so ``import scd_core`` stays light.
``scd_core.distill`` is the distillation subpackage; its ``distill`` function trains one student.
"""

from __future__ import annotations

import importlib
from typing import Any

from scd_core.errors import ScdError, TargetSetError, TeacherError

_LAZY = {
    "load_target": "scd_core.sources",
    "open_repository": "scd_core.sources",
    "parse_source": "scd_core.sources",
    "rank": "scd_core.assess.ranking",
    "score_teacher": "scd_core.assess.ranking",
    "Ranking": "scd_core.assess.ranking",
    "TeacherScore": "scd_core.assess.ranking",
    "transport_plan": "scd_core.ot.plans",
    "plan": ("scd_core.ot.plans", "transport_plan"),
    "cost_matrix": "scd_core.ot.costs",
    "distill": "scd_core.distill",
    "DistillConfig": "scd_core.distill.trainer",
    "validate": "scd_core.assess.validate",
}

__all__ = ["ScdError", "TargetSetError", "TeacherError", *_LAZY]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'scd_core' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    imported = importlib.import_module(module)
    value = imported if module == f"{__name__}.{name}" else getattr(imported, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
