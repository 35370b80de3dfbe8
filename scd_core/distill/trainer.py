"""Short distillation runs: a small timm student trained from scratch on the target set.

The teacher's signal reaches the student through one of the losses of :mod:`scd_core.distill.losses`, on the
labeled ``train`` images and, when the target set has one, on the ``unlabeled`` pool. Images are
decoded once into a uint8 tensor at the student's resolution; augmentation (random translation and
scale, optional flips) runs batched on the device with one ``grid_sample`` call. Teacher outputs are
computed once per image on its eval view and cached (:func:`scd_core.outputs.forward.teacher_predictions`),
so a step costs one student forward/backward plus the loss.

Every run records its config, history and final metrics in ``<workspace>/runs/<run_id>/run.json`` and
exports the student in the teacher-folder layout, so it loads with plain timm and can join a
teacher repository.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scd_core.data.images import load_rgb
from scd_core.data.targets import TargetItem, TargetSet
from scd_core.device import autocast, describe_device, resolve_device
from scd_core.distill.losses import Batch, TeacherContext, make_loss
from scd_core.errors import ScdError
from scd_core.runtime.workspace import subdir
from scd_core.teachers.repository import TeacherSpec, save_teacher
from scd_core.utils import slug

DEFAULT_STUDENT = "resnet10t"
STUDENT_MEAN = (0.5, 0.5, 0.5)
STUDENT_STD = (0.5, 0.5, 0.5)

Callback = Callable[[dict], None]


@dataclass
class DistillConfig:
    """Everything that determines a run (recorded in run.json)."""

    method: str = "scd"
    student: str = DEFAULT_STUDENT
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd or adamw
    lr: float | None = None  # default: 0.05 for sgd, 2e-3 for adamw
    weight_decay: float | None = None  # default: 5e-4 for sgd, 0.05 for adamw
    weight: float = 1.0  # lambda of the teacher term
    temperature: float = 4.0
    eps: float = 0.05  # entropic regularisation of the scd loss, relative to a [0, 1] cost
    cost: str = "prototype"  # teacher-to-target cost of the scd loss: a name in scd_core.ot.costs.COSTS
    image_size: int | None = None  # default: from the data, 32..224
    flip: bool = False
    use_unlabeled: bool = True
    seed: int = 0
    device: str = "auto"


@dataclass
class DistillResult:
    run_id: str
    run_dir: str
    status: str  # finished or cancelled
    config: dict
    teacher: str | None
    history: list[dict] = field(default_factory=list)
    val_acc: float = float("nan")
    test_acc: float | None = None
    student_dir: str = ""
    timing: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def infer_image_size(items: list[TargetItem], sample: int = 64) -> int:
    """Median of the longer side of a sample of images, rounded to 8 and clipped to [32, 224]."""
    sides = []
    for it in items[:sample]:
        with Image.open(it.path) as img:
            sides.append(max(img.size))
    side = int(np.median(sides)) if sides else 64
    return int(min(224, max(32, 8 * round(side / 8))))


def preload_images(items: list[TargetItem], size: int) -> torch.Tensor:
    """Decode every image once to a (N, 3, size, size) uint8 tensor (RGB, bilinear resize)."""
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
    for i, it in enumerate(items):
        img = load_rgb(it.path).resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(STUDENT_MEAN, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(STUDENT_STD, device=images_u8.device).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translation (up to 1/8 of the side), scale (0.9-1.1) and optional flip, in one call."""
    b = images.shape[0]
    rand = torch.rand((b, 4), generator=generator).to(images.device)
    scale = 0.9 + 0.2 * rand[:, 0]
    sign = torch.where(rand[:, 3] < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=images.device)
    theta = torch.zeros((b, 2, 3), device=images.device)
    theta[:, 0, 0] = scale * sign
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = (rand[:, 1] - 0.5) * 0.25
    theta[:, 1, 2] = (rand[:, 2] - 0.5) * 0.25
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def student_forward(student: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pre-logit features of a timm student."""
    pre = student.forward_head(student.forward_features(x), pre_logits=True)
    return student.get_classifier()(pre), pre


@torch.no_grad()
def accuracy(student: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``student`` on preloaded images."""
    if labels.numel() == 0:
        return float("nan")
    was_training = student.training
    student.eval()
    correct = 0
    for s in range(0, labels.shape[0], batch_size):
        x = normalise(images_u8[s:s + batch_size].to(device))
        with autocast(device):
            logits = student(x)
        correct += int((logits.argmax(1).cpu() == labels[s:s + batch_size]).sum())
    student.train(was_training)
    return correct / labels.shape[0]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def teacher_context(spec: TeacherSpec, target: TargetSet, device: str, cost: str = "prototype",
                    with_plan: bool = False) -> TeacherContext:
    """Cost (and, when asked, the exact dataset plan) of the teacher from its outputs on the labeled
    train images (never val/test). The plan is an exact OT solve over K_t x K_s: only ``translate``
    needs it, so it is not paid for by the other methods."""
    from scd_core.ot.costs import cost_matrix
    from scd_core.ot.transport import exact_plan
    from scd_core.outputs.forward import teacher_outputs

    train = [it for it in target.split("train") if it.label >= 0]
    outputs = teacher_outputs(spec, target, train, device=device)
    c = cost_matrix(outputs, cost)
    plan = exact_plan(outputs.joint.sum(axis=1), outputs.joint.sum(axis=0), c) if with_plan else None
    return TeacherContext(teacher_labels=list(spec.label_names), target_labels=list(target.class_names),
                          cost=c, plan=plan)


def distill(
    target: TargetSet,
    teacher: TeacherSpec | None,
    config: DistillConfig | None = None,
    *,
    progress: Callback | None = None,
    cancel: threading.Event | None = None,
    run_dir: str | Path | None = None,
) -> DistillResult:
    """Train a student on ``target`` with ``config.method``, optionally from ``teacher``; export it."""
    import timm

    cfg = config or DistillConfig()
    loss_fn = make_loss(cfg.method, **_loss_kwargs(cfg))
    if loss_fn.needs_teacher and teacher is None:
        raise ScdError(f"method {cfg.method!r} needs a teacher")
    if not timm.is_model(cfg.student):
        raise ScdError(f"unknown student architecture {cfg.student!r}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ScdError("epochs must be >= 1 and batch size >= 2")
    dev = resolve_device(cfg.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    labeled = [it for it in target.split("train") if it.label >= 0]
    unlabeled = target.split("unlabeled") if (loss_fn.needs_teacher and cfg.use_unlabeled) else []
    val, test = target.split("val"), target.split("test")
    size = cfg.image_size or infer_image_size(labeled)
    if progress:
        progress({"phase": "preparing", "message": "decoding images"})
    pool = labeled + unlabeled
    images = preload_images(pool, size)
    labels = torch.tensor([it.label for it in pool], dtype=torch.long)
    val_images, val_labels = preload_images(val, size), torch.tensor([it.label for it in val], dtype=torch.long)
    t_data = time.perf_counter() - t0

    teacher_logits = teacher_feats = None
    if loss_fn.needs_teacher:
        from scd_core.outputs.forward import teacher_predictions

        if progress:
            progress({"phase": "preparing", "message": f"teacher {teacher.name} on {len(pool)} images"})
        context = teacher_context(teacher, target, cfg.device, cfg.cost, with_plan=loss_fn.needs_plan)
        loss_fn.prepare(context, dev)
        t_logits, t_feats = teacher_predictions(teacher, pool, device=dev)
        teacher_logits = torch.from_numpy(t_logits.astype(np.float32)).to(dev)
        teacher_feats = torch.from_numpy(t_feats).to(dev) if loss_fn.needs_features else None
    t_teacher = time.perf_counter() - t0 - t_data

    student = timm.create_model(cfg.student, pretrained=False, num_classes=target.num_classes).to(dev)
    student.train()
    lr = cfg.lr if cfg.lr is not None else (0.05 if cfg.optimizer == "sgd" else 2e-3)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if cfg.optimizer == "sgd" else 0.05)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=wd)
    else:
        raise ScdError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")
    # One epoch is one pass over the target's labeled + unlabeled pool for every method, so that a
    # teacher-free baseline gets as many optimizer steps as a run that also uses the unlabeled images.
    budget_pool = len(labeled) + (len(target.split("unlabeled")) if cfg.use_unlabeled else 0)
    steps_per_epoch = max(1, math.ceil(budget_pool / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )

    n_lab, n_unl = len(labeled), len(unlabeled)
    b_lab = cfg.batch_size if n_unl == 0 else max(2, cfg.batch_size // 2)
    b_unl = cfg.batch_size - b_lab if n_unl else 0
    lab_stream = _IndexStream(n_lab, gen, offset=0)
    unl_stream = _IndexStream(n_unl, gen, offset=n_lab) if n_unl else None

    history: list[dict] = []
    status = "finished"
    step = 0
    t_train = time.perf_counter()
    ot_time = 0.0
    for epoch in range(1, cfg.epochs + 1):
        sums: dict[str, float] = {}
        for _ in range(steps_per_epoch):
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            idx = lab_stream.take(b_lab)
            if unl_stream is not None:
                idx = torch.cat([idx, unl_stream.take(b_unl)])
            x = augment(normalise(images[idx].to(dev, non_blocking=True)), gen, cfg.flip)
            with autocast(dev):
                s_logits, s_feats = student_forward(student, x)
            batch = Batch(
                student_logits=s_logits.float(), labels=labels[idx].to(dev),
                teacher_logits=teacher_logits[idx.to(dev)] if teacher_logits is not None else None,
                student_features=s_feats.float() if loss_fn.needs_features else None,
                teacher_features=teacher_feats[idx.to(dev)] if teacher_feats is not None else None,
            )
            t_loss = time.perf_counter()
            loss, parts = loss_fn(batch)
            ot_time += time.perf_counter() - t_loss
            if not torch.isfinite(loss):
                raise ScdError(f"training diverged at step {step} (loss {float(loss)}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress and step % max(1, steps_per_epoch // 4) == 0:
                progress({"phase": "training", "epoch": epoch, "epochs": cfg.epochs, "step": step,
                          "steps": total_steps, "loss": float(loss.detach()), "parts": parts})
        n_steps = max(1, step - (epoch - 1) * steps_per_epoch)
        val_acc = accuracy(student, val_images, val_labels, dev)
        record = {"epoch": epoch, "train_loss": sums.get("loss", float("nan")) / n_steps, "val_acc": val_acc,
                  **{f"train_{k}": v / n_steps for k, v in sums.items() if k != "loss"}}
        history.append(record)
        if progress:
            progress({"phase": "epoch", **record, "epochs": cfg.epochs, "step": step, "steps": total_steps})
        if status == "cancelled":
            break
    train_s = time.perf_counter() - t_train

    test_acc = None
    if test:
        test_acc = accuracy(student, preload_images(test, size), torch.tensor([it.label for it in test]), dev)
    names = (slug(cfg.method, 40, "run"), slug(teacher.name if teacher else "none", 40, "run"))
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{names[0]}-{names[1]}" \
             f"-s{cfg.seed}-{int(time.time() * 1e6) % 1_000_000:06d}"
    out = Path(run_dir) if run_dir else subdir("runs") / run_id
    student_dir = save_teacher(
        student.eval(), target.class_names, out / "student",
        description=f"student ({cfg.student}) distilled with {cfg.method}"
                    + (f" from {teacher.name}" if teacher else "") + f" on {target.name}",
        data_config={"input_size": (3, size, size), "mean": STUDENT_MEAN, "std": STUDENT_STD, "crop_pct": 1.0,
                     "interpolation": "bilinear"},
    )
    result = DistillResult(
        run_id=run_id, run_dir=str(out), status=status, config={**asdict(cfg), "image_size": size},
        teacher=teacher.name if teacher else None, history=history,
        val_acc=history[-1]["val_acc"] if history else float("nan"), test_acc=test_acc,
        student_dir=str(student_dir),
        timing={"total_s": time.perf_counter() - t0, "data_s": t_data, "teacher_s": t_teacher, "train_s": train_s,
                "loss_s": ot_time, "steps": step, "device": describe_device(dev)},
    )
    tmp = out / ".run.json.tmp"
    tmp.write_text(json.dumps(result.to_json(), indent=2, default=str))
    tmp.replace(out / "run.json")
    if progress:
        progress({"phase": "done", "status": status, "val_acc": result.val_acc, "test_acc": test_acc})
    return result


def _loss_kwargs(cfg: DistillConfig) -> dict:
    kwargs: dict = {"weight": cfg.weight, "temperature": cfg.temperature}
    if cfg.method == "scd":
        kwargs["eps"] = cfg.eps
    if cfg.method == "ce":
        kwargs = {}
    return kwargs


class _IndexStream:
    """Endless seeded permutations of range(n), shifted by ``offset``: every image once per cycle."""

    def __init__(self, n: int, generator: torch.Generator, offset: int = 0) -> None:
        self.n, self.gen, self.offset = n, generator, offset
        self.buffer = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while self.buffer.numel() < k:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.gen)])
        out, self.buffer = self.buffer[:k], self.buffer[k:]
        return out + self.offset
