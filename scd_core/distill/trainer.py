"""Short distillation runs: a small timm student trained from scratch on the target set.

A run is five steps, each in its own module of :mod:`scd_core.distill`:

1. data (:mod:`.data`): the labeled ``train`` images and, for teacher methods, the ``unlabeled`` pool,
   decoded once at the student's resolution;
2. teacher signal (:mod:`.signal`): the teacher's cost / plan context on the labeled train images,
   its cached outputs on the pool, and the teacher weight (fixed or adaptive);
3. optimizer (:mod:`.optim`): a table of optimizers and a warm-up + cosine schedule;
4. loop (:mod:`.loop`): one student step per batch with one of the losses of :mod:`.losses`,
   cancellation checked before every step, validation after every epoch;
5. export (:mod:`.export`): the student in the teacher-folder layout (it loads with plain timm and can
   join a teacher repository) and ``run.json`` with config, history and metrics, written atomically.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from scd_core.data.targets import TargetSet
from scd_core.device import describe_device, resolve_device
from scd_core.distill.config import DEFAULT_STUDENT, DistillConfig, DistillResult
from scd_core.distill.data import labels_of, load_data, preload_images, without_unlabeled
from scd_core.distill.export import export_run, new_run_id
from scd_core.distill.loop import accuracy, train
from scd_core.distill.losses import loss_from_config
from scd_core.distill.signal import teacher_context, teacher_signal
from scd_core.errors import ScdError
from scd_core.progress import ProgressFn, emit
from scd_core.runtime.workspace import subdir
from scd_core.teachers.repository import TeacherSpec

__all__ = ["DEFAULT_STUDENT", "DistillConfig", "DistillResult", "distill", "teacher_context"]


def distill(
    target: TargetSet,
    teacher: TeacherSpec | None,
    config: DistillConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    run_dir: str | Path | None = None,
) -> DistillResult:
    """Train a student on ``target`` with ``config.method``, optionally from ``teacher``; export it."""
    import timm

    cfg = config or DistillConfig()
    loss_fn = loss_from_config(cfg)
    if loss_fn.needs_teacher and teacher is None:
        raise ScdError(f"method {cfg.method!r} needs a teacher")
    cfg.validate()
    dev = resolve_device(cfg.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    emit(progress, "decoding images", None, "preparing")
    data = load_data(target, use_unlabeled=loss_fn.needs_teacher and cfg.use_unlabeled,
                     budget_unlabeled=cfg.use_unlabeled, image_size=cfg.image_size)
    t_data = time.perf_counter() - t0

    signal = teacher_signal(teacher, target, data, loss_fn, cfg, dev, progress) if loss_fn.needs_teacher else None
    teacher_weight = signal.weight if signal is not None else {}
    if signal is not None and cfg.weighting == "adaptive" and loss_fn.weight == 0.0:
        # the teacher earned no weight: train exactly as ce (labeled images only, full labeled batches)
        loss_fn, signal, data = loss_from_config(replace(cfg, method="ce")), None, without_unlabeled(data)
        teacher_weight = {**teacher_weight, "trained_as": "ce"}
    t_teacher = time.perf_counter() - t0 - t_data

    # the student's initialisation depends on the seed alone, not on what loading a teacher drew
    torch.manual_seed(cfg.seed)
    student = timm.create_model(cfg.student, pretrained=False, num_classes=target.num_classes).to(dev)
    student.train()
    loop = train(student, data, signal, loss_fn, cfg, dev, gen, progress=progress, cancel=cancel)

    test = target.split("test")
    test_acc = accuracy(student, preload_images(test, data.size), labels_of(test), dev) if test else None
    teacher_name = teacher.name if teacher else None
    run_id = new_run_id(cfg.method, teacher_name, cfg.seed)
    result = DistillResult(
        run_id=run_id, run_dir=str(Path(run_dir) if run_dir else subdir("runs") / run_id), status=loop.status,
        config={**asdict(cfg), "image_size": data.size}, teacher=teacher_name, history=loop.history,
        val_acc=loop.history[-1]["val_acc"] if loop.history else float("nan"), test_acc=test_acc,
        teacher_weight=teacher_weight,
        timing={"total_s": time.perf_counter() - t0, "data_s": t_data, "teacher_s": t_teacher,
                "train_s": loop.train_s, "loss_s": loop.loss_s, "steps": loop.steps, "device": describe_device(dev)},
    )
    export_run(student, target, result, data.size)
    emit(progress, loop.status, 1.0, "done", status=loop.status, val_acc=result.val_acc, test_acc=test_acc)
    return result
