"""One batched forward pass of a teacher over a target set, summarised into TeacherOutputs.

The pass streams: logits go batch by batch to an on-disk float16 array in the cache entry being
built, the joints and class feature sums accumulate on the device, and only the pre-logit features
(N x d) and top-5 classes are kept per image. Results are cached (see :mod:`scd_core.outputs.cache`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from scd_core.data.targets import TargetImageDataset, TargetItem, TargetSet
from scd_core.device import autocast, resolve_device
from scd_core.errors import TeacherError
from scd_core.fingerprint import json_sha256
from scd_core.outputs import cache
from scd_core.outputs.decoded import DecodedStore, decoded_store, normalize, split_transform
from scd_core.outputs.streaming import StatsAccumulator, TeacherOutputs
from scd_core.teachers.repository import TeacherSpec, linear_head, load_teacher

Progress = Callable[[float, str], None]


def data_config(spec: TeacherSpec) -> dict:
    """The teacher's eval preprocessing (input size, crop, mean, std) from its pretrained config."""
    from timm.data import resolve_data_config

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.pretrained_cfg.items()}
    return resolve_data_config({}, pretrained_cfg=cfg)


def eval_transform(spec: TeacherSpec):
    """timm's eval transform for the teacher, and its fingerprint (part of the cache key)."""
    from timm.data import create_transform

    cfg = data_config(spec)
    return create_transform(**cfg, is_training=False), json_sha256(cfg)


def default_num_workers(n_images: int) -> int:
    """Decoding images dominates small models: use worker processes once the set is not tiny."""
    if n_images < 512:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device``; channels_last on CUDA (convolutions run NHWC kernels; others ignore it)."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def forward_batches(model: torch.nn.Module, loader, device: torch.device,
                    normalization: tuple[Sequence[float], Sequence[float]] | None = None):
    """Yield ``(pre_logits, logits, labels)`` per batch: no gradients, bf16 autocast on CUDA.

    ``loader`` yields ``(images, labels, ...)``; uint8 images (from a decoded store) are normalised
    on the device with ``normalization = (mean, std)``. On CUDA the batch goes channels_last.
    Uses the linear classifier on the pre-logits when there is one (one head pass instead of two).
    """
    head = linear_head(model)
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for images, labels, *_ in loader:
            images = images.to(device, non_blocking=True)
            if images.dtype == torch.uint8:
                if normalization is None:
                    raise ValueError("uint8 images need a (mean, std) normalization")
                images = normalize(images, *normalization)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                fmap = model.forward_features(images)
                pre = model.forward_head(fmap, pre_logits=True)
                logits = head(pre) if head is not None else model.forward_head(fmap)
            yield pre.float().flatten(1), logits.float(), labels


def make_loader(items: Sequence[TargetItem], transform, device: torch.device, batch_size: int,
                num_workers: int | None = None) -> DataLoader:
    """Per-teacher decoding: the teacher's whole transform on every image, in DataLoader workers."""
    return DataLoader(
        TargetImageDataset(items, transform), batch_size=batch_size, shuffle=False,
        num_workers=default_num_workers(len(items)) if num_workers is None else num_workers,
        pin_memory=device.type == "cuda",
    )


class _StoreLoader:
    """Batches ``(uint8 pixels, labels)`` of a decoded store, pinned for CUDA transfers."""

    def __init__(self, store: DecodedStore, labels: torch.Tensor, batch_size: int, pin_memory: bool) -> None:
        self.store, self.labels, self.batch_size, self.pin_memory = store, labels, batch_size, pin_memory

    def __iter__(self):
        for pixels, rows in self.store.batches(self.batch_size, self.pin_memory):
            yield pixels, self.labels[rows]


def image_batches(items: Sequence[TargetItem], transform, device: torch.device, batch_size: int, *,
                  items_fingerprint: str | None = None, num_workers: int | None = None,
                  shared_decode: bool = True, progress: Progress | None = None):
    """The batches a teacher's pass reads, and the normalization left to do on the device.

    With ``shared_decode`` and a standard (geometry + ToTensor + Normalize) transform, the images come
    from the decoded store shared by every teacher with the same geometry (built on first use);
    otherwise each image is decoded through the teacher's own transform.
    """
    geometry = split_transform(transform) if shared_decode else None
    if geometry is None:
        return make_loader(items, transform, device, batch_size, num_workers), None
    from scd_core.fingerprint import combine

    fp = items_fingerprint or combine(*(it.sha256 for it in items))
    workers = default_num_workers(len(items)) if num_workers is None else num_workers
    store = decoded_store(items, fp, geometry, num_workers=workers, progress=progress)
    labels = torch.tensor([it.label for it in items], dtype=torch.int64)
    return _StoreLoader(store, labels, batch_size, device.type == "cuda"), (geometry.mean, geometry.std)


def teacher_predictions(spec: TeacherSpec, items: Sequence[TargetItem], *, device: str | torch.device = "auto",
                        batch_size: int = 64, model: torch.nn.Module | None = None,
                        progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits (N, K_t) float16 and pre-logit features (N, d) float32 on any images.

    Cached on disk by teacher, image bytes and transform, like :func:`teacher_outputs`.
    """
    transform, transform_fp = eval_transform(spec)
    from scd_core.fingerprint import combine

    key = "pred-" + combine(cache.CACHE_VERSION, spec.fingerprint, transform_fp, *(it.sha256 for it in items))[:36]
    path = cache.entry_dir(key)
    if (hit := cache.load_arrays(path)) is not None:
        return hit["logits"], hit["features"]
    dev = resolve_device(device)
    model = prepare_model(model or load_teacher(spec, dev), dev)
    loader, norm = image_batches(items, transform, dev, batch_size)
    logits_all, feats_all, done = [], [], 0
    for pre, logits, _ in forward_batches(model, loader, dev, norm):
        logits_all.append(logits.half().cpu().numpy())
        feats_all.append(pre.cpu().numpy())
        done += pre.shape[0]
        if progress:
            progress(done / max(len(items), 1), f"teacher {spec.name}: {done}/{len(items)} images")
    logits_np = np.concatenate(logits_all) if logits_all else np.zeros((0, spec.num_classes), np.float16)
    feats_np = np.concatenate(feats_all) if feats_all else np.zeros((0, 0), np.float32)
    cache.save_arrays(path, logits=logits_np, features=feats_np)
    return logits_np, feats_np


def outputs_cached(spec: TeacherSpec, items_fingerprint: str, temperature: float = 1.0) -> bool:
    """Whether :func:`teacher_outputs` would find this pass over the items with ``items_fingerprint``
    (:meth:`TargetSet.items_fingerprint`) in the cache (an entry exists; not verified)."""
    key = cache.output_key(spec.fingerprint, items_fingerprint, eval_transform(spec)[1], temperature)
    return (cache.entry_dir(key) / "meta.json").is_file()


def teacher_outputs(
    spec: TeacherSpec,
    target: TargetSet,
    items: Sequence[TargetItem] | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    temperature: float = 1.0,
    num_workers: int | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
    model: torch.nn.Module | None = None,
    shared_decode: bool = True,
) -> TeacherOutputs:
    """Outputs of teacher ``spec`` on ``items`` (default: the target's assessment items), cached.

    With ``shared_decode`` the images come from the decoded store that every teacher with the same
    eval geometry shares (see :mod:`scd_core.outputs.decoded`); the outputs are the same either way.
    """
    items = list(target.assessment_items if items is None else items)
    if any(it.label < 0 for it in items):
        raise ValueError("teacher outputs are computed on labeled images only")
    transform, transform_fp = eval_transform(spec)
    items_fp = target.items_fingerprint(items)
    key = cache.output_key(spec.fingerprint, items_fp, transform_fp, temperature)
    if use_cache and (hit := cache.load_entry(key)) is not None:
        if progress:
            progress(1.0, f"{spec.name}: cached")
        return hit

    dev = resolve_device(device)
    t0 = time.perf_counter()
    if model is None:
        model = load_teacher(spec, dev)
    model = prepare_model(model, dev)
    t_load = time.perf_counter() - t0
    head = linear_head(model)
    t0 = time.perf_counter()
    loader, norm = image_batches(items, transform, dev, batch_size, items_fingerprint=items_fp,
                                 num_workers=num_workers, shared_decode=shared_decode)
    t_decode = time.perf_counter() - t0
    tmp = cache.new_entry_dir()
    try:
        # plain appends, not a writable memmap: written pages never count against the process
        logits_file = open(tmp / "logits.npy", "wb")  # noqa: SIM115 - closed below, also on error
        np.lib.format.write_array_header_1_0(
            logits_file, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                          "shape": (len(items), spec.num_classes)})
        acc: StatsAccumulator | None = None
        features = None
        done = 0
        t1 = time.perf_counter()
        for pre, logits, labels in forward_batches(model, loader, dev, norm):
            if logits.shape[1] != spec.num_classes:
                raise TeacherError(f"teacher {spec.name!r} outputs {logits.shape[1]} classes, "
                                   f"its config says {spec.num_classes}")
            if acc is None:
                acc = StatsAccumulator(spec.num_classes, target.num_classes, pre.shape[1], temperature, device=dev)
                features = np.empty((len(items), pre.shape[1]), dtype=np.float32)
            b = labels.shape[0]
            acc.update(logits, pre, labels.to(dev))
            logits_file.write(logits.half().cpu().numpy().tobytes())  # torch's f16 cast: ~20x numpy's
            features[done:done + b] = pre.cpu().numpy()
            done += b
            if progress:
                progress(done / len(items), f"{spec.name}: {done}/{len(items)} images")
        logits_file.close()
        if done != len(items):
            raise TeacherError(f"teacher {spec.name!r}: forward pass saw {done} of {len(items)} images")
        assert acc is not None and features is not None
        t_forward = time.perf_counter() - t1
        outputs = TeacherOutputs(
            teacher=spec.name,
            teacher_labels=list(spec.label_names),
            target_labels=list(target.class_names),
            labels=np.array([it.label for it in items], dtype=np.int64),
            features=features,
            logits=np.load(tmp / "logits.npy", mmap_mode="r"),
            head_weight=head.weight.detach().float().cpu().numpy() if head is not None else None,
            temperature=temperature,
            image_ids=[it.rel for it in items],
            timing={"load_s": t_load, "decode_s": t_decode, "forward_s": t_forward, "images": len(items)},
            **acc.finish(),
        )
        if not use_cache:
            outputs.logits = np.array(outputs.logits)
            return outputs
        return cache.save_entry(key, tmp, outputs)
    finally:
        if "logits_file" in locals() and not logits_file.closed:
            logits_file.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_shared_decode(target: TargetSet, specs: Sequence[TeacherSpec], items: Sequence[TargetItem] | None = None,
                          *, num_workers: int | None = None, progress: Progress | None = None) -> int:
    """Build (or find) the decoded store of every distinct eval geometry among ``specs``; returns their count.

    Called before fanning teachers out to workers that share this cache, so that the images are
    decoded once here rather than by several tasks at the same time.
    """
    items = list(target.assessment_items if items is None else items)
    items_fp = target.items_fingerprint(items)
    seen: dict[str, object] = {}
    for spec in specs:
        geometry = split_transform(eval_transform(spec)[0])
        if geometry is not None and geometry.fingerprint not in seen:
            seen[geometry.fingerprint] = geometry
    workers = default_num_workers(len(items)) if num_workers is None else num_workers
    for geometry in seen.values():
        decoded_store(items, items_fp, geometry, num_workers=workers, progress=progress)
    return len(seen)
