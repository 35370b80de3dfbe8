"""Settings: every variable parsed, one policy for bad values, defaults, re-reading when the environment
changes, agreement with the demo worlds, and the README's configuration table."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from scd_core.config import DEFAULTS, FIELD_BY_ENV, FIELDS, Settings, markdown_table, parse_settings, settings
from scd_core.config import unknown_variables as unknown
from scd_core.errors import ScdError

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30

# (variable, raw value, parsed value): at least one row per variable (a test below checks the coverage)
PARSED = [
    ("SCD_WORKSPACE", "/srv/scd/ws", Path("/srv/scd/ws")),
    ("SCD_WORKSPACE", "~/ws", Path("~/ws").expanduser()),
    ("SCD_CACHE_DIR", "/srv/scd/cache", Path("/srv/scd/cache")),
    ("SCD_WORKSPACE_MAX_BYTES", "1000", 1000),
    ("SCD_WORKSPACE_MAX_BYTES", "2e9", 2_000_000_000),
    ("SCD_WORKSPACE_MAX_BYTES", "0", 0),
    ("SCD_WORKSPACE_MIN_AGE_S", "0", 0.0),
    ("SCD_WORKSPACE_MIN_AGE_S", "2.5", 2.5),
    ("SCD_CACHE_MAX_BYTES", " 4096 ", 4096),
    ("SCD_DEVICE", "cpu", "cpu"),
    ("SCD_DEVICE", "CUDA:1", "cuda:1"),
    ("SCD_DEVICE", "mps", "mps"),
    ("SCD_DEMO_SIZE", "Small", "small"),
    ("SCD_DEMO_WORLD", "digits", "digits"),
    ("SCD_DEMO_PREBUILD", "off", False),
    ("SCD_ALLOW_SERVER_PATHS", "yes", True),
    ("SCD_ALLOW_SERVER_PATHS", "0", False),
    ("SCD_ALLOW_SERVER_PATHS", "ON", True),
    ("SCD_TEACHERS", f"/a{os.pathsep} /b {os.pathsep}{os.pathsep}", ("/a", "/b")),
    ("SCD_MAX_IMAGE_PIXELS", "1000", 1000),
    ("SCD_ARCHIVE_MAX_BYTES", "1_500", 1500),
    ("SCD_ARCHIVE_MAX_FILES", "4", 4),
    ("SCD_ARCHIVE_MAX_RATIO", "50", 50.0),
    ("SCD_MAX_TEACHER_CLASSES", "10", 10),
    ("SCD_EXECUTOR", "Ray", "ray"),
    ("SCD_WORKERS", "3", 3),
    ("SCD_WORKERS", "auto", None),
    ("SCD_TORCH_THREADS", "2", 2),
    ("SCD_SESSION_MAX_RUNNING", "1", 1),
    ("SCD_SESSION_TTL_S", "0.5e4", 5000.0),
    ("SCD_RANK_IN_WORKERS_ABOVE", "0", 0),
    ("RAY_ADDRESS", "ray://head:10001", "ray://head:10001"),
]

# (variable, bad raw value): every kind of parser refuses what it should
REFUSED = [
    ("SCD_WORKSPACE_MAX_BYTES", "lots"), ("SCD_WORKSPACE_MAX_BYTES", "-1"), ("SCD_WORKSPACE_MAX_BYTES", "1.5"),
    ("SCD_WORKSPACE_MIN_AGE_S", "-3"), ("SCD_WORKSPACE_MIN_AGE_S", "nan"),
    ("SCD_CACHE_MAX_BYTES", "20GB"), ("SCD_CACHE_MAX_BYTES", "inf"),
    ("SCD_DEVICE", "gpu"), ("SCD_DEVICE", "cuda:x"),
    ("SCD_DEMO_SIZE", "huge"), ("SCD_DEMO_WORLD", "mnist"), ("SCD_DEMO_PREBUILD", "later"),
    ("SCD_ALLOW_SERVER_PATHS", "maybe"),
    ("SCD_MAX_IMAGE_PIXELS", "0"), ("SCD_ARCHIVE_MAX_BYTES", "0"), ("SCD_ARCHIVE_MAX_FILES", "many"),
    ("SCD_ARCHIVE_MAX_RATIO", "0"), ("SCD_MAX_TEACHER_CLASSES", "-5"),
    ("SCD_EXECUTOR", "dask"), ("SCD_WORKERS", "0"), ("SCD_TORCH_THREADS", "many"),
    ("SCD_SESSION_MAX_RUNNING", "-1"), ("SCD_SESSION_TTL_S", "soon"), ("SCD_RANK_IN_WORKERS_ABOVE", "-1"),
]


@pytest.mark.parametrize("env, raw, expected", PARSED)
def test_every_variable_is_parsed(env, raw, expected):
    value = getattr(parse_settings({env: raw}), FIELD_BY_ENV[env].attr)
    assert value == expected and type(value) is type(expected)


def test_the_parse_table_covers_every_variable():
    assert {env for env, _, _ in PARSED} == {f.env for f in FIELDS}
    assert {env for env, _ in REFUSED} >= {f.env for f in FIELDS} - {"SCD_WORKSPACE", "SCD_CACHE_DIR", "SCD_TEACHERS",
                                                                    "RAY_ADDRESS"}  # free text: nothing to refuse


@pytest.mark.parametrize("env, raw", REFUSED)
def test_a_bad_value_names_the_variable_the_value_and_what_is_accepted(env, raw):
    with pytest.raises(ScdError) as info:
        parse_settings({env: raw})
    message = str(info.value)
    assert message.startswith(f"{env}={raw.strip()!r} is not valid: expected ")
    assert FIELD_BY_ENV[env].accepted in message


def test_defaults():
    assert parse_settings({}) == DEFAULTS == Settings(
        workspace=None, cache_dir=None, workspace_max_bytes=50 * GiB, workspace_min_age_s=600.0,
        cache_max_bytes=20 * GiB, device="auto", demo_size="full", demo_world="shapes", demo_prebuild=True,
        allow_server_paths=False,
        teachers=(), max_image_pixels=64_000_000, archive_max_bytes=2 * GiB, archive_max_files=100_000,
        archive_max_ratio=200.0, max_teacher_classes=100_000, executor="local", workers=None, torch_threads=None,
        session_max_running=None, session_ttl_s=7 * 24 * 3600.0, rank_in_workers_above=20_000, ray_address=None)
    assert parse_settings({"SCD_DEVICE": "  ", "SCD_WORKERS": ""}) == DEFAULTS  # empty counts as unset


def test_settings_are_frozen_and_match_the_field_table():
    assert [f.name for f in dataclasses.fields(Settings)] == [f.attr for f in FIELDS]
    assert len({f.env for f in FIELDS}) == len(FIELDS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.device = "cpu"  # type: ignore[misc]


def test_settings_follow_the_environment_and_parse_once_per_snapshot(monkeypatch):
    monkeypatch.setenv("SCD_WORKERS", "2")
    first = settings()
    assert first.workers == 2 and settings() is first  # unchanged environment: the cached object
    monkeypatch.setenv("SCD_WORKERS", "5")
    assert settings().workers == 5
    monkeypatch.setenv("SCD_WORKERS", "2")
    assert settings() is first
    monkeypatch.setenv("SCD_WORKERS", "none")
    with pytest.raises(ScdError, match="SCD_WORKERS='none'"):
        settings()


def test_engine_limits_refuse_a_bad_value_instead_of_falling_back(monkeypatch):
    from scd_core.data.archives import ArchiveLimits
    from scd_core.outputs.cache import evict
    from scd_core.runtime.session import server_paths_allowed
    from scd_core.teachers.repository import max_teacher_classes

    monkeypatch.setenv("SCD_CACHE_MAX_BYTES", "lots")  # was: silently 20 GiB
    with pytest.raises(ScdError, match="SCD_CACHE_MAX_BYTES"):
        evict()
    monkeypatch.delenv("SCD_CACHE_MAX_BYTES")
    monkeypatch.setenv("SCD_ALLOW_SERVER_PATHS", "maybe")  # was: silently off
    with pytest.raises(ScdError, match="SCD_ALLOW_SERVER_PATHS"):
        server_paths_allowed()
    monkeypatch.setenv("SCD_ALLOW_SERVER_PATHS", "1")
    assert server_paths_allowed()
    monkeypatch.setenv("SCD_MAX_TEACHER_CLASSES", "12")
    assert max_teacher_classes() == 12
    monkeypatch.setenv("SCD_ARCHIVE_MAX_FILES", "7")
    assert ArchiveLimits.from_env() == ArchiveLimits(max_files=7)


def test_unknown_scd_variables_are_reported():
    assert unknown({"SCD_DEVICES": "cpu", "SCD_DEVICE": "cpu", "PATH": "/bin"}) == ["SCD_DEVICES"]


def test_demo_choices_are_those_of_the_demo_worlds():
    from scd_core.config import DEMO_SIZES, DEMO_WORLDS
    from scd_core.demo.worlds import SIZES, WORLDS

    assert DEMO_WORLDS == WORLDS and DEMO_SIZES == SIZES


def test_readme_configuration_table_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table with: python -m scd_core.config"
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert {f.env for f in FIELDS} <= listed


def test_unknown_variables_are_warned_about_once(monkeypatch, caplog):
    from scd_core.config import check_environment

    monkeypatch.setenv("SCD_DEVICES", "cpu")  # a typo of SCD_DEVICE
    with caplog.at_level("WARNING", logger="scd_core.config"):
        assert check_environment() == settings()
        check_environment()
    assert len([r for r in caplog.records if "SCD_DEVICES" in r.getMessage()]) == 1
