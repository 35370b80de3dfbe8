"""Command line: ``python -m scd_core {rank,plan,distill,validate,demo} ...`` with JSON output.

Bad user input (an :class:`ScdError`, including a bad ``SCD_*`` setting) prints one line ``error: ...`` on
stderr and exits with status 2. Any other exception is a bug: its traceback goes to the internal-error log
(:mod:`scd_core.incidents`) and stderr gets one line ``error: internal error (id ...)``, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from scd_core.cli.executor import add_executor_options
from scd_core.config import DEFAULTS, check_environment, parse_device
from scd_core.errors import ScdError
from scd_core.incidents import user_message
from scd_core.ot.costs import COSTS, DEFAULT_COST
from scd_core.progress import ProgressEvent

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


@contextlib.contextmanager
def _writing(path: str | Path) -> Iterator[None]:
    """A file the user asked for that cannot be written is bad input, not a bug."""
    try:
        yield
    except OSError as exc:
        raise ScdError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _write_json(obj: dict, path: str | None) -> None:
    text = json.dumps(obj, indent=2, allow_nan=False, default=str)
    if path is None or path == "-":
        print(text)
        return
    out = Path(path)
    with _writing(path):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)


class _Bar:
    """tqdm progress bar on stderr, fed with :class:`~scd_core.progress.ProgressEvent` s."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}")

    def __call__(self, event: ProgressEvent) -> None:
        if self.bar is not None:
            self.bar.set_description_str(event.message[:60])
            if event.fraction is not None:
                self.bar.n = int(1000 * max(0.0, min(1.0, event.fraction)))
            self.bar.refresh()

    def legacy(self, fraction: float, message: str) -> None:
        """For steps that still report ``progress(fraction, message)``."""
        self(ProgressEvent(message, fraction))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _metric_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def cmd_rank(args: argparse.Namespace, bar: _Bar) -> dict:
    from scd_core.assess.ranking import rank
    from scd_core.cli.executor import open_executor

    with open_executor(args) as executor:
        ranking = rank(args.target, args.repo, teachers=args.teacher, metrics=_metric_list(args.metrics),
                       budget=args.budget, device=args.device, batch_size=args.batch_size, progress=bar,
                       executor=executor)
    for name, why in ranking.failures.items():
        print(f"warning: teacher {name!r} could not be scored: {why}", file=sys.stderr)
    if not args.json:
        print(ranking.table().to_string(float_format=lambda v: f"{v:.4f}"), file=sys.stderr)
    return ranking.to_json()


def cmd_plan(args: argparse.Namespace, bar: _Bar) -> dict:
    from scd_core.ot.plans import transport_plan

    matrix = transport_plan(args.target, args.repo, args.teacher, args.kind, cost=args.cost, eps=args.eps,
                            device=args.device, batch_size=args.batch_size, progress=bar.legacy)
    if args.csv:
        with _writing(args.csv):
            matrix.to_csv(args.csv)
    return matrix.to_json()


def cmd_demo(args: argparse.Namespace, bar: _Bar) -> dict:
    from scd_core.demo.worlds import WORLDS, build_world, ensure_world

    worlds = [args.world] if args.world else list(WORLDS)
    built = []
    for name in worlds:
        if args.out:
            out = Path(args.out) / name if len(worlds) > 1 else Path(args.out)
            world = build_world(name, out, size=args.size or "full", seed=args.seed, progress=bar.legacy)
        else:
            world = ensure_world(name, size=args.size, progress=bar.legacy)
        built.append({"world": world.name, "size": world.size, "target": str(world.target_dir),
                      "repo": str(world.teachers_dir)})
    return {"worlds": built}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="folder, .zip, .csv or demo:WORLD")
    p.add_argument("--repo", required=True, help="teacher repository folder, demo:WORLD or hub names")
    p.add_argument("--device", type=parse_device, metavar="{auto,cpu,cuda,cuda:N,mps}",
                   help=f"compute device (default: $SCD_DEVICE, else {DEFAULTS.device})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", metavar="FILE", help="write JSON here ('-' for stdout)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scd_core",
                                     description="Selective cross-task distillation: rank, map, distill.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("rank", help="rank the teachers of a repository for a target set")
    _common(p)
    p.add_argument("--teacher", action="append", help="only these teachers (repeatable)")
    p.add_argument("--metrics", default="scd,leep,nce,logme,hscore",
                   help="comma-separated; the first one orders the ranking")
    p.add_argument("--budget", type=float, help="fraction of a full scan, by successive halving")
    add_executor_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("plan", help="label-space mapping of one teacher: plan, joint or cost")
    _common(p)
    p.add_argument("--teacher", required=True)
    p.add_argument("--kind", default="plan", choices=["plan", "joint", "cost"])
    p.add_argument("--cost", default=DEFAULT_COST, choices=list(COSTS),
                   help="; ".join(f"{c.name}: {c.description}" for c in COSTS.values()))
    p.add_argument("--eps", type=float, help="entropic regularisation (default: exact plan)")
    p.add_argument("--csv", metavar="FILE", help="also write the matrix as CSV")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="built-in demo worlds")
    demo_sub = p.add_subparsers(dest="demo_command", required=True)
    b = demo_sub.add_parser("build", help="write a demo target set and teacher zoo")
    b.add_argument("--world", help="shapes or digits (default: all)")
    b.add_argument("--out", help="output folder (default: the workspace cache)")
    b.add_argument("--size", choices=["full", "small"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", metavar="FILE")
    b.set_defaults(func=cmd_demo)

    _add_distill_commands(sub)
    return parser


def _add_distill_commands(sub) -> None:
    """``distill`` and ``validate`` (available once the distillation engine is installed)."""
    try:
        from scd_core.cli.distill import add_commands
    except ImportError:
        return
    add_commands(sub, _common)


def _run(args: argparse.Namespace, bar: _Bar) -> None:
    config = check_environment()  # a bad SCD_* value stops every command before any work
    if hasattr(args, "device") and args.device is None:
        args.device = config.device
    func: Callable = args.func
    result = func(args, bar)
    bar.close()
    _write_json(result, getattr(args, "json", None) or "-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is 0, 2 for bad input, 1 for a bug, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    bar = _Bar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        _run(args, bar)
    except KeyboardInterrupt:
        bar.close()
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        bar.close()
        print(f"error: {user_message(exc, echo=False, show_path=True)}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(exc, ScdError) else EXIT_INTERNAL_ERROR
    return 0
