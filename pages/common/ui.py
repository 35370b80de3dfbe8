"""What every page shares: page setup and sidebar, the session, the current target set and teachers,
cached engine calls and error display. The engine work itself lives in ``scd_core``.

The session id lives in the URL (``?s=<id>``): a reload or a bookmarked link returns to the same
uploads, rankings, runs and students. Jobs live in the job store (:mod:`scd_core.runtime.store`) and run
in worker processes; the pages only read the store.

State kept in ``st.session_state`` (plain data, per browser session; the entries of
:data:`PERSISTED_KEYS` are saved with the session after every page run and restored from its link):

- ``scd_session``: the session id naming ``<workspace>/sessions/<id>/`` and the session's jobs;
- ``target_spec`` / ``target_label``: the current target set (``demo:WORLD``, an uploaded zip, a folder);
- ``teacher_sources``: a :class:`scd_core.runtime.session.TeacherSources`;
- ``rankings``: computed rankings by settings key; ``best_teacher``: the top of the last ranking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from pages.common.cluster import sidebar_cluster
from scd_core import ScdError
from scd_core.config import check_environment, settings
from scd_core.incidents import user_message
from scd_core.progress import ProgressEvent, ProgressFn
from scd_core.runtime.jobs import (
    SHARED_SESSION,
    Dispatcher,
    JobStatus,
    JobStore,
    default_dispatcher,
    default_store,
    demo_build_key,
    submit_demo_build,
)
from scd_core.runtime.session import (
    TeacherSources,
    check_session_id,
    collect_teachers,
    configured_teacher_folders,
    load_session_state,
    new_session_id,
    save_session_state,
    session_dir,
    upload_stem,
)

APP_TITLE = "Selective cross-task distillation explorer"
SESSION_PARAM = "s"
"""The URL query parameter carrying the session id (a reload or a bookmark returns to the session)."""
PERSISTED_KEYS = ("target_spec", "target_label", "teacher_sources", "rankings", "last_ranking_key", "best_teacher",
                  "best_teacher_fp", "demo_size")
"""Session-state entries saved with the session, restored when its link is opened again."""
RESTORED_WIDGETS = (
    "w_dist_teachers", "w_dist_methods", "w_dist_student", "w_dist_epochs", "w_dist_batch", "w_dist_seed",
    "w_dist_seeds", "w_dist_lr", "w_dist_weight", "w_dist_weighting", "w_dist_temp", "w_dist_folds",
    "w_dist_unlabeled",
    "w_rank_teachers", "w_rank_metrics", "w_rank_budget_on", "w_rank_budget", "w_rank_by",
    "w_plan_teacher", "w_plan_kind", "w_plan_cost", "w_plan_eps", "w_plan_order", "w_plan_class",
    "w_plan_topk", "w_plan_image_class", "w_plan_image",
    "w_validate_top", "w_validate_seeds", "w_validate_epochs",
)
"""Form and choice widgets whose values are saved with the session, so a reload finds the forms as they were
(the pages drop a restored value that is no longer among their options, or clamp it into their range). Exactly
the widgets created with ``**PERSIST`` (a test keeps the two in step). Buttons and uploaders cannot be set."""
WIDGETS_KEY = "widgets"
TOUCH_EVERY_S = 30.0


# ------------------------------------------------------------------------------------------------
# Session, jobs, device
# ------------------------------------------------------------------------------------------------


def job_store() -> JobStore:
    """The workspace's job store (every page reads jobs from it)."""
    return default_store()


def dispatcher() -> Dispatcher:
    """This server's dispatcher (started on first use): it runs queued jobs in worker processes."""
    return default_dispatcher()


def session_id() -> str:
    """This browser session's id: taken from the URL (``?s=...``) when that session exists, else a new one.

    An unknown or expired id in the URL is not adopted (nobody can choose an id and share it); the
    user gets a new session and a note saying so.
    """
    sid = st.session_state.get("scd_session")
    store = job_store()
    now = time.time()
    stale = now - st.session_state.get("_scd_touched", 0.0) > TOUCH_EVERY_S
    if sid is not None and stale and not store.session_exists(sid):  # expired while the tab stayed open
        st.session_state["session_notice"] = "This session had expired; a new one was started."
        for key in (*PERSISTED_KEYS, "scd_session"):
            st.session_state.pop(key, None)
        sid = None
    if sid is None:
        wanted = st.query_params.get(SESSION_PARAM)
        if wanted and _known_session(store, wanted):
            sid = wanted
            for key, value in load_session_state(sid).items():
                if key in PERSISTED_KEYS:
                    st.session_state[key] = value
                elif key == WIDGETS_KEY and isinstance(value, dict):
                    for name, widget_value in value.items():
                        if name in RESTORED_WIDGETS:
                            st.session_state[name] = widget_value
        else:
            if wanted:
                st.session_state["session_notice"] = ("The session in this link is unknown or has expired; a new "
                                                      "session was started.")
            sid = new_session_id()
            store.create_session(sid)
        st.session_state["scd_session"] = sid
        st.session_state["_scd_saved"] = None
    if now - st.session_state.get("_scd_touched", 0.0) > TOUCH_EVERY_S:
        store.touch_session(sid)
        st.session_state["_scd_touched"] = now
    if st.query_params.get(SESSION_PARAM) != sid:
        st.query_params[SESSION_PARAM] = sid
    return sid


def _known_session(store: JobStore, sid: str) -> bool:
    try:
        check_session_id(sid)
    except ScdError:
        return False
    return sid != SHARED_SESSION and store.session_exists(sid)


def save_session() -> None:
    """Save the persisted session-state entries when they changed (called after every page run)."""
    sid = st.session_state.get("scd_session")
    if sid is None:
        return
    state = {k: st.session_state[k] for k in PERSISTED_KEYS if k in st.session_state}
    state[WIDGETS_KEY] = {k: st.session_state[k] for k in RESTORED_WIDGETS if k in st.session_state}
    digest = save_session_state(sid, state, previous=st.session_state.get("_scd_saved"))
    st.session_state["_scd_saved"] = digest


def device() -> str:
    """The device engine calls use: ``$SCD_DEVICE`` or ``auto`` (cuda, then mps, then cpu)."""
    return settings().device


@st.cache_resource(show_spinner=False)
def device_label(name: str) -> str:
    from scd_core.device import describe_device, resolve_device

    try:
        return describe_device(resolve_device(name))
    except ScdError as exc:
        return f"unavailable: {exc}"


PERSIST: dict[str, Any] = {"persist_state": "session"}
"""Keyword arguments keeping a widget's value across page switches (``key`` required)."""


def error_message(exc: BaseException) -> str:
    """What the user is told: an ScdError's message, or for any other exception (a bug) a short note with
    the id under which its traceback was logged (never the exception's own text)."""
    return user_message(exc)


def show_error(exc: BaseException, prefix: str = "") -> None:
    """Show :func:`error_message` of ``exc`` (after ``prefix``) as an error box."""
    message = error_message(exc)
    st.error(f"{prefix}{message}" if prefix else message, icon=":material/block:")


FRAME_FLAG = "_scd_frame"  # set by app.py on every run: this session's pages run inside the app's frame
_OPEN_AFTER_FRAME = "_scd_open"


def through_app(page: str) -> None:
    """Serve ``page`` inside the app's frame (sidebar, session, settings check).

    A deep link to a page of a server that has not run ``app.py`` yet is served by Streamlit's legacy
    ``pages/`` mode, which runs the page alone; such a run goes through ``app.py`` first, which then
    opens the page again with the same link parameters (the session id among them).
    """
    if st.session_state.get(FRAME_FLAG):
        return
    st.session_state[_OPEN_AFTER_FRAME] = page
    st.switch_page("app.py", query_params=st.query_params.to_dict())


def open_requested_page() -> None:
    """Called by ``app.py`` once ``st.navigation`` is set up: open the page a deep link asked for."""
    st.session_state[FRAME_FLAG] = True
    page = st.session_state.pop(_OPEN_AFTER_FRAME, None)
    if page:
        st.switch_page(page, query_params=st.query_params.to_dict())


_SIDEBAR = threading.local()  # this script run's sidebar slot (each browser session's run is one thread)


def setup_app() -> None:
    """Run by ``app.py`` before every page: page config, settings check, session registration and the sidebar.

    The sidebar's target and teachers lines are a slot that :func:`refresh_sidebar` fills again after the
    page ran (``app.py``) or before it stops (:func:`ensure_demo`): they then name what the page may just have
    changed (an upload, a demo world). Nothing can be written once ``st.stop()`` was called."""
    st.set_page_config(page_title="SCD explorer", page_icon=":material/hub:", layout="wide")
    try:
        check_environment()
    except ScdError as exc:  # the operator's configuration: nothing works until it is fixed
        show_error(exc, "The server's configuration is invalid: ")
        st.stop()
    session_id()
    dispatcher()
    notice = st.session_state.pop("session_notice", None)
    if notice:
        st.toast(notice, icon=":material/info:")
    _sidebar()


def _sidebar() -> None:
    with st.sidebar:
        st.markdown(f"**Device in use:** `{device_label(device())}`")
        sidebar_cluster()
        _SIDEBAR.slot = st.empty()
        refresh_sidebar()  # as it stands now; filled again after the page (see setup_app)
        _sidebar_jobs()


def refresh_sidebar(last: bool = False) -> None:
    """Write the sidebar's target set and teacher repository lines as they stand now; ``last``: at the end of
    the run (the slot is forgotten first, so a later run never writes into this run's element)."""
    slot = getattr(_SIDEBAR, "slot", None)
    if last:
        _SIDEBAR.slot = None
    if slot is not None:
        fill_sidebar(slot)


def repository_label(sources: TeacherSources | None) -> str:
    """The session's teacher repository in words: ``demo zoo 'shapes' + 2 more``."""
    if sources is None:
        return "none yet"
    others = len(sources.uploads) + len(sources.hub) + len(sources.folders)
    if sources.demo:
        return f"demo zoo '{sources.demo}'" + (f" + {others} more" if others else "")
    return f"{others} teacher source{'s' if others != 1 else ''}" if others else "none"


def fill_sidebar(slot) -> None:
    """Write the target set and teacher repository lines of the sidebar into ``slot`` (an ``st.empty``)."""
    with slot.container():
        label = target_label()
        if label:
            st.markdown(f"**Target set:** {label}")
        if label:
            st.caption(f"Teachers: {repository_label(teacher_sources())}")


def _sidebar_jobs() -> None:
    store = job_store()
    sid = session_id()
    was_active = any(j.active for j in store.jobs(sid, history=False))

    def panel() -> None:
        jobs = store.jobs(sid, kind="distill", history=False)
        active = [j for j in jobs if j.active]
        if active:
            running = sum(j.status != JobStatus.QUEUED for j in active)
            st.markdown(f"**Runs: {running} running, {len(active) - running} queued**")
            for job in active[:5]:
                st.progress(job.progress, text=f"{job.label}: {job.status}")
        elif jobs:
            done = sum(j.status == JobStatus.FINISHED for j in jobs)
            st.caption(f"Runs this session: {len(jobs)} ({done} finished)")
        st.caption("Bookmark this page's address to come back to this session.")
        if was_active and not any(j.active for j in store.jobs(sid, history=False)):
            st.rerun(scope="app")

    with st.sidebar:
        st.fragment(panel, run_every="2s" if was_active else None)()


# ------------------------------------------------------------------------------------------------
# Demo worlds (built in the background on first use)
# ------------------------------------------------------------------------------------------------


def demo_size() -> str:
    """The demo worlds' size in this session: the server's ``SCD_DEMO_SIZE``, unless the session chose the small
    version on the build notice."""
    return st.session_state.get("demo_size") or settings().demo_size


def session_demo_size() -> str | None:
    """The session's demo size when it differs from the server's (it then travels in the source strings)."""
    size = demo_size()
    return None if size == settings().demo_size else size


def demo_spec(world: str) -> str:
    """This session's source string of demo world ``world`` (``demo:shapes``, or ``demo:shapes@small``)."""
    from scd_core.sources import demo_source

    return demo_source(world, session_demo_size())


def demo_label(world: str) -> str:
    return f"demo world '{world}'" + (f" ({demo_size()} version)" if session_demo_size() else "")


def set_demo_zoo(world: str | None) -> None:
    """Use demo world ``world``'s teacher zoo (of this session's size); None: no demo zoo."""
    sources = teacher_sources()
    sources.demo = world
    sources.demo_size = session_demo_size() if world else None
    clear_teacher_cache()


def default_world() -> str:
    return settings().demo_world


def demo_world_ready(world: str, size: str | None = None) -> bool:
    from scd_core.demo.worlds import MANIFEST_NAME, world_dir

    return (world_dir(world, size or demo_size()) / MANIFEST_NAME).is_file()


def demo_world_of(spec: str) -> str | None:
    """The demo world a target spec names (``demo:shapes`` -> ``shapes``), None for any other target."""
    from scd_core.sources import parse_source, split_demo

    kind, value = parse_source(spec)
    return split_demo(value)[0] if kind == "demo" else None


def _use_small_demo() -> None:
    """Build-notice button: this session switches to the small demo worlds (built in seconds)."""
    st.session_state["demo_size"] = "small"
    world = demo_world_of(target_spec())
    if world is not None:
        set_target(demo_spec(world), demo_label(world))
    sources = teacher_sources()
    if sources.demo:
        set_demo_zoo(sources.demo)


def ensure_demo(world: str, size: str | None = None) -> None:
    """Return when demo world ``world`` (of ``size``, default this session's) is built; otherwise build it in
    the background, show its progress (the page reruns by itself when the world is ready) and stop the page here.

    Once a world is ready, the other demo worlds are queued to be built ahead of need at the lowest priority
    (``SCD_DEMO_PREBUILD``), so a later switch of world does not wait."""
    from scd_core.demo.worlds import BUILD_SECONDS

    size = size or demo_size()
    if demo_world_ready(world, size):
        _prebuild_other_worlds(size)
        return
    store = job_store()
    key = demo_build_key(world, size)
    job = store.find(SHARED_SESSION, key)
    if job is None or job.status != JobStatus.FAILED:
        submit_demo_build(store, world, size)  # joins a build in progress; one built ahead of need moves up
        dispatcher().kick()

    quiet, busy = BUILD_SECONDS.get(size, BUILD_SECONDS["full"])
    st.info(f"Building the demo world **{world}** ({size} version, first use only): drawing the target set and "
            f"training its teacher zoo on this machine. Measured on 2 CPU cores: about {_duration(quiet)} when "
            f"the machine is quiet, up to {_duration(busy)} when it is busy. The page continues by itself when it "
            "is ready.", icon=":material/construction:")
    if size != "small":
        small_quiet, small_busy = BUILD_SECONDS["small"]
        st.button(f"Build the small version instead (about {small_quiet}-{small_busy} s: fewer images, teachers "
                  "partly trained)", key=f"w_demo_small_{world}", on_click=_use_small_demo,
                  help="For this session only; the full version keeps building for later.")

    def poll() -> None:
        current = store.find(SHARED_SESSION, key)
        if current is None or demo_world_ready(world, size) or current.status == JobStatus.FINISHED:
            st.rerun(scope="app")
        if not current.active:
            st.error(f"Building the demo world failed: {current.error or current.status}")
            if st.button("Try again", key=f"retry-{key}"):
                store.forget(current.id)
                st.rerun(scope="app")
            return
        st.progress(current.progress, text=current.message)

    st.fragment(poll, run_every="1s")()
    refresh_sidebar()  # the page may have just chosen this world: the sidebar says so before the stop
    st.stop()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _prebuild_other_worlds(size: str) -> None:
    """Queue background builds of the demo worlds not built yet (once per session and size)."""
    flag = f"_scd_prebuild_{size}"
    if st.session_state.get(flag) or not settings().demo_prebuild:
        return
    st.session_state[flag] = True
    from scd_core.demo.worlds import WORLDS

    store = job_store()
    queued = False
    for other in WORLDS:
        if demo_world_ready(other, size):
            continue
        job = store.find(SHARED_SESSION, demo_build_key(other, size))
        if job is None or job.status not in (JobStatus.FAILED, JobStatus.FINISHED, *[s for s in JobStatus if s.active]):
            submit_demo_build(store, other, size, background=True)
            queued = True
    if queued:
        dispatcher().kick()


# ------------------------------------------------------------------------------------------------
# Target set
# ------------------------------------------------------------------------------------------------


def _stamp(path: Path) -> str:
    try:
        stat = path.stat()
        return f"{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        return "missing"


@st.cache_resource(show_spinner=False, max_entries=16)
def _load_target_cached(spec: str, extract_dir: str | None, stamp: str):
    from scd_core.sources import load_target

    return load_target(spec, extract_dir=Path(extract_dir) if extract_dir else None)


@st.cache_resource(show_spinner=False)
def _fresh_uploads() -> dict:
    return {}


def keep_loaded_target(target) -> None:
    """Hand a target set validated by an upload to :func:`load_target_spec`, so that it is not validated a
    second time (checking 30,000 images takes minutes)."""
    store = _fresh_uploads()
    if len(store) >= 16:
        store.pop(next(iter(store)))
    store[(target.source, _stamp(Path(target.source)))] = target


def upload_limits() -> str:
    """What an upload may hold, in words, from the server's settings (shown beside the uploaders)."""
    from scd_core.data.images import IMAGE_SUFFIXES

    config = settings()
    formats = " ".join(sorted(IMAGE_SUFFIXES))
    return (f"Limits: a .zip of at most {st.get_option('server.maxUploadSize'):,} MB, holding at most "
            f"{config.archive_max_files:,} files and {config.archive_max_bytes / (1 << 30):.3g} GiB uncompressed; "
            f"images of at most {config.max_image_pixels / 1e6:.0f} megapixels each ({formats}). A large upload "
            "takes a while to check (every image is opened): a progress bar shows how far it is.")


def load_target_spec(spec: str):
    """The validated target set of ``spec`` (cached per spec and file stamp). Raises TargetSetError."""
    from scd_core.sources import parse_source

    kind, value = parse_source(spec)
    if kind == "demo":
        from scd_core.demo.worlds import world_dir
        from scd_core.sources import split_demo

        world, size = split_demo(value)
        size = size or settings().demo_size  # a spec without @size names the server's size
        ensure_demo(world, size)
        return _load_target_cached(spec, None, _stamp(world_dir(world, size)))
    path = Path(spec)
    fresh = _fresh_uploads().get((spec, _stamp(path)))
    if fresh is not None and fresh.items and Path(fresh.items[0].path).exists():
        return fresh
    extract = str(session_dir(session_id(), "targets")) if path.suffix.lower() == ".zip" else None
    target = _load_target_cached(spec, extract, _stamp(path))
    if target.items and not Path(target.items[0].path).exists():
        # the workspace size limit evicted the extracted files: extract again rather than serve a stale set
        _load_target_cached.clear()
        target = _load_target_cached(spec, extract, _stamp(path))
    if extract and path.parent == session_dir(session_id(), "uploads", "targets"):
        target.name = upload_stem(target.name)  # as when it was uploaded, not the stored file's hashed name
    return target


def target_spec() -> str:
    if "target_spec" not in st.session_state:
        world = default_world()
        st.session_state["target_spec"] = demo_spec(world)
        st.session_state["target_label"] = demo_label(world)
    return st.session_state["target_spec"]


def target_label() -> str:
    """The current target set as the user knows it: ``demo world 'shapes'``, ``upload 'pets.zip'``, ..."""
    target_spec()
    return st.session_state.get("target_label") or st.session_state["target_spec"]


def set_target(spec: str, label: str) -> None:
    st.session_state["target_spec"] = spec
    st.session_state["target_label"] = label


def current_target():
    """The session's target set, or None after showing why it cannot be loaded."""
    spec = target_spec()
    try:
        return load_target_spec(spec)
    except ScdError as exc:
        show_error(exc, "The current target set cannot be loaded: ")
        return None


def require_target():
    """The target set; otherwise a message pointing to the home page and the page stops."""
    target = current_target()
    if target is None:
        st.info("Choose another target set on the **Target set** page.")
        st.stop()
    return target


# ------------------------------------------------------------------------------------------------
# Teachers
# ------------------------------------------------------------------------------------------------


def teacher_sources() -> TeacherSources:
    if "teacher_sources" not in st.session_state:
        world = demo_world_of(target_spec()) or default_world()
        st.session_state["teacher_sources"] = TeacherSources(demo=world, folders=configured_teacher_folders(),
                                                             demo_size=session_demo_size())
    return st.session_state["teacher_sources"]


@st.cache_resource(show_spinner=False, max_entries=32, hash_funcs={TeacherSources: lambda s: s.key()})
def _collect_cached(sources: TeacherSources, stamps: tuple):
    return collect_teachers(sources)


def collected_teachers():
    """The session's teachers (:class:`scd_core.runtime.session.CollectedTeachers`), cached per sources."""
    sources = teacher_sources()
    if sources.demo:
        ensure_demo(sources.demo, sources.demo_size or settings().demo_size)
    stamps = tuple(_stamp(Path(p)) for p in (*sources.folders, *sources.uploads))
    copy = TeacherSources(sources.demo, list(sources.folders), list(sources.uploads), list(sources.hub),
                          list(sources.hidden), sources.demo_size)
    return _collect_cached(copy, stamps)


def require_repository():
    """The session's teacher repository; otherwise a message pointing to the Teachers page and stop."""
    collected = collected_teachers()
    for message in collected.errors:
        st.warning(message, icon=":material/warning:")
    if collected.repository is None:
        st.error("No teachers in the repository.")
        st.page_link("pages/teachers.py", label="Add teachers", icon=":material/school:")
        st.stop()
    return collected.repository


def clear_teacher_cache() -> None:
    _collect_cached.clear()


# ------------------------------------------------------------------------------------------------
# Cached engine results
# ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _outputs_store() -> dict:
    return {}


def teacher_outputs(spec, target):
    """Outputs of one teacher on the target's assessment images (engine disk cache + this process)."""
    from scd_core.outputs.forward import teacher_outputs as compute

    key = (target.fingerprint, spec.fingerprint)
    store = _outputs_store()
    if key in store:
        return store[key]
    bar = st.progress(0.0, text=f"Forward pass of {spec.name} over {len(target.assessment_items)} images")
    outputs = compute(spec, target, device=device(), progress=_progress_to(bar))
    bar.empty()
    if len(store) > 64:
        store.pop(next(iter(store)))
    store[key] = outputs
    return outputs


def _progress_to(bar) -> Callable[[float, str], None]:
    last = [0.0]

    def update(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2 or fraction >= 1:
            last[0] = now
            bar.progress(float(min(1.0, max(0.0, fraction))), text=message)

    return update


def progress_callback(bar) -> ProgressFn:
    """A :class:`~scd_core.progress.ProgressFn` that updates ``bar`` at most 5 times a second."""
    legacy = _progress_to(bar)

    def update(event: ProgressEvent) -> None:
        if event.fraction is not None:
            legacy(event.fraction, event.message)

    return update


@st.cache_data(show_spinner=False, max_entries=128)
def plan_matrix(target_fp: str, teacher_fp: str, kind: str, cost: str, eps: float | None, _outputs: Any):
    """A plan, joint or cost matrix of one teacher (cached per fingerprints and options)."""
    from scd_core.ot.plans import plan_from_outputs

    return plan_from_outputs(_outputs, kind, cost=cost, eps=eps)


def init_widget(key: str, value: Any) -> None:
    """Seed a widget's value through session state (widgets whose values persist take no default argument)."""
    if key not in st.session_state:
        st.session_state[key] = value


def valid_choice(key: str, options: Sequence[Any], multi: bool = False) -> None:
    """Drop a remembered widget value that is no longer among the options (e.g. after a target change)."""
    if key not in st.session_state:
        return
    value = st.session_state[key]
    if multi:
        kept = [v for v in (value or []) if v in options]
        if kept != list(value or []):
            st.session_state[key] = kept
    elif value not in options:
        del st.session_state[key]


def valid_range(key: str, low: int, high: int) -> None:
    """Clamp a remembered number into ``[low, high]`` (its widget's range may have changed since it was set);
    drop one that is not a number."""
    if key not in st.session_state:
        return
    value = st.session_state[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        del st.session_state[key]
    else:
        st.session_state[key] = min(max(value, low), high)


def remember_best_teacher(spec) -> None:
    """Record the top of the last ranking (name and fingerprint) for the other pages to preselect."""
    st.session_state["best_teacher"] = spec.name
    st.session_state["best_teacher_fp"] = spec.fingerprint


def best_teacher(repo) -> str | None:
    """The last ranking's best teacher when it is this very teacher of ``repo`` (both demo zoos hold an
    ``untrained`` teacher: a name alone may name another repository's teacher)."""
    name = st.session_state.get("best_teacher")
    if name not in repo.names or st.session_state.get("best_teacher_fp") != repo.get(name).fingerprint:
        return None
    return name


def keep_same_teachers(key: str, repo, multi: bool = False) -> None:
    """Drop a remembered teacher choice of widget ``key`` that now names another teacher or none.

    Names are compared with their fingerprints as they were when the choice was last shown, so after a
    switch of the demo zoo a same-named teacher of the other zoo is not silently kept selected."""
    marker = f"_teachers_of_{key}"
    now = {spec.name: spec.fingerprint for spec in repo.specs}
    before = st.session_state.get(marker)
    st.session_state[marker] = now
    if key not in st.session_state:
        return
    value = st.session_state[key]
    known = before if before is not None else now

    def same(name: Any) -> bool:
        return name in now and known.get(name) == now[name]

    if multi:
        kept = [v for v in (value or []) if same(v)]
        if not kept:
            del st.session_state[key]
        elif kept != list(value or []):
            st.session_state[key] = kept
    elif not same(value):
        del st.session_state[key]


TEACHER_PARAM = "teacher"
"""The URL query parameter by which a "Next" link hands its teacher to the next page."""


def next_page_link(page: str, label: str, teacher: str | None = None) -> None:
    """A "Next: ..." link to ``page`` that opens it with ``teacher`` preselected (and this session)."""
    params = {SESSION_PARAM: session_id()}
    if teacher:
        params[TEACHER_PARAM] = teacher
    st.page_link(page, label=label, icon=":material/arrow_forward:", query_params=params)


def take_linked_teacher(key: str, names: Sequence[str], multi: bool = False) -> str | None:
    """Preselect the teacher a "Next" link named (``?teacher=``) in widget ``key``; the parameter is consumed,
    so the user's later choice is not overridden on the next rerun. Returns the teacher, or None."""
    wanted = st.query_params.get(TEACHER_PARAM)
    if wanted is None:
        return None
    del st.query_params[TEACHER_PARAM]
    if wanted not in names:
        return None
    st.session_state[key] = [wanted] if multi else wanted
    return wanted


def thumbnails(paths: Sequence[Path], captions: Sequence[str] | None = None, per_row: int = 8,
               width: int = 72) -> None:
    """A grid of small images."""
    paths = list(paths)
    for start in range(0, len(paths), per_row):
        cols = st.columns(per_row)
        for i, path in enumerate(paths[start:start + per_row]):
            with cols[i]:
                st.image(str(path), width=width, caption=captions[start + i] if captions else None)
