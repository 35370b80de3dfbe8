"""The ``distill`` and ``validate`` commands of the CLI (see :mod:`scd_core.cli.main`)."""

from __future__ import annotations

import argparse

from scd_core.cli.executor import add_executor_options
from scd_core.distill.config import DEFAULT_STUDENT, WEIGHTINGS, DistillConfig
from scd_core.distill.losses import METHODS
from scd_core.distill.optim import OPTIMIZERS
from scd_core.ot.costs import COSTS


def _config(args: argparse.Namespace, method: str) -> DistillConfig:
    return DistillConfig(method=method, student=args.student, epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, weight=args.weight, weighting=args.weighting,
                         temperature=args.temperature,
                         eps=args.eps, cost=args.cost, image_size=args.image_size, seed=args.seed, device=args.device)


def cmd_distill(args: argparse.Namespace, bar) -> dict:
    from scd_core.distill.trainer import distill
    from scd_core.sources import as_repository, as_target

    target = as_target(args.target)
    teacher = as_repository(args.repo).get(args.teacher) if args.teacher else None

    from scd_core.cli.executor import open_executor

    with open_executor(args) as executor:
        if executor is None:
            result = distill(target, teacher, _config(args, args.method), progress=bar, run_dir=args.out)
        else:  # one task on the executor (a GPU of the cluster when it has one); no per-epoch progress
            bar.legacy(0.0, f"distilling on the {executor.name} executor")
            result = executor.submit(distill, target, teacher, _config(args, args.method),
                                     run_dir=args.out).result()
    return {"history": [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_acc": h["val_acc"]}
                        for h in result.history],
            "val_acc": result.val_acc, "test_acc": result.test_acc, "student_dir": result.student_dir,
            "run_dir": result.run_dir, "status": result.status, "timing": result.timing}


def cmd_validate(args: argparse.Namespace, bar) -> dict:
    from scd_core.assess.validate import validate

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.report:
        from scd_core.viz.figures import check_report_path

        check_report_path(args.report)  # before the students are trained, not after
    from scd_core.cli.executor import open_executor

    with open_executor(args) as executor:
        result = validate(args.target, args.repo, metrics=metrics, top=args.top, seeds=args.seeds,
                          config=_config(args, args.method), device=args.device, progress=bar,
                          executor=executor)
    if args.report:
        from scd_core.viz.figures import validation_scatter, write_figure

        result["report"] = write_figure(validation_scatter(result), args.report)
    return result


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", default=DEFAULT_STUDENT, help="timm architecture of the student")
    p.add_argument("--epochs", type=int, default=DistillConfig.epochs)
    p.add_argument("--optimizer", default=DistillConfig.optimizer, choices=list(OPTIMIZERS))
    p.add_argument("--lr", type=float)
    p.add_argument("--weight", type=float, default=DistillConfig.weight, help="lambda of the teacher term")
    p.add_argument("--weighting", default=DistillConfig.weighting, choices=list(WEIGHTINGS),
                   help="fixed: lambda as given; adaptive: each image's lambda times the cross-fitted precision "
                        "(above chance) on train of the teacher class it predicts")
    p.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    p.add_argument("--eps", type=float, default=DistillConfig.eps,
                   help="entropic regularisation of the scd loss, relative to the cost range")
    p.add_argument("--cost", default=DistillConfig.cost, choices=list(COSTS),
                   help="teacher-to-target cost of the scd loss")
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int, default=0)


def add_commands(sub, common) -> None:
    p = sub.add_parser("distill", help="distill one teacher into a small student")
    common(p)
    p.add_argument("--teacher", help="teacher name (not needed for --method ce)")
    p.add_argument("--method", default="scd", choices=list(METHODS))
    p.add_argument("--out", help="run folder (default: a new folder under the workspace)")
    _training_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("validate", help="distill from each teacher and check every metric's ranking")
    common(p)
    p.add_argument("--top", type=int, help="only the top K teachers by the first metric")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--method", default="scd", choices=list(METHODS))
    p.add_argument("--metrics", default="scd,leep,nce,logme,hscore")
    p.add_argument("--report", metavar="FILE",
                   help="also write a scatter of score vs student accuracy per metric (.html; .png with kaleido)")
    _training_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_validate)
