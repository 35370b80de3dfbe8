"""The demo worlds: a registry of world families, building them, and the cached copies in the workspace.

Two worlds ship with the engine, both built from nothing but a seed (no download):

- ``shapes`` (:mod:`scd_core.demo.shapes`): procedurally drawn coloured shapes; the target combines
  colour and shape, the teachers know other label spaces over the same kind of images.
- ``digits`` (:mod:`scd_core.demo.digits`): scikit-learn's real handwritten digits on paper; the
  target is the digits 0-5, the teachers saw all digits, other digits or groupings of digits.

The target folder of a built world is an ordinary ImageFolder and goes through the same loader as a
user's upload; the teachers folder is an ordinary teacher repository. :func:`ensure_world` builds a
world once into the workspace and reuses it afterwards; :func:`world_description` explains which
teachers should help. ``world.json`` also records the hidden labels of the unlabeled pool (outside the
target folder, so no loader sees them) and each teacher's accuracy on held-out images of its own task.

Sizes: ``full`` (the demo; 70-75 s per world on a quiet 2-core machine, teacher training included, up to
about 3 minutes on a busy one) and ``small`` (for tests and impatient first looks; about 12-15 s, same
layout and label spaces, fewer images, teachers only partly trained). :data:`BUILD_SECONDS` holds the
measured range.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from scd_core.config import settings
from scd_core.demo.common import (
    BUILD_THREADS,
    MANIFEST_NAME,
    VERSION,
    DemoWorld,
    Family,
    ProgressFn,
    Teacher,
    build_atomically,
    build_into,
    file_lock,
    is_world,
    open_world,
    torch_state,
)
from scd_core.demo.digits import DigitsFamily, render_digits
from scd_core.demo.shapes import ShapesFamily, render_shapes
from scd_core.errors import ScdError

__all__ = ["BUILD_SECONDS", "BUILD_THREADS", "MANIFEST_NAME", "SIZES", "VERSION", "WORLDS", "DemoWorld", "build_world",
           "ensure_world", "family", "open_world", "render_digits", "render_shapes", "world_description", "world_dir"]

#: the demo world families by name (a registry: the one place a world name is resolved)
_FAMILIES: dict[str, Family] = {"shapes": ShapesFamily(), "digits": DigitsFamily()}
WORLDS: tuple[str, ...] = tuple(_FAMILIES)
SIZES: tuple[str, ...] = ("full", "small")
BUILD_SECONDS: dict[str, tuple[int, int]] = {"full": (70, 180), "small": (12, 15)}
"""Measured wall seconds of one world's build on 2 CPU cores, quiet machine to busy one
(``benchmarks/results/demo_build.json``: full 70 s shapes, 74 s digits on a quiet machine; 162 s and 178 s with
other jobs running; small 12-14 s)."""


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in WORLDS:
        raise ScdError(f"unknown demo world {name!r} (valid: {', '.join(WORLDS)})")
    return key


def _check_size(size: str) -> str:
    key = str(size).strip().lower()
    if key not in SIZES:
        raise ScdError(f"unknown demo world size {size!r} (valid: {', '.join(SIZES)})")
    return key


def family(name: str) -> Family:
    """The family of demo world ``name`` (its images, target classes and teacher zoo)."""
    return _FAMILIES[_check_name(name)]


def _teachers(name: str) -> list[Teacher]:
    return family(name).teachers()


def _build_into(name: str, size: str, root: Path, seed: int, progress: ProgressFn) -> dict[str, Any]:
    return build_into(family(name), size, root, seed, progress)


def build_world(name: str, out_dir: str | Path, *, size: str = "full", seed: int = 0,
                progress: ProgressFn | None = None, threads: int = BUILD_THREADS) -> DemoWorld:
    """Build demo world ``name`` into ``out_dir`` (``target/``, ``teachers/``, ``world.json``).

    Deterministic for a given ``seed``, ``size`` and torch thread count. The world is built in a
    temporary sibling folder and renamed into place at the end, so an interrupted build leaves
    nothing half-written. An existing demo world (or empty folder) at ``out_dir`` is replaced; any
    other existing folder is refused. ``progress(fraction, message)`` is called as the build goes.
    """
    name = _check_name(name)
    size = _check_size(size)
    out_dir = Path(out_dir)
    report = progress or (lambda fraction, message: None)

    def fill(tmp: Path) -> dict[str, Any]:
        with torch_state(threads):
            manifest = _build_into(name, size, tmp, seed, report)
        manifest["description"] = world_description(name)
        return manifest

    build_atomically(out_dir, fill)
    report(1.0, f"{name}: world ready")
    return open_world(out_dir)


# ----------------------------------------------------------------------------------------------
# The cached worlds in the workspace
# ----------------------------------------------------------------------------------------------

_BUILD_LOCK = threading.Lock()


def world_dir(name: str, size: str | None = None) -> Path:
    """Where :func:`ensure_world` keeps world ``name`` of ``size`` in the workspace."""
    from scd_core.runtime.workspace import subdir

    size = _check_size(size or settings().demo_size)
    return subdir("demo") / f"{_check_name(name)}-{size}-v{VERSION}"


def ensure_world(name: str, *, size: str | None = None, progress: ProgressFn | None = None) -> DemoWorld:
    """The demo world ``name`` from the workspace cache, built (seed 0) on first use.

    ``size`` defaults to ``$SCD_DEMO_SIZE`` or ``"full"``. A thread lock and a file lock make
    concurrent callers wait for one build instead of building twice.
    """
    name = _check_name(name)
    size = _check_size(size or settings().demo_size)
    root = world_dir(name, size)
    if is_world(root):
        return open_world(root)
    with _BUILD_LOCK, file_lock(root.parent / f".{root.name}.lock"):
        if is_world(root):
            return open_world(root)
        # leftovers of a build that was killed (we hold the lock: no build of this world is running)
        for stale in [*root.parent.glob(f".{root.name}.building-*"), *root.parent.glob(f".{root.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if root.exists() and not any(root.iterdir()):
            root.rmdir()
        return build_world(name, root, size=size, seed=0, progress=progress)


# ----------------------------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------------------------

_RANK = {"high": "yes, strongly", "medium": "partly", "low": "little", "none": "no"}


def describe_family(fam: Family) -> str:
    """Markdown: what a family's target is, and for each teacher whether and why it should help."""
    lines = [f"### Demo world `{fam.name}`", "", fam.intro, "",
             "| teacher | label space | should help? | why |", "|---|---|---|---|"]
    for t in fam.teachers():
        space = ("; ".join(t.labels) if len(t.labels) <= 6
                 else f"{len(t.labels)} classes: {'; '.join(t.labels[:4])}; ...")
        lines.append(f"| `{t.name}` ({t.arch}) | {space} | {_RANK[t.usefulness]} | {t.why} |")
    lines += ["", "A good ranking puts the teachers that help strongly first and the untrained and "
              "unrelated ones last."]
    return "\n".join(lines)


def world_description(name: str) -> str:
    """Markdown: what the world's target is, and for each teacher whether and why it should help."""
    return describe_family(family(name))
