"""Per-session workspace: uploads are validated before they are kept, refused ones leave nothing behind."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from helpers import make_teacher, make_zip, write_image_folder, zip_bytes

from scd_core import ScdError, TargetSetError, TeacherError
from scd_core.runtime.session import (
    TeacherSources,
    add_uploaded_teacher,
    check_session_id,
    collect_teachers,
    load_uploaded_target,
    new_session_id,
    remove_session,
    save_upload,
    session_dir,
    upload_stem,
    zip_folder,
)


@pytest.fixture
def sid():
    session = new_session_id()
    yield session
    remove_session(session)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("t") / "tiny_teacher", 3, img_size=16, labels=["a", "b", "c"])


def test_session_ids_are_checked():
    assert check_session_id(new_session_id())
    for bad in ("../x", "", "a/b", "x" * 65):
        with pytest.raises(ScdError):
            check_session_id(bad)


def test_an_uploaded_target_is_kept_in_the_session(sid, tmp_path):
    folder = write_image_folder(tmp_path / "t", {"cat": 4, "dog": 4}, size=16)
    target = load_uploaded_target(sid, "pets.zip", make_zip(folder, tmp_path / "pets.zip").read_bytes())
    assert target.class_names == ["cat", "dog"] and target.name == "pets"
    assert session_dir(sid) in target.root.parents


def test_a_refused_target_upload_leaves_nothing_and_names_the_upload(sid, tmp_path):
    folder = write_image_folder(tmp_path / "t", {"cat": 4}, size=16)
    with pytest.raises(TargetSetError, match="only one class") as info:
        load_uploaded_target(sid, "single.zip", make_zip(folder, tmp_path / "single.zip").read_bytes())
    assert "single.zip" in str(info.value) and str(session_dir(sid)) not in str(info.value)
    assert list(session_dir(sid, "targets").iterdir()) == []
    assert list(session_dir(sid, "uploads", "targets").iterdir()) == []


def test_an_uploaded_teacher_is_validated_and_named_after_its_folder(sid, teacher_folder, tmp_path):
    data = make_zip(teacher_folder.parent, tmp_path / "t.zip").read_bytes()
    spec = add_uploaded_teacher(sid, "whatever.zip", data)
    assert spec.name == "tiny_teacher" and spec.num_classes == 3 and session_dir(sid, "teachers") / "tiny_teacher" \
        == session_dir(sid, "teachers") / spec.name
    with pytest.raises(TeacherError, match="already"):
        add_uploaded_teacher(sid, "whatever.zip", data)
    flat = zip_bytes({"config.json": (teacher_folder / "config.json").read_bytes(),
                 "model.safetensors": (teacher_folder / "model.safetensors").read_bytes()})
    assert add_uploaded_teacher(sid, "second one.zip", flat).name == "second_one"


@pytest.mark.parametrize("files, message", [
    ({"t/config.json": b"{}", "t/pytorch_model.bin": b"\x80\x04."}, "safetensors"),
    ({"t/config.json": b"{}", "t/model.safetensors": b"x", "t/extra.pth": b"x"}, "pickled"),
    ({"t/config.json": b"{}"}, "no model.safetensors"),
    ({"t/readme.txt": b"hello"}, "no config.json"),
    ({"a/config.json": b"{}", "b/config.json": b"{}"}, "several teacher folders"),
])
def test_teacher_uploads_are_refused_with_a_message(sid, files, message):
    with pytest.raises(TeacherError, match=message):
        add_uploaded_teacher(sid, "bad.zip", zip_bytes(files))
    assert [p for p in session_dir(sid, "teachers").iterdir()] == []


def test_teacher_weights_that_do_not_fit_are_refused(sid, teacher_folder):
    config = json.loads((teacher_folder / "config.json").read_text())
    config["num_classes"] = 5
    config["label_names"] = ["a", "b", "c", "d", "e"]
    data = zip_bytes({"t/config.json": json.dumps(config).encode(),
                 "t/model.safetensors": (teacher_folder / "model.safetensors").read_bytes()})
    with pytest.raises(TeacherError, match="do not fit"):
        add_uploaded_teacher(sid, "t.zip", data)
    assert not (session_dir(sid, "teachers") / "t").exists()


def test_collect_teachers_reports_broken_sources_and_hides(teacher_folder, tmp_path):
    sources = TeacherSources(uploads=[str(teacher_folder), str(tmp_path / "gone")], hub=["no_such_model_xyz"])
    collected = collect_teachers(sources)
    assert collected.repository.names == ["tiny_teacher"] and collected.origin["tiny_teacher"] == "upload"
    assert len(collected.errors) == 2
    hidden = collect_teachers(TeacherSources(uploads=[str(teacher_folder)], hidden=["tiny_teacher"]))
    assert hidden.repository is None and hidden.hidden == ["tiny_teacher"]


def test_zip_folder_round_trips(teacher_folder):
    data = zip_folder(teacher_folder, arcname="student")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == ["student/config.json", "student/model.safetensors"]


def test_an_upload_reports_its_progress_with_growing_fractions(sid, tmp_path):
    """Extraction, then the check of every image: the app shows these as a progress bar (a 30,000-image
    upload once gave no sign of life for minutes)."""
    folder = write_image_folder(tmp_path / "many", {"a": 150, "b": 150}, size=8)
    data = make_zip(folder, tmp_path / "many.zip").read_bytes()
    events = []
    target = load_uploaded_target(sid, "many.zip", data, progress=events.append)
    assert target.num_classes == 2 and len(target.items) == 300
    fractions = [e.fraction for e in events]
    assert all(f is not None for f in fractions) and fractions == sorted(fractions)  # only ever grows
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    phases = [e.phase for e in events]
    assert {"extract", "validate"} <= set(phases) and phases.index("extract") < phases.index("validate")
    assert len(events) <= 250  # about a hundred per phase, not one per image and byte block
    assert any("300 images" in e.message for e in events)
    again = []  # the same bytes again: already extracted, only the check reports
    load_uploaded_target(sid, "many.zip", data, progress=again.append)
    assert again[-1].fraction == 1.0 and "extract" not in {e.phase for e in again}


def test_a_stored_upload_is_known_by_the_name_it_was_uploaded_under(sid):
    stored = save_upload(sid, "pets.zip", b"PK\x05\x06" + bytes(18))
    assert stored.name != "pets.zip" and upload_stem(stored.name) == upload_stem(stored.stem) == "pets"
    assert upload_stem("flowers-v2") == "flowers-v2"
    assert upload_stem("data-0123456789ab-copy") == "data-0123456789ab-copy"
