"""Experiment (not the product): ``bench_distill`` with the adaptive weight as the *squared* agreement.

    PYTHONPATH=benchmarks python benchmarks/experiments/adaptive_squared.py

Lambda becomes ``lambda * a**2`` instead of ``lambda * a`` (a: the cross-fitted label agreement of
:mod:`scd_core.distill.signal`), for ``scd`` on both demo worlds, 3 seeds; ``ce`` is taken from
``results/distill.json``. Writes ``results/distill_adaptive_squared.{json,md}`` and its own runs log.
The rule declared before the run: adopt it only if it meets every demo target (best teacher +15 /
+10 over ``ce``, every teacher at least ``ce`` - 2). It did not (see the README's distillation section).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_distill
import common
import worlds

import scd_core.distill.signal as signal

_agreement = signal.crossfit_agreement


def squared_agreement(*args: Any, **kwargs: Any) -> dict:
    out = dict(_agreement(*args, **kwargs))
    out["agreement"] = out["agreement"] ** 2
    return out


def main() -> None:
    if getattr(signal, "ADAPTIVE_RULE", None):  # the product's rule is now one weight per teacher class
        sys.exit("this experiment ran against the earlier rule (one adaptive weight per teacher); rerun it at "
                 "commit e06427a (git worktree add /tmp/e06427a e06427a)")
    signal.crossfit_agreement = squared_agreement  # at e06427a, teacher_signal looked it up at call time
    results = Path(__file__).resolve().parents[1] / "results"
    work = Path(tempfile.mkdtemp(prefix="adaptive-squared-"))
    common.RESULTS = bench_distill.RESULTS = work  # the bench's own tables stay as they are
    bench_distill.RUNS_LOG = results / "distill_adaptive_squared_runs.jsonl"  # resumable, like the bench
    bench_distill.OPTIONS.methods, bench_distill.OPTIONS.weightings = ("scd",), ("adaptive",)
    bench_distill.OPTIONS.reuse = str(results / "distill.json")
    sys.argv = [sys.argv[0], "--worlds", "shapes,digits", "--seeds", "3"]
    worlds.main(bench_distill.__doc__, "distill", bench_distill.run_world, bench_distill.markdown)
    payload = json.loads((work / "distill.json").read_text())
    (results / "distill_adaptive_squared.json").write_text(json.dumps(payload, indent=1) + "\n")
    note = ("\n> Experiment, not the product's weighting: lambda times the *squared* cross-fitted agreement "
            "(`benchmarks/experiments/adaptive_squared.py`). Not adopted: it misses the every-teacher bound on "
            "shapes.\n")
    text = (work / "distill.md").read_text().replace("# Distillation benchmark\n",
                                                     "# Distillation benchmark: squared agreement\n" + note, 1)
    (results / "distill_adaptive_squared.md").write_text(text)


if __name__ == "__main__":
    main()
