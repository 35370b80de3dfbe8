"""Demo worlds at the ``small`` size: layout, loadable teachers, determinism, caching, errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scd_core.demo import worlds as demo
from scd_core.demo.worlds import WORLDS, DemoWorld, build_world, ensure_world, open_world, world_description
from scd_core.errors import ScdError
from scd_core.teachers.repository import TeacherRepository, load_teacher, spec_from_folder, teacher_transform

SPLITS = ("train", "val", "test")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shapes_builds(tmp_path_factory):
    """The small shapes world twice from seed 0: the session's cached one (shared with other tests)
    and a fresh build in a temporary folder (with its progress reports)."""
    cached = ensure_world("shapes", size="small")
    reports: list[tuple[float, str]] = []
    fresh = build_world("shapes", tmp_path_factory.mktemp("demo") / "fresh", size="small", seed=0,
                        progress=lambda f, m: reports.append((f, m)))
    return cached, fresh, reports


@pytest.fixture(scope="module")
def digits_world() -> DemoWorld:
    """The small digits world from the session workspace (built on first use, cached)."""
    return ensure_world("digits", size="small")


@pytest.fixture(params=WORLDS)
def world(request, shapes_builds, digits_world) -> DemoWorld:
    return shapes_builds[0] if request.param == "shapes" else digits_world


def test_layout_is_an_image_folder_of_pngs(world: DemoWorld):
    assert world.root.is_dir() and (world.root / "world.json").is_file()
    assert world.target_dir == world.root / "target" and world.teachers_dir == world.root / "teachers"
    classes = sorted(world.class_names)
    assert len(classes) == 6
    size = world.manifest["image_size"]
    for split in SPLITS:
        assert sorted(p.name for p in (world.target_dir / split).iterdir()) == classes
        for cls in classes:
            files = sorted((world.target_dir / split / cls).iterdir())
            assert len(files) >= 2, (split, cls)
            assert all(f.suffix == ".png" for f in files)
            assert world.manifest["target"]["counts"][split][cls] == len(files)
    unlabeled = sorted((world.target_dir / "unlabeled").iterdir())
    assert len(unlabeled) >= 10 and all(f.suffix == ".png" for f in unlabeled)
    assert set(world.manifest["target"]["unlabeled_labels"]) == {f.name for f in unlabeled}
    with Image.open(unlabeled[0]) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (size, size)
    # the build left no temporary siblings behind
    assert not [p for p in world.root.parent.iterdir() if ".building-" in p.name or ".old-" in p.name]


def test_target_goes_through_the_upload_loader(world: DemoWorld):
    from scd_core.data.targets import load_target

    ts = load_target(world.target_dir)
    assert sorted(ts.class_names) == sorted(world.class_names)
    assert ts.split_given
    counts = ts.counts()
    assert all(counts[c]["train"] >= 2 and counts[c]["test"] >= 2 for c in ts.class_names)
    assert sum(1 for it in ts.items if it.label < 0) == world.manifest["target"]["unlabeled"]


def test_teachers_load_with_label_names_and_descriptions(world: DemoWorld):
    import torch
    from timm.data import resolve_model_data_config

    records = {r["name"]: r for r in world.manifest["teachers"]}
    assert len(records) >= 6
    repo = TeacherRepository.from_folder(world.teachers_dir)
    assert sorted(repo.names) == sorted(records) == sorted(world.teachers)
    sample = next((world.target_dir / "val" / world.class_names[0]).iterdir())
    size = world.manifest["image_size"]
    for name, record in records.items():
        spec = spec_from_folder(world.teachers_dir / name)
        assert list(spec.label_names) == record["label_names"] and spec.num_classes == len(spec.label_names)
        assert spec.description == record["description"] and spec.description
        assert world.expectations[name] and world.usefulness[name] in ("high", "medium", "low", "none")
        model = load_teacher(spec)
        cfg = resolve_model_data_config(model)
        assert tuple(cfg["input_size"]) == (3, size, size) and cfg["crop_pct"] == 1.0
        transform, _ = teacher_transform(model)
        with Image.open(sample) as im:
            x = transform(im.convert("RGB"))
        # the eval transform is the identity resize at this size: exactly what the teacher trained on
        with Image.open(sample) as im:
            raw = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) / 255.0
        mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
        assert torch.allclose(x, (raw - mean) / std, atol=1e-5)
        with torch.no_grad():
            assert model(x[None]).shape == (1, spec.num_classes)


def test_trained_teachers_learned_their_tasks(world: DemoWorld):
    records = world.manifest["teachers"]
    assert {"untrained", "noisy_labels"} <= {r["name"] for r in records}
    clean = [r for r in records if r["trained"] and not r["label_noise"]]
    assert len(clean) >= 5
    margins = [r["heldout_accuracy"] - r["chance_accuracy"] for r in clean]
    # small worlds train for a few seconds: every clean teacher beats chance, all but one by a wide margin
    assert min(margins) > 0, margins
    assert sum(m >= 0.1 for m in margins) >= len(margins) - 1, margins
    assert np.mean(margins) > 0.25, margins
    untrained = next(r for r in records if r["name"] == "untrained")
    assert not untrained["trained"] and untrained["train_images"] == 0
    assert untrained["heldout_accuracy"] <= max(untrained["chance_accuracy"], 1 / untrained["num_classes"]) + 0.1


def test_same_seed_same_bytes(shapes_builds):
    a, b, _ = shapes_builds
    files_a = sorted(p.relative_to(a.root) for p in a.target_dir.rglob("*.png"))
    files_b = sorted(p.relative_to(b.root) for p in b.target_dir.rglob("*.png"))
    assert files_a == files_b and len(files_a) > 50
    rng = np.random.default_rng(0)
    for rel in rng.choice(np.array(files_a, dtype=object), 8, replace=False):
        assert sha(a.root / rel) == sha(b.root / rel), rel
    for name in a.teachers:
        assert sha(a.teachers_dir / name / "model.safetensors") == sha(b.teachers_dir / name / "model.safetensors")
        config_a = json.loads((a.teachers_dir / name / "config.json").read_text())
        assert config_a == json.loads((b.teachers_dir / name / "config.json").read_text())
    strip = lambda m: [{k: v for k, v in r.items() if k != "seconds"} for r in m["teachers"]]  # noqa: E731
    assert strip(a.manifest) == strip(b.manifest)


def test_seed_changes_the_images():
    attrs = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    one = demo.render_shapes(attrs, np.random.default_rng([0, 1]), 32)
    again = demo.render_shapes(attrs, np.random.default_rng([0, 1]), 32)
    other = demo.render_shapes(attrs, np.random.default_rng([1, 1]), 32)
    assert one.dtype == np.uint8 and one.shape == (3, 32, 32, 3)
    assert np.array_equal(one, again) and not np.array_equal(one, other)


def test_progress_is_reported_up_to_one(shapes_builds):
    _, _, reports = shapes_builds
    fractions = [f for f, _ in reports]
    assert fractions and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(fractions))
    assert any("teacher" in m for _, m in reports)


def test_ensure_world_uses_the_cache(digits_world, monkeypatch):
    manifest = digits_world.root / "world.json"
    before = manifest.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure_world rebuilt a cached world")

    monkeypatch.setattr(demo, "build_world", no_rebuild)
    again = ensure_world("digits", size="small")
    assert again.root == digits_world.root and manifest.stat().st_mtime_ns == before
    assert again.root.name == "digits-small-v1" and again.root.parent.name == "demo"
    monkeypatch.setenv("SCD_DEMO_SIZE", "small")
    assert ensure_world(" Digits ").root == digits_world.root  # size from the environment


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SCD_WORKSPACE", str(tmp_path / "ws"))
    calls = []

    def fake_build(name, out_dir, *, size, seed, progress=None):
        calls.append(name)
        time.sleep(0.3)
        out_dir = Path(out_dir)
        (out_dir / "target").mkdir(parents=True)
        (out_dir / "world.json").write_text(json.dumps({"name": name, "size": size, "teachers": []}))
        return open_world(out_dir)

    monkeypatch.setattr(demo, "build_world", fake_build)
    results: list[DemoWorld] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_world("shapes", size="small")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["shapes"] and len(results) == 3
    assert {w.root for w in results} == {tmp_path / "ws" / "demo" / "shapes-small-v1"}


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(name, size, root, seed, progress):
        (root / "target").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_world("shapes", tmp_path / "out", size="small")
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_and_foreign_folders(tmp_path):
    with pytest.raises(ScdError, match="shapes, digits"):
        ensure_world("mnist")
    with pytest.raises(ScdError, match="unknown demo world"):
        build_world("mnist", tmp_path / "x")
    with pytest.raises(ScdError, match="unknown demo world"):
        world_description("mnist")
    with pytest.raises(ScdError, match="size"):
        ensure_world("shapes", size="huge")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ScdError, match="not a demo world"):
        build_world("shapes", tmp_path / "mine", size="small")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ScdError, match="not a built demo world"):
        open_world(tmp_path / "mine")


@pytest.mark.parametrize("name", WORLDS)
def test_description_explains_every_teacher(name):
    text = world_description(name)
    assert "Target" in text and "should help?" in text
    for teacher in demo._teachers(name):
        assert f"`{teacher.name}`" in text
