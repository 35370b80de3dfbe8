"""The training loop: seeded batches, one student step each, cancellation checked before every step.

Each step draws ``b_lab`` labeled and ``b_unl`` unlabeled images from endless seeded permutations,
augments them on the device, runs the student and the loss, and steps the optimizer and schedule.
One epoch is one pass over the labeled + unlabeled pool (``TrainData.budget_pool``), the same number
of steps for every method. After each epoch the student is evaluated on ``val``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import torch

from scd_core.device import autocast
from scd_core.distill.config import DistillConfig
from scd_core.distill.data import IndexStream, TrainData, augment, normalise
from scd_core.distill.losses import Batch, DistillLoss
from scd_core.distill.optim import make_optimizer, warmup_cosine
from scd_core.distill.signal import TeacherSignal
from scd_core.errors import ScdError
from scd_core.progress import ProgressFn, emit


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


@dataclass
class LoopResult:
    status: str  # finished or cancelled
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_s: float = 0.0
    loss_s: float = 0.0


def train(student: torch.nn.Module, data: TrainData, signal: TeacherSignal | None, loss_fn: DistillLoss,
          cfg: DistillConfig, device: torch.device, generator: torch.Generator, *,
          progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> LoopResult:
    """Train ``student`` for ``cfg.epochs`` epochs; stop before the next step once ``cancel`` is set."""
    opt = make_optimizer(student, cfg)
    steps_per_epoch = max(1, math.ceil(data.budget_pool / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    sched = warmup_cosine(opt, total_steps)

    n_lab, n_unl = len(data.labeled), len(data.unlabeled)
    b_lab = cfg.batch_size if n_unl == 0 else max(2, cfg.batch_size // 2)
    b_unl = cfg.batch_size - b_lab if n_unl else 0
    lab_stream = IndexStream(n_lab, generator, offset=0)
    unl_stream = IndexStream(n_unl, generator, offset=n_lab) if n_unl else None

    out = LoopResult(status="finished")
    t_train = time.perf_counter()
    report_every = max(1, steps_per_epoch // 4)
    for epoch in range(1, cfg.epochs + 1):
        sums: dict[str, float] = {}
        for _ in range(steps_per_epoch):
            if cancel is not None and cancel.is_set():
                out.status = "cancelled"
                break
            idx = lab_stream.take(b_lab)
            if unl_stream is not None:
                idx = torch.cat([idx, unl_stream.take(b_unl)])
            x = augment(normalise(data.images[idx].to(device, non_blocking=True)), generator, cfg.flip)
            with autocast(device):
                s_logits, s_feats = student_forward(student, x)
            dev_idx = idx.to(device)
            batch = Batch(
                student_logits=s_logits.float(), labels=data.labels[idx].to(device),
                teacher_logits=signal.logits[dev_idx] if signal is not None else None,
                student_features=s_feats.float() if loss_fn.needs_features else None,
                teacher_features=signal.features[dev_idx] if signal is not None and signal.features is not None
                else None,
                teacher_weight=signal.row_weight[dev_idx] if signal is not None and signal.row_weight is not None
                else None,
            )
            t_loss = time.perf_counter()
            loss, parts = loss_fn(batch)
            out.loss_s += time.perf_counter() - t_loss
            if not torch.isfinite(loss):
                raise ScdError(f"training diverged at step {out.steps} (loss {float(loss)}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            out.steps += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            if out.steps % report_every == 0:
                emit(progress, f"epoch {epoch}/{cfg.epochs}: loss {float(loss.detach()):.4f}",
                     out.steps / total_steps, "training", epoch=epoch, epochs=cfg.epochs, step=out.steps,
                     steps=total_steps, loss=float(loss.detach()), parts=parts)
        n_steps = max(1, out.steps - (epoch - 1) * steps_per_epoch)
        val_acc = accuracy(student, data.val_images, data.val_labels, device)
        record = {"epoch": epoch, "train_loss": sums.get("loss", float("nan")) / n_steps, "val_acc": val_acc,
                  **{f"train_{k}": v / n_steps for k, v in sums.items() if k != "loss"}}
        out.history.append(record)
        emit(progress, f"epoch {epoch}/{cfg.epochs}: loss {record['train_loss']:.4f}, val acc {val_acc:.1%}",
             out.steps / total_steps, "epoch", **record, epochs=cfg.epochs, step=out.steps, steps=total_steps)
        if out.status == "cancelled":
            break
    out.train_s = time.perf_counter() - t_train
    return out
