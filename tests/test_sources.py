"""Source strings resolve in one module: demo worlds, folders, zips, CSVs, hub names and lists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import make_teacher, make_zip, write_csv_target, write_image_folder

import scd_core
from scd_core.errors import TargetSetError, TeacherError
from scd_core.sources import load_target, open_repository, parse_source

ROOT = Path(__file__).resolve().parents[1]


def test_parse_source_kinds(tmp_path):
    folder = write_image_folder(tmp_path / "t", {"a": 2, "b": 2})
    csv = write_csv_target(tmp_path / "c", {"x/1.png": "a", "x/2.png": "b"})
    archive = make_zip(folder, tmp_path / "t.zip")
    assert parse_source("demo:shapes") == ("demo", "shapes")
    assert parse_source(" demo: digits ") == ("demo", "digits")
    assert parse_source("hf-hub:timm/resnet18.a1_in1k") == ("hub", "hf-hub:timm/resnet18.a1_in1k")
    assert parse_source("resnet18.a1_in1k") == ("hub", "resnet18.a1_in1k")
    assert parse_source(folder) == ("folder", str(folder))
    assert parse_source(csv) == ("csv", str(csv))
    assert parse_source(archive) == ("zip", str(archive))
    assert parse_source(tmp_path / "missing" / "t.zip")[0] == "path"
    assert parse_source("missing.zip")[0] == "path"


def test_a_demo_source_may_name_its_size():
    """``demo:WORLD@SIZE``: an app session that chose the small demo worlds hands its workers the same world."""
    from scd_core.demo.worlds import ensure_world
    from scd_core.sources import demo_source, split_demo

    assert demo_source("shapes") == "demo:shapes" and demo_source("shapes", "small") == "demo:shapes@small"
    assert split_demo("shapes@small") == ("shapes", "small") and split_demo("shapes") == ("shapes", None)
    ensure_world("shapes", size="small")
    target = load_target("demo:shapes@small")
    assert target.name == "demo:shapes@small" and target.class_names == sorted(ensure_world("shapes").class_names)
    assert len(open_repository("demo:shapes@small").names) == 7
    with pytest.raises(scd_core.ScdError, match="unknown demo world size"):
        load_target("demo:shapes@huge")


def test_every_target_form_loads_through_one_function(tmp_path):
    folder = write_image_folder(tmp_path / "t", {"a": 3, "b": 3})
    archive = make_zip(folder, tmp_path / "t.zip")
    csv = write_csv_target(tmp_path / "c", {"x/1.png": "a", "x/2.png": "b", "x/3.png": "a", "x/4.png": "b"})
    assert load_target(folder).class_names == ["a", "b"]
    assert load_target(archive, extract_dir=tmp_path / "x").class_names == ["a", "b"]
    assert load_target(csv).class_names == ["a", "b"]
    with pytest.raises(TargetSetError, match="no such file"):
        load_target(tmp_path / "missing")
    with pytest.raises(TargetSetError, match="no such file"):
        load_target("not_a_target")


def test_demo_sources_resolve_to_the_world():
    target = scd_core.load_target("demo:digits")
    repo = scd_core.open_repository("demo:digits")
    assert target.name == target.source == "demo:digits"
    assert repo.location == "demo:digits" and len(repo) >= 3
    with pytest.raises(Exception, match="unknown"):
        load_target("demo:no_such_world")


def test_repository_lists_mix_folders_and_refuse_demo(tmp_path):
    make_teacher(tmp_path / "repo" / "alpha", 2)
    make_teacher(tmp_path / "one", 3)
    both = open_repository(f"{tmp_path / 'repo'}, {tmp_path / 'one'}")
    assert both.names == ["alpha", "one"]
    with pytest.raises(TeacherError, match="cannot be combined"):
        open_repository(f"{tmp_path / 'one'},demo:shapes")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_demo_prefix_is_resolved_only_in_sources():
    for package in ("data", "teachers"):
        for path in (ROOT / "scd_core" / package).rglob("*.py"):
            assert not any(m.startswith("scd_core.demo") for m in _imports(path)), path
            assert 'startswith("demo:")' not in path.read_text(encoding="utf-8"), path
