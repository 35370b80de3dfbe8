"""The machinery every demo world family shares: types, teacher training, writing and building a world.

A *family* (:class:`Family`) knows how to draw its images, names its target classes and defines its
teacher zoo; everything else (training each teacher briefly, measuring its held-out accuracy, writing
the target ImageFolder and the teacher repository, building atomically into place, opening a built
world) is the same for all families and lives here.

A built world is a folder::

    <root>/world.json                      manifest: target counts, teachers, their held-out accuracy
    <root>/target/{train,val,test}/<class>/*.png
    <root>/target/unlabeled/*.png
    <root>/teachers/<teacher>/{config.json,model.safetensors}

A build is deterministic for a seed: the same PNG bytes and teacher weights (torch is pinned to
:data:`BUILD_THREADS` threads during the build).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scd_core.errors import ScdError
from scd_core.utils import replacing_folder, slug

VERSION = 1
MANIFEST_NAME = "world.json"

ProgressFn = Callable[[float, str], None]

# peak learning rates (AdamW, one-cycle) that train each tiny timm architecture fast at 32 px
_LR = {"test_resnet": 5e-3, "test_efficientnet": 1e-2, "test_efficientnet_gn": 5e-3, "test_convnext": 5e-3,
       "test_vit": 2e-3}
# torch threads during a build: these tiny models gain little from a second thread (about 1.3x)
# but lose a lot when the cores are shared (threads spin at every barrier), and a fixed count keeps
# the teachers' weights identical from one machine to the next
BUILD_THREADS = 1

_MEAN = (0.485, 0.456, 0.406)  # timm's ImageNet defaults: the teachers' normalisation
_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Public types
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoWorld:
    """A built demo world: where its target set and teacher repository live, and what to expect."""

    name: str
    size: str
    root: Path
    target_dir: Path
    teachers_dir: Path
    seed: int = 0
    class_names: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    #: teacher name -> why it should (or should not) help on the target
    expectations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: teacher name -> expected usefulness: "high", "medium", "low" or "none"
    usefulness: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: the parsed ``world.json``
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def target_spec(self) -> str:
        """How to name this world's target set on the command line."""
        return f"demo:{self.name}"



@dataclass(frozen=True)
class SizeConfig:
    """How big a world is: image side, images per split and per teacher, training epochs."""

    image: int
    train_per_class: int
    val_per_class: int
    test_per_class: int
    unlabeled: int
    teacher_train: int  # training images per teacher (drawn, or augmented copies of real digits)
    teacher_heldout: int  # shapes: held-out images per teacher (digits: a fifth of the teacher pool)
    epochs: int
    batch: int = 32



@dataclass(frozen=True)
class Teacher:
    """One teacher of a world: its label space (as attribute constraints) and what it should do."""

    name: str
    arch: str
    labels: tuple[str, ...]
    classes: tuple[Any, ...]  # world-specific class definitions, one per label
    description: str
    usefulness: str  # "high" | "medium" | "low" | "none"
    why: str
    label_noise: float = 0.0
    trained: bool = True



class Sampler(Protocol):
    """The images of one built world, drawn per purpose from independent seed streams."""

    def target(self) -> tuple[dict[str, list[tuple[int, np.ndarray]]], np.ndarray, np.ndarray]:
        """Per split, (class index, uint8 images); the unlabeled images and their hidden labels."""

    def teacher_data(self, t: Teacher, k: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """Images and clean labels of teacher ``t`` (the ``k``-th): its training or held-out stream."""


class Family(Protocol):
    """A world family: its images, target classes and teacher zoo (one module per family)."""

    name: str
    intro: str  # markdown: what the target is and how the images are made

    def target_classes(self) -> list[str]: ...

    def teachers(self) -> list[Teacher]: ...

    def config(self, size: str) -> SizeConfig: ...

    def sampler(self, cfg: SizeConfig, seed: int) -> Sampler: ...


class FamilyBase:
    """What every family shares: its teacher zoo (``_teachers``) and its sizes (``configs``)."""

    _teachers: list[Teacher]
    configs: dict[str, SizeConfig]

    def teachers(self) -> list[Teacher]:
        return list(self._teachers)

    def config(self, size: str) -> SizeConfig:
        return self.configs[size]


def affine_thetas(scale: np.ndarray, rot: np.ndarray, shear: np.ndarray, shift: np.ndarray) -> np.ndarray:
    r"""(n, 2, 3) matrices for ``torch.nn.functional.affine_grid``: per image
    :math:`\begin{pmatrix} s\cos r & -s\sin r + h & t_x \\ s\sin r & s\cos r & t_y \end{pmatrix}`
    (scale s > 1 zooms out, rotation r, shear h, shift t)."""
    theta = np.zeros((scale.shape[0], 2, 3))
    theta[:, 0, 0] = scale * np.cos(rot)
    theta[:, 0, 1] = -scale * np.sin(rot) + shear
    theta[:, 1, 0] = scale * np.sin(rot)
    theta[:, 1, 1] = scale * np.cos(rot)
    theta[:, :, 2] = shift
    return theta


def make_teacher(name: str, arch: str, classes: list[tuple[str, Any]], description: str, usefulness: str,
                 why: str, **kw: Any) -> Teacher:
    """A teacher from (label, class definition) pairs."""
    return Teacher(name, arch, tuple(n for n, _ in classes), tuple(c for _, c in classes),
                    description, usefulness, why, **kw)


# ----------------------------------------------------------------------------------------------
# Training a teacher
# ----------------------------------------------------------------------------------------------

def to_tensor(images: np.ndarray):
    """uint8 (n, S, S, 3) -> normalised float tensor (n, 3, S, S): what the teacher's eval transform gives."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def create_model(arch: str, num_classes: int, image: int):
    import timm

    kwargs: dict[str, Any] = {}
    if arch.startswith("test_vit"):  # 4x4 tokens at 32 px (recorded in the config's model_args)
        kwargs = {"img_size": image, "patch_size": max(2, image // 4)}
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def accuracy(model, x, y) -> float:
    import torch

    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(y), 512):
            correct += int((model(x[lo:lo + 512]).argmax(1) == y[lo:lo + 512]).sum())
    return correct / len(y)


def train(model, x, y, cfg: SizeConfig, lr: float, seed: int, tick: Callable[[float], None]) -> None:
    """AdamW with a one-cycle schedule on full batches of a seeded permutation."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    batch = min(cfg.batch, n)
    per_epoch = max(1, n // batch)
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.2)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 8 == 0 or step == total:
                tick(step / total)
    model.eval()



# ----------------------------------------------------------------------------------------------
# Building a world
# ----------------------------------------------------------------------------------------------


def seed_rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent numpy stream per purpose (target, each teacher's training and held-out data)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))



def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array, mode="RGB").save(path, format="PNG", compress_level=6)


def write_target(root: Path, class_names: list[str],
                  splits: dict[str, list[tuple[int, np.ndarray]]], unlabeled: np.ndarray,
                  unlabeled_labels: np.ndarray) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for split, items in splits.items():
        counts[split] = {}
        for c, images in items:
            folder = root / split / class_names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                save_png(img, folder / f"{slug(class_names[c])}-{i:03d}.png")
            counts[split][class_names[c]] = len(images)
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for i, img in enumerate(unlabeled):
        file = f"u{i:04d}.png"
        save_png(img, root / "unlabeled" / file)
        truth[file] = class_names[int(unlabeled_labels[i])]
    return {"classes": class_names, "counts": counts, "unlabeled": len(unlabeled), "unlabeled_labels": truth}


@contextlib.contextmanager
def torch_state(threads: int) -> Iterator[None]:
    """Fork torch's global RNG (so callers' seeds are untouched) and pin the thread count."""
    import torch

    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(max(1, threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)


def data_config(image: int) -> dict[str, Any]:
    return {"input_size": (3, image, image), "mean": _MEAN, "std": _STD, "crop_pct": 1.0,
            "interpolation": "bilinear", "crop_mode": "center"}


def build_into(family: Family, size: str, root: Path, seed: int, progress: ProgressFn) -> dict[str, Any]:
    """Draw ``family``'s target set and train its teachers into ``root``; the manifest (not yet written).

    Each teacher is trained on its own seed stream, so the teachers do not depend on each other.
    """
    import torch

    from scd_core.teachers.repository import save_teacher

    started = time.perf_counter()
    name = family.name
    cfg = family.config(size)
    teachers = family.teachers()
    classes = family.target_classes()
    weights = [0.06] + [1.0 if t.trained else 0.05 for t in teachers]
    total = sum(weights)
    done = 0.0

    def report(part: float, weight: float, message: str) -> None:
        progress(min(1.0, (done + part * weight) / total), message)

    report(0, 0, f"{name}: drawing the target set")
    data = family.sampler(cfg, seed)
    splits, unlabeled, unlabeled_labels = data.target()
    target_info = write_target(root / "target", classes, splits, unlabeled, unlabeled_labels)
    done += weights[0]

    records = []
    for k, t in enumerate(teachers):
        t0 = time.perf_counter()
        report(0, weights[k + 1], f"{name}: teacher {k + 1}/{len(teachers)} {t.name}: drawing images")
        images, labels = data.teacher_data(t, k, held_out=False)
        held_images, held_labels = data.teacher_data(t, k, held_out=True)
        y = torch.from_numpy(labels)
        if t.label_noise:
            noise_rng = seed_rng(seed, 100 + k, 2)
            flip = noise_rng.random(len(labels)) < t.label_noise
            noisy = labels.copy()
            noisy[flip] = noise_rng.integers(0, len(t.labels), int(flip.sum()))
            y = torch.from_numpy(noisy)
        torch.manual_seed(seed * 1000 + k)
        model = create_model(t.arch, len(t.labels), cfg.image)
        if t.trained:
            weight = weights[k + 1]
            train(model, to_tensor(images), y, cfg, _LR.get(t.arch, 3e-3), seed * 1000 + k,
                   lambda f, w=weight, t=t: report(f, w, f"{name}: training teacher {t.name}"))
        model.eval()
        acc = accuracy(model, to_tensor(held_images), torch.from_numpy(held_labels))
        save_teacher(model, t.labels, root / "teachers" / t.name, description=t.description,
                     data_config=data_config(cfg.image))
        done += weights[k + 1]
        records.append({
            "name": t.name, "architecture": t.arch, "num_classes": len(t.labels), "label_names": list(t.labels),
            "description": t.description, "heldout_accuracy": round(acc, 4),
            "chance_accuracy": round(float(np.bincount(held_labels).max() / max(1, len(held_labels))), 4),
            "heldout_images": len(held_labels), "train_images": len(labels) if t.trained else 0,
            "epochs": cfg.epochs if t.trained else 0, "label_noise": t.label_noise, "trained": t.trained,
            "usefulness": t.usefulness, "why": t.why,
            "seconds": round(time.perf_counter() - t0, 2),
        })
        report(0, 0, f"{name}: teacher {t.name} ready (held-out accuracy {acc:.0%})")
    return {
        "name": name, "size": size, "version": VERSION, "seed": seed, "image_size": cfg.image,
        "target_dir": "target", "teachers_dir": "teachers",
        "target": target_info, "teachers": records,
        "build_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": torch.get_num_threads(),
    }



def open_world(root: str | Path) -> DemoWorld:
    """The :class:`DemoWorld` of an already built folder (reads its ``world.json``)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScdError(f"{root} is not a built demo world ({MANIFEST_NAME}: {exc})") from exc
    teachers = manifest.get("teachers", [])
    return DemoWorld(
        name=manifest["name"], size=manifest["size"], root=root,
        target_dir=root / manifest.get("target_dir", "target"),
        teachers_dir=root / manifest.get("teachers_dir", "teachers"),
        seed=int(manifest.get("seed", 0)),
        class_names=tuple(manifest.get("target", {}).get("classes", [])),
        teachers=tuple(t["name"] for t in teachers),
        expectations={t["name"]: t.get("why", "") for t in teachers},
        usefulness={t["name"]: t.get("usefulness", "") for t in teachers},
        manifest=manifest,
    )


def is_world(root: Path) -> bool:
    return (root / MANIFEST_NAME).is_file()



def build_atomically(out_dir: Path, fill: Callable[[Path], dict[str, Any]]) -> None:
    """Run ``fill(tmp)`` in a temporary sibling of ``out_dir``, write its manifest, rename into place.

    An interrupted build leaves nothing half-written. An existing world (or empty folder) at
    ``out_dir`` is replaced; any other existing folder is refused.
    """
    if out_dir.exists() and not (out_dir.is_dir() and (is_world(out_dir) or not any(out_dir.iterdir()))):
        raise ScdError(f"{out_dir} already exists and is not a demo world; choose another output folder")
    with replacing_folder(out_dir, "building") as tmp:
        manifest = fill(tmp)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX flock; on other systems the thread lock only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
