"""One place that turns a source string into a target set or a teacher repository.

Target sets (:func:`load_target`):

- ``demo:WORLD``: the target set of a built-in demo world (built into the workspace on first use);
  ``demo:WORLD@SIZE`` names a size other than the server's ``SCD_DEMO_SIZE`` (``demo:shapes@small``);
- a folder (ImageFolder layout, optional split folders, or a folder holding one CSV), a ``.zip`` of
  one, or a ``.csv`` with ``path,label[,split]`` columns.

Teacher repositories (:func:`open_repository`):

- ``demo:WORLD`` (or ``demo:WORLD@SIZE``): the world's teacher zoo;
- a folder of teacher folders (or one teacher folder);
- ``hf-hub:<org>/<model>`` or a timm pretrained tag (``resnet18.a1_in1k``);
- a comma-separated list of any of the above but ``demo:``.

:func:`parse_source` splits a string into its kind and value (like timm's ``parse_model_name``); the
loaders below it (:func:`scd_core.data.targets.load_target`,
:class:`scd_core.teachers.repository.TeacherRepository`) only know paths and hub names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scd_core.data.targets import TargetSet
from scd_core.data.targets import load_target as load_target_path
from scd_core.errors import TargetSetError, TeacherError
from scd_core.teachers.repository import CONFIG_NAME, TeacherRepository, TeacherSpec, spec_from_folder, spec_from_hub

__all__ = ["DEMO_PREFIX", "HUB_PREFIX", "as_repository", "as_target", "demo_source", "load_target",
           "open_repository", "parse_source", "split_demo"]

DEMO_PREFIX = "demo:"
HUB_PREFIX = "hf-hub:"


def parse_source(text: str | Path) -> tuple[str, str]:
    """``(kind, value)`` of one source: kind is ``demo``, ``zip``, ``csv``, ``folder``, ``hub`` or ``path``.

    ``path`` is a path that does not exist (the loaders report it); ``hub`` covers ``hf-hub:`` names and
    bare names without a path separator (timm pretrained tags).
    """
    s = str(text).strip()
    if s.startswith(DEMO_PREFIX):
        return "demo", s[len(DEMO_PREFIX):].strip()
    if s.startswith(HUB_PREFIX):
        return "hub", s
    path = Path(s)
    if path.is_dir():
        return "folder", s
    if path.is_file():
        suffix = path.suffix.lower()
        return (suffix[1:] if suffix in (".zip", ".csv") else "path"), s
    if "/" not in s and "\\" not in s and Path(s).suffix.lower() not in (".zip", ".csv"):
        return "hub", s
    return "path", s


def demo_source(world: str, size: str | None = None) -> str:
    """The source string of demo world ``world`` of ``size`` (None: the server's ``SCD_DEMO_SIZE``)."""
    return f"{DEMO_PREFIX}{world}" + (f"@{size}" if size else "")


def split_demo(value: str) -> tuple[str, str | None]:
    """``(world, size)`` of the value of a ``demo:`` source (``shapes@small`` -> ``("shapes", "small")``)."""
    world, _, size = str(value).partition("@")
    return world.strip(), (size.strip() or None)


def _demo_world(value: str) -> Any:
    from scd_core.demo.worlds import ensure_world

    world, size = split_demo(value)
    return ensure_world(world, size=size)


def load_target(source: str | Path, **options: Any) -> TargetSet:
    """The target set named by ``source`` (``demo:WORLD``, a folder, a .zip or a .csv), validated.

    ``options`` go to :func:`scd_core.data.targets.load_target` (``val_fraction``, ``seed``,
    ``extract_dir``, ``limits``).
    """
    kind, value = parse_source(source)
    if kind == "demo":
        world = _demo_world(value)
        target = load_target_path(world.target_dir, **options)
        text = f"{DEMO_PREFIX}{value}"
        target.name, target.source = text, text
        return target
    if kind == "hub":
        raise TargetSetError(f"{source}: no such file or folder (a target set is a folder, a .zip, a .csv or "
                             "demo:WORLD)")
    return load_target_path(value, **options)


def open_repository(source: str | Path) -> TeacherRepository:
    """The teacher repository named by ``source``: ``demo:WORLD``, a folder, hub names, or a comma list."""
    text = str(source).strip()
    if not text:
        raise TeacherError("empty teacher repository")
    kind, value = parse_source(text)
    if kind == "demo":
        return TeacherRepository.from_folder(_demo_world(value).teachers_dir, location=text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and kind == "folder":
        return TeacherRepository.from_folder(value)
    specs: list[TeacherSpec] = []
    for part in parts:
        part_kind, part_value = parse_source(part)
        if part_kind == "folder":
            path = Path(part_value)
            specs.extend([spec_from_folder(path)] if (path / CONFIG_NAME).is_file()
                         else TeacherRepository.from_folder(path).specs)
        elif part_kind == "hub":
            specs.append(spec_from_hub(part_value))
        elif part_kind == "demo":
            raise TeacherError(f"{part!r}: a demo zoo cannot be combined with other teachers in one list")
        else:
            raise TeacherError(f"teacher repository {part!r} does not exist")
    return TeacherRepository(specs, location=text)


def as_target(target: TargetSet | str | Path) -> TargetSet:
    """``target`` itself when already loaded, else :func:`load_target` of it."""
    return target if isinstance(target, TargetSet) else load_target(target)


def as_repository(repo: TeacherRepository | str | Path) -> TeacherRepository:
    """``repo`` itself when already opened, else :func:`open_repository` of it."""
    return repo if isinstance(repo, TeacherRepository) else open_repository(repo)
