"""Per-session workspace for the app: uploads, uploaded teachers, runs, and the session's teacher sources.

Every browser session gets a folder ``<workspace>/sessions/<session_id>/`` (``uploads/``, ``targets/``,
``teachers/``, ``runs/``), so two sessions never see each other's files. Uploads are validated before
they are kept: a target zip goes through :func:`scd_core.data.targets.load_target`, a teacher zip must hold
one teacher folder with ``config.json`` and ``model.safetensors`` (pickled weights are refused in
uploads) whose weights actually fit the configured architecture. A refused upload leaves nothing
behind. Nothing here imports streamlit.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from scd_core.config import settings
from scd_core.data.archives import ArchiveLimits, safe_extract_zip, single_top_folder
from scd_core.data.targets import TargetSet, extraction_dir, load_target
from scd_core.errors import ScdError, TargetSetError, TeacherError
from scd_core.fingerprint import bytes_sha256
from scd_core.progress import ProgressFn, emit
from scd_core.runtime.workspace import enforce_limit, subdir, workspace_dir
from scd_core.sources import demo_source, open_repository
from scd_core.teachers.repository import (
    CONFIG_NAME,
    SAFETENSORS_NAME,
    TeacherRepository,
    TeacherSpec,
    load_teacher,
    spec_from_folder,
)

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PICKLE_SUFFIXES = frozenset({".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".onnx"})


def new_session_id() -> str:
    """A new session id: 192 random bits (URL-safe), so ids cannot be guessed from one another."""
    return secrets.token_urlsafe(24)


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
        raise ScdError(f"invalid session id {session_id!r}")
    return session_id


def session_dir(session_id: str, *parts: str) -> Path:
    """``<workspace>/sessions/<session_id>/<parts...>``, created on demand."""
    return subdir("sessions", check_session_id(session_id), *parts)


def remove_session(session_id: str) -> None:
    """Delete everything a session uploaded or produced (called when its browser is gone)."""
    folder = workspace_dir() / "sessions" / check_session_id(session_id)
    shutil.rmtree(folder, ignore_errors=True)


STATE_NAME = "state.pkl"
LOGGER = logging.getLogger(__name__)


def save_session_state(session_id: str, state: dict, previous: str | None = None) -> str:
    """Save a session's page state (target set, teachers, rankings) in its folder; returns its digest.

    Nothing is written when the digest equals ``previous``. The file is written whole and renamed into
    place. It is pickled: it only ever holds what this server put there, in the session's own folder.
    """
    try:
        data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an entry that cannot be saved must not break the page
        LOGGER.warning("session state not saved: %s", exc)
        return previous or ""
    digest = hashlib.sha256(data).hexdigest()
    if digest != previous:
        folder = session_dir(session_id)
        tmp = Path(tempfile.mkstemp(prefix=f".{STATE_NAME}.", suffix=".part", dir=folder)[1])
        try:
            tmp.write_bytes(data)
            tmp.replace(folder / STATE_NAME)
        finally:
            tmp.unlink(missing_ok=True)
    return digest


def load_session_state(session_id: str) -> dict:
    """The page state saved for ``session_id`` ({} when none, or when it cannot be read)."""
    path = workspace_dir() / "sessions" / check_session_id(session_id) / STATE_NAME
    try:
        state = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except Exception as exc:  # e.g. written by an older version whose classes changed
        LOGGER.warning("session state of %s not restored: %s", session_id, exc)
        return {}
    return state if isinstance(state, dict) else {}


def server_paths_allowed() -> bool:
    """Whether the operator lets users name folders on the server (``SCD_ALLOW_SERVER_PATHS=1``)."""
    return settings().allow_server_paths


def configured_teacher_folders() -> list[str]:
    """Teacher repositories the operator configured (``SCD_TEACHERS``, paths separated by ``os.pathsep``)."""
    return list(settings().teachers)


def _safe_name(name: str, default: str = "upload") -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem, flags=re.UNICODE).strip("._")[:64]
    return stem or default


UPLOAD_HASH_DIGITS = 12  # the content hash that save_upload appends to a stored upload's name


def upload_stem(name: str) -> str:
    """The user's name of a stored upload: ``pets-3f2a9c1b0d4e`` (or ``pets-3f2a9c1b0d4e.zip``) -> ``pets``;
    the inverse of :func:`save_upload`'s naming, any other name unchanged."""
    stem = name[:-4] if name.lower().endswith(".zip") else name
    return re.sub(rf"-[0-9a-f]{{{UPLOAD_HASH_DIGITS}}}$", "", stem)


def save_upload(session_id: str, filename: str, data: bytes, kind: str = "targets",
                error: type[ScdError] = ScdError) -> Path:
    """Keep an uploaded .zip in the session's folder, named by its content hash (same bytes, same file)."""
    if Path(filename).suffix.lower() != ".zip":
        raise error(f"{filename}: upload a .zip archive")
    if not data:
        raise error(f"{filename}: the file is empty")
    folder = session_dir(session_id, "uploads", kind)
    path = folder / f"{_safe_name(filename)}-{bytes_sha256(data)[:UPLOAD_HASH_DIGITS]}.zip"
    if not path.exists():
        tmp = Path(tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)[1])
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _upload_message(exc: BaseException, filename: str, paths: list[Path], stored_name: str = "") -> str:
    """The error's message with the server's folders (and the stored archive's name) replaced by the
    upload's name."""
    message = str(exc)
    for path in sorted(paths, key=lambda p: -len(str(p))):
        for variant in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
            message = message.replace(variant, filename)
    if stored_name and message.startswith(stored_name):
        message = filename + message[len(stored_name):]
    if filename not in message:
        message = f"{filename}: {message}"
    return message


def load_uploaded_target(session_id: str, filename: str, data: bytes, *,
                         limits: ArchiveLimits | None = None, progress: ProgressFn | None = None) -> TargetSet:
    """Save, extract and validate an uploaded target zip; on any problem remove what was written.

    The error message names the file inside the upload (``pets.zip/cat/3.png: ...``), never the
    server's folders. ``limits`` default to :meth:`ArchiveLimits.from_env`. ``progress`` hears the
    extraction and the check of every image, with fractions that only grow (a 30,000-image upload takes
    minutes on a small server: the user sees it move).
    """
    emit(progress, f"saving {filename}", 0.0, "save")
    path = save_upload(session_id, filename, data, "targets", TargetSetError)
    extract_dir = session_dir(session_id, "targets")
    dest = extraction_dir(path, extract_dir)
    existed = dest.exists()
    try:
        target = load_target(path, extract_dir=extract_dir, limits=limits, progress=progress)
    except BaseException as exc:
        if not existed:
            shutil.rmtree(dest, ignore_errors=True)
            path.unlink(missing_ok=True)
        if isinstance(exc, ScdError):  # names the file inside the upload, not the server's folders
            raise type(exc)(_upload_message(exc, filename, [dest, path, path.parent], path.name)) from exc
        raise
    target.name = Path(filename).stem
    enforce_limit(keep=(dest, path))
    return target


# ------------------------------------------------------------------------------------------------
# Uploaded teachers
# ------------------------------------------------------------------------------------------------


def _teacher_folder_in(root: Path) -> Path:
    folder = single_top_folder(root)
    if (folder / CONFIG_NAME).is_file():
        return folder
    configs = sorted(p.parent for p in root.rglob(CONFIG_NAME))
    if len(configs) == 1:
        return configs[0]
    if not configs:
        raise TeacherError(f"no {CONFIG_NAME} in the archive (a teacher folder holds config.json and "
                           f"{SAFETENSORS_NAME})")
    raise TeacherError("the archive holds several teacher folders; upload one teacher per zip")


def check_uploaded_teacher_files(folder: Path, archive_name: str) -> None:
    """Uploaded teachers: safetensors weights only, no other executable or binary payloads."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise TeacherError(f"{archive_name}: {rel} is a pickled or foreign weights file; uploaded teachers "
                               f"must use {SAFETENSORS_NAME} (convert with safetensors.torch.save_file)")
    if not (folder / SAFETENSORS_NAME).is_file():
        raise TeacherError(f"{archive_name}: no {SAFETENSORS_NAME} beside config.json")


def add_uploaded_teacher(session_id: str, filename: str, data: bytes, *, check_weights: bool = True,
                         taken: set[str] | frozenset[str] = frozenset(),
                         limits: ArchiveLimits | None = None) -> TeacherSpec:
    """Validate an uploaded teacher zip and keep it under the session's ``teachers/<name>``.

    The teacher's name is the folder's name inside the zip (the zip's name when config.json sits at
    its root). With ``check_weights`` the weights are loaded into the architecture (strictly), so a
    head that does not match the label names or weights of another model are refused at upload.
    """
    if Path(filename).suffix.lower() != ".zip":
        raise TeacherError(f"{filename}: upload a teacher as a .zip of its folder (config.json + model.safetensors)")
    if not data:
        raise TeacherError(f"{filename}: the file is empty")
    base = session_dir(session_id, "teachers")
    work = Path(tempfile.mkdtemp(prefix=".incoming-", dir=base))
    final: Path | None = None
    try:
        archive = work / "upload.zip"
        archive.write_bytes(data)
        extracted = safe_extract_zip(archive, work / "x", limits, error=TeacherError)
        folder = _teacher_folder_in(extracted)
        check_uploaded_teacher_files(folder, filename)
        name = _safe_name(folder.name if folder != extracted else Path(filename).stem, "teacher")
        if name in taken or (base / name).exists():
            raise TeacherError(f"a teacher named {name!r} is already in the repository; rename the folder "
                               "inside the zip or remove the other teacher first")
        try:
            folder.rename(base / name)
        except OSError as exc:  # the same name was taken meanwhile (a second upload of this session)
            raise TeacherError(f"a teacher named {name!r} is already in the repository") from exc
        final = base / name
        try:
            spec = spec_from_folder(final)
            if check_weights:
                load_teacher(spec, "cpu")
        except ScdError:
            raise
        except Exception as exc:  # e.g. a safetensors header that lies: never a traceback
            raise TeacherError(f"{filename}: cannot use this teacher ({type(exc).__name__}: {exc})") from exc
    except BaseException as exc:
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        if isinstance(exc, ScdError):  # name the upload, not the server's folders
            paths = [p for p in (final, archive, work) if p is not None]
            raise type(exc)(_upload_message(exc, filename, paths, archive.name)) from exc
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    enforce_limit(keep=(final,))
    return spec


def remove_uploaded_teacher(session_id: str, folder: str | Path) -> None:
    """Delete an uploaded teacher folder (only inside the session's ``teachers/``)."""
    base = session_dir(session_id, "teachers").resolve()
    path = Path(folder).resolve()
    if base in path.parents:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The session's teacher repository
# ------------------------------------------------------------------------------------------------


@dataclass
class TeacherSources:
    """Where the session's teachers come from; plain data, kept in the app's session state."""

    demo: str | None = None  # a demo world whose zoo is included
    folders: list[str] = field(default_factory=list)  # configured or server repositories / teacher folders
    uploads: list[str] = field(default_factory=list)  # uploaded teacher folders (session)
    hub: list[str] = field(default_factory=list)  # hf-hub:<repo> names and timm pretrained tags
    hidden: list[str] = field(default_factory=list)  # teacher names removed from view
    demo_size: str | None = None  # the demo zoo's size when not the server's SCD_DEMO_SIZE (a session's choice)

    def key(self) -> tuple:
        return (self.demo, tuple(self.folders), tuple(self.uploads), tuple(self.hub), tuple(self.hidden),
                self.demo_size)


@dataclass
class CollectedTeachers:
    """The session's repository, where each teacher came from, and the sources that failed."""

    repository: TeacherRepository | None
    origin: dict[str, str]
    errors: list[str]
    hidden: list[str]


def collect_teachers(sources: TeacherSources) -> CollectedTeachers:
    """Open every source; a broken source becomes a message, not a failure of the whole repository."""
    from scd_core.teachers.repository import spec_from_hub

    specs: list[TeacherSpec] = []
    origin: dict[str, str] = {}
    errors: list[str] = []

    def add(new: list[TeacherSpec], where: str) -> None:
        for spec in new:
            if spec.name in origin:
                errors.append(f"{where}: teacher {spec.name!r} skipped, the name is already taken "
                              f"({origin[spec.name]})")
                continue
            specs.append(spec)
            origin[spec.name] = where

    if sources.demo:
        try:
            add(open_repository(demo_source(sources.demo, sources.demo_size)).specs, f"demo zoo '{sources.demo}'")
        except ScdError as exc:
            errors.append(str(exc))
    for folder in sources.folders:
        try:
            add(TeacherRepository.from_folder(folder).specs, f"folder {folder}")
        except ScdError as exc:
            errors.append(str(exc))
    for folder in sources.uploads:
        try:
            add([spec_from_folder(folder)], "upload")
        except ScdError as exc:
            errors.append(f"uploaded teacher {Path(folder).name}: {exc}")
    for name in sources.hub:
        try:
            add([spec_from_hub(name)], "hub")
        except ScdError as exc:
            errors.append(str(exc))
    hidden = [s.name for s in specs if s.name in set(sources.hidden)]
    shown = [s for s in specs if s.name not in set(sources.hidden)]
    repo = TeacherRepository(shown, location="session") if shown else None
    return CollectedTeachers(repo, {s.name: origin[s.name] for s in shown}, errors, hidden)


def hub_weights_cached(spec: TeacherSpec) -> bool | None:
    """Whether a hub teacher's weights are in the local HF cache (None when that cannot be told)."""
    if spec.source != "hub":
        return None
    hub_id = spec.location[len("hf-hub:"):] if spec.location.startswith("hf-hub:") else spec.pretrained_cfg.get(
        "hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in (SAFETENSORS_NAME, "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id.split("@")[0], name)
            if isinstance(hit, str):
                return True
        return False
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------
# Downloads
# ------------------------------------------------------------------------------------------------


def zip_folder(folder: str | Path, arcname: str | None = None) -> bytes:
    """A folder as zip bytes (entries under ``arcname/``, default the folder's name); no symlinks followed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScdError(f"{folder} does not exist")
    prefix = arcname or folder.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            zf.write(file, f"{prefix}/{file.relative_to(folder).as_posix()}")
    return buffer.getvalue()
