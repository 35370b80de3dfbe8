"""Every setting the operator gives through the environment, read in this one module.

:data:`FIELDS` is the table of settings: environment variable, type, default, accepted values and
meaning. :func:`settings` parses and validates them into a frozen :class:`Settings`; a bad value
raises :class:`~scd_core.errors.ScdError` naming the variable, the value and what is accepted (one
policy for every variable: no silent fallback). An empty variable counts as unset.

Parsing happens once per distinct set of values: :func:`settings` keys its cache on a snapshot of the
variables it knows, so a process that changes them (a test's ``monkeypatch.setenv``, a launcher
script) gets fresh settings on the next call, and one that does not pays a dictionary lookup.
``python -m scd_core.config`` prints the configuration table of the README.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scd_core.errors import ScdError

LOGGER = logging.getLogger(__name__)

DEMO_WORLDS = ("shapes", "digits")  # the names of scd_core.demo.worlds.WORLDS (a test keeps them equal)
DEMO_SIZES = ("full", "small")
EXECUTOR_NAMES = ("local", "ray")  # the backends of scd_core.runtime.executors
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Settings:
    """The validated settings (see :data:`FIELDS` for the variable, default and meaning of each)."""

    workspace: Path | None
    cache_dir: Path | None
    workspace_max_bytes: int
    workspace_min_age_s: float
    cache_max_bytes: int
    device: str
    demo_size: str
    demo_world: str
    demo_prebuild: bool
    allow_server_paths: bool
    teachers: tuple[str, ...]
    max_image_pixels: int
    archive_max_bytes: int
    archive_max_files: int
    archive_max_ratio: float
    max_teacher_classes: int
    executor: str
    workers: int | None
    torch_threads: int | None
    session_max_running: int | None
    session_ttl_s: float
    rank_in_workers_above: int
    ray_address: str | None


# ------------------------------------------------------------------------------------------------
# Parsers: raw string -> value, or ValueError (turned into the one ScdError by _parse)
# ------------------------------------------------------------------------------------------------


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _text(raw: str) -> str:
    return raw


def _paths(raw: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in raw.split(os.pathsep)) if p)


def _integer(minimum: int) -> Callable[[str], int]:
    """Whole numbers >= ``minimum``; scientific notation with a whole value (``2e9``) is accepted."""

    def parse(raw: str) -> int:
        value = float(raw.replace("_", ""))
        if not math.isfinite(value) or value != int(value) or value < minimum:
            raise ValueError(raw)
        return int(value)

    return parse


def _number(minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise ValueError(raw)
        return value

    return parse


def _auto_integer(minimum: int) -> Callable[[str], int | None]:
    """``auto`` (None: the machine decides) or a whole number >= ``minimum``."""
    whole = _integer(minimum)

    def parse(raw: str) -> int | None:
        return None if raw.lower() == "auto" else whole(raw)

    return parse


def _choice(values: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        key = raw.lower()
        if key not in values:
            raise ValueError(raw)
        return key

    return parse


def _flag(raw: str) -> bool:
    key = raw.lower()
    if key not in _TRUE + _FALSE:
        raise ValueError(raw)
    return key in _TRUE


def parse_device(raw: str) -> str:
    """A device name as :func:`scd_core.device.resolve_device` takes it (availability is checked there)."""
    key = raw.strip().lower()
    if not _DEVICE.match(key):
        raise ValueError(raw)
    return key


@dataclass(frozen=True)
class Field:
    """One setting: its :class:`Settings` attribute, environment variable, parser and documentation."""

    attr: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    accepted: str  # what the parser accepts, in words (shown in errors and in the README)
    meaning: str
    default_text: str = ""  # the default in words, when ``repr(default)`` would not say it well

    def describe_default(self) -> str:
        return self.default_text or f"`{self.default}`"


GiB = 1 << 30
FIELDS: tuple[Field, ...] = (
    Field("workspace", "SCD_WORKSPACE", _path, None, "a folder",
          "where uploads, demo worlds and distillation runs are written", "the user data dir (`platformdirs`)"),
    Field("cache_dir", "SCD_CACHE_DIR", _path, None, "a folder",
          "where cached teacher outputs are written", "the user cache dir (`platformdirs`)"),
    Field("workspace_max_bytes", "SCD_WORKSPACE_MAX_BYTES", _integer(0), 50 * GiB, "a whole number of bytes >= 0",
          "workspace size limit: the oldest uploads, extractions and runs not in use are evicted", "50 GiB"),
    Field("workspace_min_age_s", "SCD_WORKSPACE_MIN_AGE_S", _number(0.0), 600.0, "a number of seconds >= 0",
          "workspace entries modified more recently than this are never evicted", "600"),
    Field("cache_max_bytes", "SCD_CACHE_MAX_BYTES", _integer(0), 20 * GiB, "a whole number of bytes >= 0",
          "teacher-output cache size limit: least recently used entries are evicted", "20 GiB"),
    Field("device", "SCD_DEVICE", parse_device, "auto", "auto, cpu, cuda, cuda:N or mps",
          "compute device of the app and the CLI's `--device` default (auto: cuda, then mps, then cpu)"),
    Field("demo_size", "SCD_DEMO_SIZE", _choice(DEMO_SIZES), "full", "one of " + ", ".join(DEMO_SIZES),
          "size of the built-in demo worlds (small: fewer images and teachers, built in seconds)"),
    Field("demo_world", "SCD_DEMO_WORLD", _choice(DEMO_WORLDS), DEMO_WORLDS[0], "one of " + ", ".join(DEMO_WORLDS),
          "the demo world the app opens with"),
    Field("demo_prebuild", "SCD_DEMO_PREBUILD", _flag, True, "1/true/yes/on or 0/false/no/off",
          "once the app's first demo world is ready, build the other demo worlds in the background (lowest "
          "priority, only while no user job waits), so switching worlds does not wait for a build", "on"),
    Field("allow_server_paths", "SCD_ALLOW_SERVER_PATHS", _flag, False, "1/true/yes/on or 0/false/no/off",
          "let app users name folders on the server as target sets and teacher repositories", "off"),
    Field("teachers", "SCD_TEACHERS", _paths, (), "folders separated by `os.pathsep` (`:`, or `;` on Windows)",
          "teacher repositories every app session starts with", "none"),
    Field("max_image_pixels", "SCD_MAX_IMAGE_PIXELS", _integer(1), 64_000_000, "a whole number >= 1",
          "largest image accepted (width x height, checked from the header before decoding)", "64,000,000"),
    Field("archive_max_bytes", "SCD_ARCHIVE_MAX_BYTES", _integer(1), 2 * GiB, "a whole number of bytes >= 1",
          "largest uncompressed size of an uploaded zip", "2 GiB"),
    Field("archive_max_files", "SCD_ARCHIVE_MAX_FILES", _integer(1), 100_000, "a whole number >= 1",
          "most entries in an uploaded zip", "100,000"),
    Field("archive_max_ratio", "SCD_ARCHIVE_MAX_RATIO", _number(0.0, inclusive=False), 200.0, "a number > 0",
          "highest compression ratio of an uploaded zip (per entry over 1 MiB, and for the whole archive)", "200"),
    Field("max_teacher_classes", "SCD_MAX_TEACHER_CLASSES", _integer(1), 100_000, "a whole number >= 1",
          "largest teacher head accepted (refused before its weights are allocated)", "100,000"),
    Field("executor", "SCD_EXECUTOR", _choice(EXECUTOR_NAMES), "local", "one of " + ", ".join(EXECUTOR_NAMES),
          "where the app's runs, rankings and validations run: worker processes on this machine, or Ray tasks "
          "(`ray`, also chosen when `RAY_ADDRESS` is set)", "local"),
    Field("workers", "SCD_WORKERS", _auto_integer(1), None, "auto or a whole number >= 1",
          "worker processes training at the same time (more runs wait in a fair queue); one device each",
          "auto: one per GPU, else 1"),
    Field("torch_threads", "SCD_TORCH_THREADS", _auto_integer(1), None, "auto or a whole number >= 1",
          "torch threads of each worker process (auto leaves one core to the server)",
          "auto: (CPU cores - 1) / workers, at least 1"),
    Field("session_max_running", "SCD_SESSION_MAX_RUNNING", _auto_integer(1), None, "auto or a whole number >= 1",
          "running jobs one session may hold (no session can hold every worker)", "auto: workers - 1, at least 1"),
    Field("session_ttl_s", "SCD_SESSION_TTL_S", _number(1.0), 7 * 24 * 3600.0, "a number of seconds >= 1",
          "an app session idle this long, with no active job, is deleted with its files", "604800 (7 days)"),
    Field("rank_in_workers_above", "SCD_RANK_IN_WORKERS_ABOVE", _integer(0), 20_000, "a whole number >= 0",
          "an app ranking of more images x teachers than this runs in worker processes, one task per teacher, "
          "not in the server (0: always)", "20,000"),
    Field("ray_address", "RAY_ADDRESS", _text, None, "a Ray cluster address (the Ray convention)",
          "cluster of the `ray` executor", "a local Ray instance"),
)
FIELD_BY_ENV = {f.env: f for f in FIELDS}


def _parse(spec: Field, raw: str | None) -> Any:
    text = (raw or "").strip()
    if not text:
        return spec.default
    try:
        return spec.parse(text)
    except ValueError:
        raise ScdError(f"{spec.env}={text!r} is not valid: expected {spec.accepted}") from None


def parse_settings(environ: dict[str, str] | None = None) -> Settings:
    """Validated settings from ``environ`` (default: the process environment). Raises ScdError."""
    environ = os.environ if environ is None else environ
    return Settings(**{spec.attr: _parse(spec, environ.get(spec.env)) for spec in FIELDS})


DEFAULTS: Settings = parse_settings({})
"""The settings of an empty environment."""

_CACHE: dict[tuple[str | None, ...], Settings] = {}
_CACHE_LOCK = threading.Lock()


def settings() -> Settings:
    """The settings of the current environment, parsed and validated once per distinct set of values."""
    snapshot = tuple(os.environ.get(spec.env) for spec in FIELDS)
    found = _CACHE.get(snapshot)
    if found is not None:
        return found
    parsed = parse_settings(dict(zip((spec.env for spec in FIELDS), snapshot)))  # the values keyed on
    with _CACHE_LOCK:
        if len(_CACHE) >= 64:  # tests change the variables often; keep the cache small
            _CACHE.clear()
        _CACHE[snapshot] = parsed
    return parsed


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``SCD_*`` variables that are set but mean nothing here (a typo, or a setting that was removed)."""
    environ = os.environ if environ is None else environ
    return sorted(k for k in environ if k.startswith("SCD_") and k not in FIELD_BY_ENV)


_WARNED: set[tuple[str, ...]] = set()


def check_environment() -> Settings:
    """Validate the settings at start-up (raises ScdError) and warn, once, about unknown ``SCD_*`` variables."""
    unknown = tuple(unknown_variables())
    if unknown and unknown not in _WARNED:
        _WARNED.add(unknown)
        LOGGER.warning("unknown settings ignored: %s (known: %s)", ", ".join(unknown),
                       ", ".join(f.env for f in FIELDS if f.env.startswith("SCD_")))
    return settings()


def markdown_table() -> str:
    """The README's configuration table: variable, default, accepted values and meaning."""
    rows = ["| variable | default | accepted | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.env}` | {f.describe_default()} | {f.accepted} | {f.meaning} |" for f in FIELDS]
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the README table
    print(markdown_table())


def worker_environment(import_path: str | None = None) -> dict[str, str]:
    """Variables a worker process started for this one must see: every setting of :data:`FIELDS` that is set,
    ``HF_HUB_OFFLINE``, and a ``PYTHONPATH`` that starts with ``import_path`` (where this project is)."""
    env = {spec.env: os.environ[spec.env] for spec in FIELDS if os.environ.get(spec.env)}
    if os.environ.get("HF_HUB_OFFLINE"):
        env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    path = [p for p in (import_path, os.environ.get("PYTHONPATH")) if p]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    return env
