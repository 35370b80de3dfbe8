"""Shared driver of the benchmarks that run over the demo worlds (distillation, ranking quality)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common import LoadMonitor, machine, save, save_markdown


def world_paths(name: str, size: str, root: str | None) -> tuple[Path, Path]:
    """Target and teacher folders of demo world ``name``: from ``root/<name>`` or the workspace cache."""
    from scd_core.demo.worlds import ensure_world, open_world

    world = open_world(Path(root) / name) if root else ensure_world(name, size=size)
    return Path(world.target_dir), Path(world.teachers_dir)


def main(doc: str, name: str, run_world: Callable[..., dict], markdown: Callable[[list, dict, dict], str],
         reuse_option: bool = False) -> None:
    """Parse the common options, run ``run_world`` per world, save ``results/<name>.json`` and ``.md``.

    ``--quick`` is a smoke run: the small worlds, 1 seed, 2 epochs; its results go to ``<name>_quick``.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small worlds, 1 seed, 2 epochs (a smoke run)")
    ap.add_argument("--worlds", default="shapes,digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="default: the product's default run")
    ap.add_argument("--worlds-root", help="folder holding already built full worlds as <root>/<world>")
    if reuse_option:
        ap.add_argument("--reuse-students", metavar="JSON",
                        help="take the students' accuracies and cost from this earlier results file")
    args = ap.parse_args()
    extra = {"reuse": args.reuse_students} if reuse_option else {}
    size, seeds, epochs = ("small", 1, 2) if args.quick else ("full", args.seeds, args.epochs)
    share = LoadMonitor()
    info = machine()
    results = [run_world(w.strip(), size, seeds, epochs, None if args.quick else args.worlds_root, **extra)
               for w in args.worlds.split(",") if w.strip()]
    share_info = share.stop()
    out = f"{name}_quick" if args.quick else name
    save(out, {"results": results, "cpu_share": share_info})
    print(save_markdown(out, markdown(results, info, share_info)))
