"""Shared decoding: one uint8 pass over the target per eval geometry, equal results to per-teacher decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_teacher, write_image_folder

from scd_core.data.targets import load_target
from scd_core.outputs.decoded import normalize, split_transform
from scd_core.outputs.forward import eval_transform, teacher_outputs, teacher_predictions
from scd_core.teachers.repository import TeacherRepository, save_teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import timm

    root = tmp_path_factory.mktemp("decoded")
    target = write_image_folder(root / "target", {"a": 5, "b": 4, "c": 3}, size=23, seed=3)  # odd size: resampled
    make_teacher(root / "repo" / "r16", 4, img_size=16, seed=0)
    make_teacher(root / "repo" / "r16b", 6, img_size=16, seed=1)
    make_teacher(root / "repo" / "r20", 5, img_size=20, seed=2)
    torch.manual_seed(3)  # same geometry as r16, other mean/std: still one shared store
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    save_teacher(model, ["x", "y", "z"], root / "repo" / "r16_norm",
                 data_config={"input_size": (3, 16, 16), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5),
                              "std": (0.25, 0.25, 0.25)})
    return load_target(target), TeacherRepository.from_folder(root / "repo")


def _stores(cache_root):
    return sorted(p.name for p in (cache_root / "outputs").glob("decoded-*"))


def test_shared_decode_equals_per_teacher_decode(world, fresh_cache):
    target, repo = world
    for name in ("r16", "r20", "r16_norm"):
        spec = repo.get(name)
        shared = teacher_outputs(spec, target, device="cpu", batch_size=5, use_cache=False)
        own = teacher_outputs(spec, target, device="cpu", batch_size=5, use_cache=False, shared_decode=False)
        np.testing.assert_allclose(shared.features, own.features, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(shared.logits, np.float32), np.asarray(own.logits, np.float32),
                                   rtol=1e-3, atol=1e-3)  # float16 on disk
        np.testing.assert_allclose(shared.joint, own.joint, atol=1e-9)
        np.testing.assert_array_equal(shared.top_classes, own.top_classes)
    _logits, feats = teacher_predictions(repo.get("r16b"), target.assessment_items, device="cpu")
    ref = teacher_outputs(repo.get("r16b"), target, device="cpu", use_cache=False, shared_decode=False)
    np.testing.assert_allclose(feats, ref.features, rtol=1e-6, atol=1e-6)


def test_normalisation_matches_torchvision_bit_for_bit(world):
    target, repo = world
    transform, _ = eval_transform(repo.get("r16_norm"))
    geometry = split_transform(transform)
    assert geometry is not None and geometry.mean == (0.5, 0.5, 0.5)
    from scd_core.data.images import load_rgb

    img = load_rgb(target.assessment_items[0].path)
    pixels = torch.from_numpy(np.asarray(geometry.pil_transform(img)).copy()).permute(2, 0, 1)[None]
    assert torch.equal(normalize(pixels, geometry.mean, geometry.std)[0], transform(img))


def test_one_store_per_geometry_and_rebuilt_when_corrupt(world, fresh_cache):
    target, repo = world
    for name in ("r16", "r16b", "r16_norm"):
        teacher_outputs(repo.get(name), target, device="cpu")
    (store,) = _stores(fresh_cache)  # three teachers, one geometry: one decoded pass
    teacher_outputs(repo.get("r20"), target, device="cpu")
    assert len(_stores(fresh_cache)) == 2
    folder = fresh_cache / "outputs" / store
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["images"] == len(target.assessment_items)
    pixels = np.load(folder / "pixels.npy")
    assert pixels.dtype == np.uint8 and pixels.shape == (len(target.assessment_items), 3, 16, 16)
    data = bytearray((folder / "pixels.npy").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the store is not trusted, it is decoded again
    (folder / "pixels.npy").write_bytes(bytes(data))
    again = teacher_outputs(repo.get("r16"), target, device="cpu", use_cache=False)
    ref = teacher_outputs(repo.get("r16"), target, device="cpu", use_cache=False, shared_decode=False)
    np.testing.assert_allclose(again.features, ref.features, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.load(folder / "pixels.npy"), pixels)


def test_transforms_that_do_not_split_fall_back(world):
    from torchvision import transforms as T

    assert split_transform(T.Compose([T.Resize(16), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])) is None
    assert split_transform(T.Compose([T.ToTensor()])) is None
    assert split_transform(lambda img: img) is None
