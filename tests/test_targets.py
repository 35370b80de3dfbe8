"""Tests of scd_core.data.targets and scd_core.data.images on real files: layouts, formats, splits, errors."""

from __future__ import annotations

import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    make_teacher,
    make_zip,
    write_csv,
    write_csv_target,
    write_image,
    write_image_folder,
    zip_bytes,
)
from PIL import Image

from scd_core.data.images import check_image_bytes, load_rgb
from scd_core.data.targets import UNLABELED_INDEX, TargetImageDataset, load_target
from scd_core.errors import TargetSetError
from scd_core.runtime.workspace import workspace_dir
from scd_core.teachers.repository import load_teacher, spec_from_folder, teacher_transform


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one thread is faster, and avoids OpenMP spin-waits on a busy 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _splits(ts) -> dict[str, str]:
    return {it.rel: it.split for it in ts.items}


def _counts(ts, split: str) -> dict[str, int]:
    return {c: v[split] for c, v in ts.counts().items()}


# ----------------------------------------------------------------------------------------------
# Image formats and modes
# ----------------------------------------------------------------------------------------------

IMAGE_CASES = [
    ("rgb.png", "RGB", {}),
    ("rgb.jpg", "RGB", {}),
    ("rgb.jpeg", "RGB", {}),
    ("rgb.bmp", "RGB", {}),
    ("rgb.webp", "RGB", {}),
    ("rgb.tif", "RGB", {}),
    ("rgb.tiff", "RGB", {}),
    ("palette.gif", "P", {}),
    ("animated.gif", "RGB", {"frames": 3}),
    ("animated.webp", "RGB", {"frames": 2}),
    ("cmyk.jpg", "CMYK", {}),
    ("cmyk.tif", "CMYK", {}),
    ("grey16.png", "I;16", {}),
    ("grey16.tif", "I;16", {}),
    ("palette_transparent.png", "P", {"transparency": True}),
    ("rgba.png", "RGBA", {}),
    ("rgba.webp", "RGBA", {}),
    ("rgba.tif", "RGBA", {}),
    ("grey.bmp", "L", {}),
    ("grey.jpg", "L", {}),
    ("grey_alpha.png", "LA", {}),
    ("bilevel.png", "1", {}),
    ("bilevel.bmp", "1", {}),
    ("int32.tif", "I", {}),
    ("float.tif", "F", {}),
]


@pytest.mark.parametrize(("name", "mode", "kwargs"), IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_load_rgb_every_format_and_mode(tmp_path, name, mode, kwargs):
    path = write_image(tmp_path / name, size=(20, 12), mode=mode, seed=3, **kwargs)
    with Image.open(path) as raw:
        if mode in ("CMYK", "I;16", "RGBA", "L", "LA", "P"):
            assert raw.mode.startswith(mode[0])  # really stored in that mode
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.size == (20, 12)
    assert check_image_bytes(path.read_bytes(), name) == (20, 12)


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    """A 16-bit grey ramp maps onto 0..255 (not saturated to white, not crushed to black)."""
    ramp = np.linspace(0, 65535, 32 * 8).reshape(8, 32).astype(np.uint16)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
    px = np.asarray(load_rgb(path))
    assert px.shape == (8, 32, 3)
    assert px.min() <= 2 and px.max() >= 253
    assert (px[..., 0] == px[..., 1]).all()
    assert len(np.unique(px)) > 100


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0, float("nan")], [0, 128, 255, 0]),  # floats within 0..1: that range; NaN is black
    ([-1.0, 1.0, float("inf"), float("-inf")], [0, 255, 255, 0]),  # stretched over the finite values
    ([0.0, 300.0, 65535.0, 1000.0], [0, 1, 255, 4]),  # within 0..65535: the 16-bit range
])
def test_float_images_map_onto_0_to_255_with_non_finite_values_clamped(tmp_path, values, expected):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    px = np.asarray(load_rgb(path))
    assert px[0, :, 0].tolist() == expected and (px[..., 0] == px[..., 2]).all()


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """Stored 20x10 with orientation 6 (the camera was turned): the user, and so the models, see it 10x20."""
    img = Image.new("RGB", (20, 10), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, 10, 10))  # the left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    px = np.asarray(load_rgb(path))
    assert px.shape == (20, 10, 3)
    assert px[2, 5, 2] > 150 and px[17, 5, 0] > 150  # rotated 90 degrees clockwise: blue on top, red below


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow says so while opening; the image still loads
def test_a_sixteen_bit_image_is_turned_upright_too_and_a_corrupt_exif_block_is_ignored(tmp_path):
    img = Image.fromarray(np.tile(np.linspace(0, 65535, 20), (10, 1)).astype(np.uint16))  # 20x10, 16-bit
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "grey16.png", exif=exif)
    assert np.asarray(load_rgb(tmp_path / "grey16.png")).shape == (20, 10, 3)
    Image.new("RGB", (20, 10)).save(tmp_path / "bad.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\xff\xff")
    assert np.asarray(load_rgb(tmp_path / "bad.jpg")).shape == (10, 20, 3)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
        raw.seek(2)  # even when the file handle was left on another frame, loading starts afresh
    assert load_rgb(path).getpixel((5, 5)) == (255, 0, 0)


def test_transparent_palette_and_cmyk_colours(tmp_path):
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=0)
    assert load_rgb(tmp_path / "p.png").getpixel((0, 0)) == (10, 200, 30)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=95)
    r, g, b = load_rgb(tmp_path / "red.jpg").getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_mixed_formats_in_one_target_set(tmp_path):
    root = tmp_path / "mixed"
    for i, (name, mode, kwargs) in enumerate(IMAGE_CASES):
        write_image(root / ("a" if i % 2 else "b") / name, size=16, mode=mode, seed=i, **kwargs)
    ts = load_target(root)
    assert ts.class_names == ["a", "b"]
    assert len(ts.items) == len(IMAGE_CASES)
    ds = TargetImageDataset(ts.items, lambda img: torch.from_numpy(np.asarray(img).copy()))
    for k in range(len(ds)):
        x, label, index = ds[k]
        assert x.shape == (16, 16, 3) and x.dtype == torch.uint8
        assert label in (0, 1) and index == k


# ----------------------------------------------------------------------------------------------
# ImageFolder layouts and splits
# ----------------------------------------------------------------------------------------------


def test_imagefolder_seeded_stratified_split(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 10, "b": 5, "c": 2})
    ts = load_target(root, seed=0)
    assert ts.class_names == ["a", "b", "c"]
    assert ts.num_classes == 3 and len(ts.items) == 17
    assert not ts.split_given
    assert _counts(ts, "val") == {"a": 2, "b": 1, "c": 1}
    assert _counts(ts, "train") == {"a": 8, "b": 4, "c": 1}
    assert _counts(ts, "test") == {"a": 0, "b": 0, "c": 0}
    assert len(ts.assessment_items) == 17
    # deterministic for a seed; another seed picks other validation images
    assert _splits(load_target(root, seed=0)) == _splits(ts)
    assert any(_splits(load_target(root, seed=s)) != _splits(ts) for s in (1, 2, 3))
    # every seed keeps >= 1 train and >= 1 val image per class
    for s in range(5):
        other = load_target(root, seed=s, val_fraction=0.5)
        for c, row in other.counts().items():
            assert row["train"] >= 1 and row["val"] >= 1, (s, c, row)
    summary = ts.summary()
    assert summary["splits"] == {"train": 13, "val": 4, "test": 0, "unlabeled": 0}
    assert summary["fingerprint"] == ts.fingerprint and summary["num_classes"] == 3


def test_items_ordered_and_labeled(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"b": 3, "a": 3})
    ts = load_target(root)
    for it in ts.items:
        assert ts.class_names[it.label] == Path(it.rel).parent.name
        assert it.path.is_file() and len(it.sha256) == 64
    order = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}
    keys = [(order[it.split], it.label, it.rel) for it in ts.items]
    assert keys == sorted(keys)


def test_split_folders_with_test_and_unlabeled(tmp_path):
    root = write_image_folder(tmp_path / "ds", {}, splits={"train": {"a": 4, "b": 3}, "val": {"a": 2, "b": 2},
                                                          "test": {"a": 2, "b": 1}}, unlabeled=3)
    ts = load_target(root)
    assert ts.split_given
    assert ts.counts() == {"a": {"train": 4, "val": 2, "test": 2}, "b": {"train": 3, "val": 2, "test": 1}}
    assessed = ts.assessment_items
    assert len(assessed) == 11
    assert {it.split for it in assessed} == {"train", "val"}
    assert all(it.label >= 0 for it in assessed)
    unlabeled = ts.split("unlabeled")
    assert len(unlabeled) == 3 and all(it.label == UNLABELED_INDEX for it in unlabeled)
    assert all(it.rel.startswith("unlabeled/") for it in unlabeled)
    assert [it.split for it in ts.items][-3:] == ["unlabeled"] * 3
    assert ts.summary()["splits"] == {"train": 7, "val": 4, "test": 3, "unlabeled": 3}


def test_train_only_split_folders_carve_val(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 6, "b": 2}, splits=["train"])
    ts = load_target(root)
    assert ts.split_given
    assert ts.counts() == {"a": {"train": 5, "val": 1, "test": 0}, "b": {"train": 1, "val": 1, "test": 0}}
    assert all(it.rel.startswith("train/") for it in ts.items)


def test_train_and_test_folders_carve_val_from_train_only(tmp_path):
    root = write_image_folder(tmp_path / "ds", {}, splits={"train": {"a": 5, "b": 5}, "test": {"a": 3, "b": 3}})
    ts = load_target(root)
    for it in ts.items:
        assert (it.split == "test") == it.rel.startswith("test/")
    assert _counts(ts, "val") == {"a": 1, "b": 1}
    assert _counts(ts, "test") == {"a": 3, "b": 3}


def test_unlabeled_folder_beside_classes(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3}, unlabeled=2)
    ts = load_target(root)
    assert ts.class_names == ["a", "b"]
    assert len(ts.split("unlabeled")) == 2 and len(ts.assessment_items) == 6


def test_enclosing_folder_is_descended(tmp_path):
    write_image_folder(tmp_path / "outer" / "inner", {"a": 2, "b": 2})
    ts = load_target(tmp_path / "outer")
    assert ts.class_names == ["a", "b"]
    assert ts.root == (tmp_path / "outer" / "inner").resolve()


def test_unicode_class_names(tmp_path):
    names = {"ネコ": 3, "σκύλος": 3, "café": 2, "Ωmega 2": 2}
    root = write_image_folder(tmp_path / "ユニコード", names, fmt="jpg")
    ts = load_target(root)
    assert ts.class_names == sorted(names)
    assert Counter(ts.class_names[it.label] for it in ts.items) == Counter(names)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


def test_csv_paths_labels_and_unlabeled(tmp_path):
    labels = {"img/1.png": "cat", "img/2.png": "cat", "img/3.png": "dog", "img/sub/4.png": "dog",
              "img/5.png": "dog", "img/6.png": None, "7.png": None}
    csv_path = write_csv_target(tmp_path / "data", labels)
    ts = load_target(csv_path)
    assert ts.class_names == ["cat", "dog"]
    assert ts.name == "labels" and not ts.split_given
    assert ts.root == (tmp_path / "data").resolve()
    got = {it.rel: (ts.class_names[it.label] if it.label >= 0 else None) for it in ts.items}
    assert got == labels
    assert {it.rel for it in ts.split("unlabeled")} == {"img/6.png", "7.png"}
    assert _counts(ts, "val") == {"cat": 1, "dog": 1}
    # the folder holding one CSV loads the same set
    assert load_target(tmp_path / "data").fingerprint == ts.fingerprint


def test_csv_with_split_column(tmp_path):
    labels = {f"{c}{i}.png": c for c in ("x", "y") for i in range(4)} | {"u.png": None, "v.png": "x"}
    splits = {"x0.png": "train", "x1.png": "train", "x2.png": "val", "x3.png": "test",
              "y0.png": "Train", "y1.png": "train", "y2.png": "VAL", "y3.png": "test", "v.png": "unlabeled"}
    csv_path = write_csv_target(tmp_path / "d", labels, splits=splits)
    ts = load_target(csv_path)
    assert ts.split_given
    assert ts.counts() == {"x": {"train": 2, "val": 1, "test": 1}, "y": {"train": 2, "val": 1, "test": 1}}
    assert {it.rel for it in ts.split("unlabeled")} == {"u.png", "v.png"}
    assert {it.rel for it in ts.assessment_items} == {"x0.png", "x1.png", "x2.png", "y0.png", "y1.png", "y2.png"}


def test_csv_latin1_accented_class_names(tmp_path):
    labels = {"a1.png": "café", "a2.png": "café", "b1.png": "crème brûlée", "b2.png": "crème brûlée",
              "c1.png": "Ñandú", "c2.png": "Ñandú"}
    csv_path = write_csv_target(tmp_path / "d", labels, encoding="latin-1")
    assert "é".encode("latin-1") in csv_path.read_bytes()
    ts = load_target(csv_path)
    assert ts.class_names == sorted({"café", "crème brûlée", "Ñandú"})


def test_csv_utf8_bom_and_header_case(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "l.csv").write_text("\ufeffPath , LABEL\n0.png,猫\n1.png,猫\n2.png,犬\n3.png,犬\n", encoding="utf-8")
    ts = load_target(tmp_path / "l.csv")
    assert ts.class_names == ["犬", "猫"]


# ----------------------------------------------------------------------------------------------
# Zip
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [None, "data", "outer/inner"])
def test_zip_of_imagefolder(tmp_path, prefix):
    src = write_image_folder(tmp_path / "src", {"a": 3, "b": 3}, unlabeled=1)
    archive = make_zip(src, tmp_path / "upload" / "set.zip", prefix=prefix)
    ts = load_target(archive)
    assert ts.name == "set" and ts.source == str(archive)
    assert ts.class_names == ["a", "b"] and len(ts.items) == 7
    ws = workspace_dir().resolve()
    assert all(ws in it.path.resolve().parents for it in ts.items)  # extracted inside the workspace
    assert sorted(p.name for p in (tmp_path / "upload").iterdir()) == ["set.zip"]  # nothing beside the zip
    assert ts.fingerprint == load_target(src).fingerprint  # same content, same fingerprint
    assert load_target(archive).fingerprint == ts.fingerprint  # re-load reuses the extraction


def test_zip_extract_dir_and_split_layout(tmp_path):
    src = write_image_folder(tmp_path / "src", {}, splits={"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    archive = make_zip(src, tmp_path / "s.zip", prefix="top")
    ts = load_target(archive, extract_dir=tmp_path / "x")
    assert all((tmp_path / "x").resolve() in it.path.resolve().parents for it in ts.items)
    assert ts.split_given and _counts(ts, "test") == {"a": 1, "b": 1}


def test_zip_of_train_only_split_keeps_split_folder(tmp_path):
    src = write_image_folder(tmp_path / "src", {"a": 3, "b": 3}, splits=["train"])
    ts = load_target(make_zip(src, tmp_path / "t.zip", prefix="top"), extract_dir=tmp_path / "x")
    assert ts.split_given and ts.class_names == ["a", "b"]


@pytest.mark.parametrize(("encoding", "names"), [("utf-8", {"ネコ": 2, "σκύλος": 2, "café": 2}),
                                                 ("cp437", {"café": 2, "naïve": 2, "Ärger": 2})])
def test_zip_legacy_name_encodings(tmp_path, encoding, names):
    src = write_image_folder(tmp_path / "src", names)
    archive = make_zip(src, tmp_path / "legacy.zip", prefix="top", legacy_encoding=encoding)
    ts = load_target(archive, extract_dir=tmp_path / "x")
    assert ts.class_names == sorted(names)


def test_zip_of_csv_target(tmp_path):
    labels = {"i/1.png": "p", "i/2.png": "p", "i/3.png": "q", "i/4.png": "q", "i/5.png": None}
    write_csv_target(tmp_path / "src", labels)
    ts = load_target(make_zip(tmp_path / "src", tmp_path / "c.zip", prefix="w"), extract_dir=tmp_path / "x")
    assert ts.class_names == ["p", "q"] and len(ts.split("unlabeled")) == 1


def test_bad_zip_is_a_target_set_error(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(TargetSetError, match=r"bad\.zip: not a valid zip"):
        load_target(tmp_path / "bad.zip", extract_dir=tmp_path / "x")
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(TargetSetError, match="path traversal"):
        load_target(archive, extract_dir=tmp_path / "x")
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "x").exists() or list((tmp_path / "x").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Fingerprints and datasets
# ----------------------------------------------------------------------------------------------


def test_fingerprint_tracks_bytes_and_labels(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    fp = load_target(root).fingerprint
    assert load_target(root).fingerprint == fp
    copy = shutil.copytree(root, tmp_path / "elsewhere")
    assert load_target(copy).fingerprint == fp  # content, not location
    write_image(copy / "a" / "001.png", seed=999)
    assert load_target(copy).fingerprint != fp
    # a label change (same bytes): move an image to the other class
    copy2 = shutil.copytree(root, tmp_path / "moved")
    shutil.move(copy2 / "a" / "002.png", copy2 / "b" / "a002.png")
    assert load_target(copy2).fingerprint != fp


def test_fingerprint_changes_with_csv_label(tmp_path):
    labels = {f"{i}.png": "x" if i < 3 else "y" for i in range(6)}
    csv_path = write_csv_target(tmp_path / "d", labels)
    fp = load_target(csv_path).fingerprint
    assert load_target(csv_path).fingerprint == fp
    write_csv(csv_path, [(rel, "y" if rel == "0.png" else lab) for rel, lab in labels.items()])
    assert load_target(csv_path).fingerprint != fp


def test_dataset_with_teacher_eval_transform(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 2, "b": 2}, size=24, unlabeled=1)
    ts = load_target(root)
    model = load_teacher(spec_from_folder(make_teacher(tmp_path / "t", 3, img_size=16)))
    transform, cfg_fp = teacher_transform(model)
    assert len(cfg_fp) == 64
    ds = TargetImageDataset(ts.items, transform)
    assert len(ds) == 5
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batch.shape == (5, 3, 16, 16) and batch.dtype == torch.float32
    assert [ds[i][1] for i in range(len(ds))] == [it.label for it in ts.items]
    assert ds[4][1] == UNLABELED_INDEX
    with torch.no_grad():
        assert model(batch).shape == (5, 3)


# ----------------------------------------------------------------------------------------------
# Errors: TargetSetError (a ValueError) naming the file and the problem
# ----------------------------------------------------------------------------------------------


def _refused(spec, match: str, **kwargs) -> str:
    with pytest.raises(TargetSetError, match=match) as info:
        load_target(spec, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_error_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty" in _refused(tmp_path / "empty", "no images found")


def test_error_only_unlabeled(tmp_path):
    root = write_image_folder(tmp_path / "ds", {}, unlabeled=3)
    _refused(root, "no classes")
    csv_path = write_csv_target(tmp_path / "c", {"1.png": None, "2.png": None})
    _refused(csv_path, r"labels\.csv: no classes")


def test_error_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "c").mkdir()
    _refused(root, r"class folder 'c' holds no images")


def test_error_single_class(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"cat": 4})
    _refused(root, r"only one class \('cat'\)")
    _refused(write_image_folder(tmp_path / "ds2", {"cat": 4}, splits=["train", "val"]), r"only one class \('cat'\)")


def test_one_shot_class_is_kept_in_train_with_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "café": 1, "b": 4})
    ts = load_target(root)
    assert ts.class_names == ["a", "b", "café"]
    lonely = [it for it in ts.items if it.label == 2]
    assert [it.split for it in lonely] == ["train"]  # nothing of it is held out
    assert ts.split("val") and all(it.label != 2 for it in ts.split("val"))
    (warning,) = ts.warnings
    assert "'café'" in warning and "one labeled image" in warning
    assert ts.summary()["warnings"] == [warning]


def test_error_every_class_one_shot(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 1, "b": 1})
    _refused(root, r"every class has a single labeled image")


def test_error_class_only_in_test(tmp_path):
    root = write_image_folder(tmp_path / "ds", {}, splits={"train": {"a": 3, "b": 3}, "test": {"a": 1, "c": 2}})
    _refused(root, r"'c' \(0\)")


def test_error_unreadable_image(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "b" / "broken.png").write_bytes(np.random.default_rng(0).bytes(500))
    _refused(root, r"b/broken\.png: not a readable image")


def test_error_truncated_image(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    data = (root / "a" / "000.png").read_bytes()
    (root / "a" / "000.png").write_bytes(data[:20])
    _refused(root, r"a/000\.png")


def test_error_non_image_file(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("hello")
    _refused(root, r"a/notes\.txt: unsupported file type")


def test_error_image_with_wrong_suffix_content(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "fake.jpg").write_text("<html>not an image</html>")
    _refused(root, r"a/fake\.jpg: not a readable image")


def test_error_file_outside_class_folder(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    write_image(root / "stray.png")
    _refused(root, r"stray\.png: file outside a class folder")


def test_error_entry_beside_split_folders(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"a": 3, "b": 3}, splits=["train"])
    (root / "extra").mkdir()
    _refused(root, r"extra: unexpected entry beside split folders")


def test_error_class_names_differ_only_in_case(tmp_path):
    root = write_image_folder(tmp_path / "ds", {"Cat": 2, "cat": 2, "dog": 2})
    _refused(root, r"'Cat' and 'cat' differ only in case")
    labels = {"1.png": "Dog", "2.png": "Dog", "3.png": "dog", "4.png": "dog"}
    _refused(write_csv_target(tmp_path / "c", labels), r"differ only in case")


def test_error_csv_missing_image(tmp_path):
    csv_path = write_csv_target(tmp_path / "d", {"1.png": "a", "2.png": "a", "3.png": "b", "4.png": "b"})
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("gone/5.png,b\n")
    _refused(csv_path, r"labels\.csv:6: image 'gone/5\.png' does not exist")


def test_error_csv_missing_column(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", seed=i)
    csv_path = write_csv(tmp_path / "l.csv", [(f"{i}.png",) for i in range(4)], header=("path",))
    _refused(csv_path, r"l\.csv: missing column\(s\) label")
    csv_path = write_csv(tmp_path / "l.csv", [("a",), ("b",)], header=("file", "class"))
    _refused(csv_path, r"missing column\(s\) path, label")


def test_error_csv_path_escapes_folder(tmp_path):
    write_image(tmp_path / "outside.png")
    csv_path = write_csv_target(tmp_path / "d", {"1.png": "a", "2.png": "a", "3.png": "b", "4.png": "b"})
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("../outside.png,b\n")
    _refused(csv_path, r"path '\.\./outside\.png' escapes the CSV's folder")
    abs_csv = write_csv(tmp_path / "d" / "labels.csv", [("1.png", "a"), ("2.png", "a"), ("3.png", "b"),
                                                        (str(tmp_path / "outside.png"), "b")])
    _refused(abs_csv, "escapes the CSV's folder")


def test_error_csv_symlink_escaping_folder(tmp_path):
    write_image(tmp_path / "secret.png")
    csv_path = write_csv_target(tmp_path / "d", {"1.png": "a", "2.png": "a", "3.png": "b", "4.png": "b"})
    (tmp_path / "d" / "link.png").symlink_to(tmp_path / "secret.png")
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("link.png,b\n")
    _refused(csv_path, "escapes the CSV's folder")


def test_error_csv_unknown_split(tmp_path):
    csv_path = write_csv_target(tmp_path / "d", {"1.png": "a", "2.png": "a", "3.png": "b", "4.png": "b"},
                                splits={"1.png": "training"})
    _refused(csv_path, r"labels\.csv:2: unknown split 'training'")


def test_error_csv_listed_twice_and_non_image(tmp_path):
    csv_path = write_csv_target(tmp_path / "d", {"1.png": "a", "2.png": "a", "3.png": "b", "4.png": "b"})
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("1.png,b\n")
    _refused(csv_path, r"1\.png: listed twice")
    (tmp_path / "d" / "x.txt").write_text("x")
    write_csv(csv_path, [("1.png", "a"), ("2.png", "a"), ("3.png", "b"), ("x.txt", "b")])
    _refused(csv_path, r"'x\.txt' is not a supported image type")


def test_error_csv_empty_and_several(tmp_path):
    csv_path = write_csv(tmp_path / "d" / "l.csv", [])
    _refused(csv_path, "lists no images")
    write_csv(tmp_path / "d" / "m.csv", [])
    _refused(tmp_path / "d", "several CSV files")


def test_error_nonexistent_path(tmp_path):
    _refused(tmp_path / "nowhere", r"nowhere: no such file or folder")
    _refused(tmp_path / "nowhere.csv", "no such file or folder")
    (tmp_path / "file.txt").write_text("x")
    _refused(tmp_path / "file.txt", "expected a folder, a .zip, a .csv")


def test_error_image_over_pixel_limit(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "ds", {"a": 2, "b": 2}, size=16)
    write_image(root / "b" / "huge.png", size=(40, 30))
    monkeypatch.setenv("SCD_MAX_IMAGE_PIXELS", "1000")
    _refused(root, r"b/huge\.png: image of 40x30 pixels exceeds the limit of 1000 pixels")
    with pytest.raises(TargetSetError, match="exceeds the limit"):
        load_rgb(root / "b" / "huge.png")
    assert load_rgb(root / "a" / "000.png").size == (16, 16)


def _png_bytes(shade: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (shade, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_uploaded_one_shot_class_is_accepted(tmp_path):
    from scd_core.runtime.session import load_uploaded_target

    entries = {f"a/{i}.png": _png_bytes(i) for i in range(3)} | {f"b/{i}.png": _png_bytes(50 + i) for i in range(3)}
    entries["café/0.png"] = _png_bytes(200)
    ts = load_uploaded_target("one-shot-session-0123456789abcdef", "few.zip", zip_bytes(entries))
    assert "café" in ts.class_names and any("one labeled image" in w for w in ts.warnings)


@pytest.mark.parametrize("entries, expected", [
    ({"x/only/0.png": None, "x/only/1.png": None}, r"^few\.zip/x: only one class"),
    ({"labels.csv": b"path,label\nmissing.png,a\n"}, r"^few\.zip/labels\.csv:2"),
    ({"labels.csv": b"path,label\na.png,x\na.png,y\nb.png,x\nc.png,y\n", "a.png": None, "b.png": None, "c.png": None},
     r"^few\.zip/a\.png: listed twice"),
    ({"train/a/0.png": None, "train/b/0.png": None, "test/c/0.png": None}, r"^few\.zip: .*'c' \(0\)"),
])
def test_upload_errors_name_the_users_file_never_a_server_path(entries, expected):
    from scd_core.errors import TargetSetError
    from scd_core.runtime.session import load_uploaded_target
    from scd_core.runtime.workspace import workspace_dir

    data = {name: _png_bytes(i) if content is None else content for i, (name, content) in enumerate(entries.items())}
    with pytest.raises(TargetSetError) as err:
        load_uploaded_target("path-free-session-0123456789abcdef", "few.zip", zip_bytes(data))
    message = str(err.value)
    assert re.search(expected, message), message
    assert str(workspace_dir()) not in message and "/uploads/" not in message and "/tmp" not in message


# ---- unusual but plausible layouts: nothing is dropped without a word ----------------------------------


def test_split_folders_differing_only_in_case_are_refused_not_dropped(tmp_path):
    root = write_image_folder(tmp_path / "t", {"cat": 2, "dog": 2}, splits=("train", "val"))
    shutil.copytree(root / "train", root / "Train")
    with pytest.raises(TargetSetError, match=r"'Train' and 'train' differ only in case|'train' and 'Train'"):
        load_target(root)


def test_a_hidden_class_folder_is_skipped_with_a_note(tmp_path):
    root = write_image_folder(tmp_path / "t", {"cat": 3, "dog": 3, ".NET": 2})
    ts = load_target(root)
    assert ts.class_names == ["cat", "dog"]
    assert any(w.startswith(".NET: folder skipped (2 image(s))") for w in ts.warnings), ts.warnings
    assert not any(str(tmp_path) in w for w in ts.warnings)  # the note names the folder, not the server path


def test_a_zip_of_one_folder_with_a_csv_beside_its_images(tmp_path):
    folder = tmp_path / "mydata"
    for i in range(6):
        write_image(folder / f"{i}.png", seed=i)
    (folder / "labels.csv").write_text("path,label\n" + "".join(
        f"{i}.png,{label}\n" for i, label in enumerate(["cat", "cat", "dog", "dog", "cat", "dog"])))
    ts = load_target(make_zip(folder, tmp_path / "mydata.zip", prefix="mydata"), extract_dir=tmp_path / "x")
    assert ts.class_names == ["cat", "dog"] and len(ts.items) == 6 and not ts.warnings


def test_images_the_csv_does_not_list_are_named_in_a_note(tmp_path):
    folder = tmp_path / "d"
    for i in range(6):
        write_image(folder / f"{i}.png", seed=i)
    (folder / "labels.csv").write_text("path,label\n0.png,cat\n1.png,cat\n2.png,dog\n3.png,dog\n")
    ts = load_target(folder / "labels.csv")
    assert len(ts.items) == 4
    assert any(w.startswith("2 image(s) beside labels.csv are not listed in it") and "'4.png'" in w
               for w in ts.warnings), ts.warnings


def test_a_class_with_validation_images_only_is_flagged_not_called_one_shot(tmp_path):
    root = write_image_folder(tmp_path / "t", {"cat": 3, "dog": 3}, splits=("train", "val"))
    write_image(root / "val" / "bird" / "0.png")
    ts = load_target(root)
    assert "bird" in ts.class_names and [it.split for it in ts.items if ts.class_names[it.label] == "bird"] == ["val"]
    assert any("no training image, only validation ones ('bird')" in w for w in ts.warnings), ts.warnings
    assert not any("one labeled image" in w for w in ts.warnings)


def test_a_relative_path_keeps_the_folders_in_item_ids(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "t", {"cat": 3, "dog": 3})
    monkeypatch.chdir(tmp_path)
    ts = load_target("t")
    rels = [it.rel for it in ts.items]
    assert len(set(rels)) == 6 and all(r.split("/")[0] == ts.class_names[it.label] for r, it in zip(rels, ts.items))


def test_an_empty_target_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    write_image_folder(tmp_path, {"cat": 3, "dog": 3})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetSetError, match="no target set given"):
        load_target("")


def test_hidden_folders_inside_classes_and_beside_splits_are_left_out_with_a_note(tmp_path):
    root = write_image_folder(tmp_path / "t", {"cat": 3, "dog": 3}, splits=("train", "val"))
    write_image(root / "train" / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")
    (root / "train" / "cat" / ".ipynb_checkpoints" / "notes.json").write_text("{}")  # not refused: hidden
    write_image(root / ".extra" / "x.png")
    ts = load_target(root)
    assert len(ts.items) == 12
    assert any(w.startswith("train/cat: 1 image(s) in hidden folders") for w in ts.warnings), ts.warnings
    assert any(w.startswith(".extra: folder skipped (1 image(s))") for w in ts.warnings), ts.warnings


def test_a_split_with_no_training_image_at_all_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "t", {"cat": 1, "dog": 2}, splits=("val",))
    with pytest.raises(TargetSetError, match="no training images"):
        load_target(root)
