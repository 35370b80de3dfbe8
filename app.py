"""Entry point and home page: ``streamlit run app.py``.

``app.py`` sets up the session and the sidebar (device in use, target set, runs in progress), declares
the pages and renders the home page: choose the target set (a demo world, an uploaded .zip, or a folder
on the server when the operator allows it) and look at it. The other pages (Teachers, Ranking, Transport
plans, Distill) live in ``pages/``; the engine they call is ``scd_core``.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import ui
from scd_core import ScdError
from scd_core.assess.relatedness import repository_relatedness
from scd_core.data.targets import SPLITS, TargetSet
from scd_core.demo.worlds import WORLDS, world_description
from scd_core.runtime.session import load_uploaded_target, server_paths_allowed
from scd_core.sources import parse_source

DEMO, UPLOAD, FOLDER = "Demo world", "Upload a .zip", "Server folder"


def _choose_demo(current: str) -> None:
    world_now = ui.demo_world_of(current) or ui.default_world()
    world = st.selectbox("Demo world", WORLDS, index=WORLDS.index(world_now) if world_now in WORLDS else 0,
                         key="w_demo_world", help="Built-in worlds with known good and bad teachers.")
    if current != ui.demo_spec(world):
        ui.set_target(ui.demo_spec(world), ui.demo_label(world))
        if ui.teacher_sources().demo is not None:  # the demo zoo follows the demo world
            ui.set_demo_zoo(world)
    with st.expander(f"About the demo world '{world}'", expanded=False):
        st.markdown(world_description(world))


def _choose_upload(current: str) -> None:
    st.markdown(
        "A **.zip** of an ImageFolder (`<class>/<image>`, optionally `train/`, `val/`, `test/` split folders and "
        "an `unlabeled/` folder) or of images with a CSV `path,label[,split]`."
    )
    st.caption(ui.upload_limits())
    upload = st.file_uploader("Target set (.zip)", type=["zip"], key="w_target_upload")
    if upload is None:
        if not current.endswith(".zip"):
            st.info("No upload yet: the current target set stays as it is.")
        return
    signature = (upload.name, upload.size, getattr(upload, "file_id", ""))
    if st.session_state.get("upload_signature") != signature:  # a new file: check it once
        st.session_state["upload_signature"] = signature
        st.session_state.pop("upload_error", None)
        bar = st.progress(0.0, text=f"Checking {upload.name}…")
        try:
            loaded = load_uploaded_target(ui.session_id(), upload.name, upload.getvalue(),
                                          progress=ui.progress_callback(bar))
        except Exception as exc:
            st.session_state["upload_error"] = ui.error_message(exc)
        else:
            ui.keep_loaded_target(loaded)  # validated once: the page below does not check every image again
            ui.set_target(loaded.source, f"upload '{upload.name}'")
        finally:
            bar.empty()
    if st.session_state.get("upload_error"):
        st.error(f"Upload refused: {st.session_state['upload_error']}", icon=":material/block:")


KEEP = "keep the current teachers"


def _use_zoo() -> None:
    """Selectbox callback: pair the target with the chosen demo zoo, then show 'keep' again."""
    choice = st.session_state.get("w_upload_zoo", KEEP)
    if choice != KEEP:
        ui.set_demo_zoo(choice)
    st.session_state["w_upload_zoo"] = KEEP


def _teachers_for_upload(target: TargetSet) -> None:
    """Right under an upload: which teacher repository it will be ranked against, a choice of demo zoo, and a
    warning when that repository looks unrelated to the uploaded classes (an upload used to pair silently
    with the demo zoo of coloured shapes)."""
    sources = ui.teacher_sources()
    collected = ui.collected_teachers()
    repo = collected.repository
    count = f" ({len(repo.names)} teachers)" if repo is not None else " (empty)"
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    with left:
        st.markdown(f"**Teachers for this target:** {ui.repository_label(sources)}{count}. Change them here or on "
                    "the **Teachers** page.")
    with right:
        ui.init_widget("w_upload_zoo", KEEP)
        st.selectbox("Teacher repository", [KEEP, *WORLDS], key="w_upload_zoo", on_change=_use_zoo,
                     format_func=lambda w: w if w == KEEP else f"demo zoo '{w}'",
                     help="The demo zoos are small teachers trained on the demo worlds' images; add your own "
                          "teachers (a zip, a hub name) on the Teachers page.")
    if repo is None:
        return
    verdict = repository_relatedness(target.class_names, {s.name: s.label_names for s in repo.specs})
    if verdict.unrelated:
        st.warning(f"**The teachers look unrelated to your classes**: no teacher of {ui.repository_label(sources)} "
                   f"has a label name in common with {', '.join(target.class_names[:6])}"
                   + ("…" if target.num_classes > 6 else "") + " (compared by label name only, before any forward "
                   "pass). A ranking still works, but the best of unrelated teachers may not help: add teachers "
                   "trained on images like yours on the **Teachers** page.", icon=":material/warning:")


def _choose_folder() -> None:
    folder = st.text_input("Folder, .zip or .csv on the server", key="w_target_folder", placeholder="/data/my_target")
    if st.button("Use this path", key="w_target_folder_use") and folder.strip():
        try:
            ui.load_target_spec(folder.strip())
        except ScdError as exc:
            ui.show_error(exc, "Cannot use this folder: ")
        else:
            ui.set_target(folder.strip(), f"server path '{folder.strip()}'")


def _show_target(target: TargetSet) -> None:
    st.header(f"Target set: {st.session_state.get('target_label', target.name)}")
    summary = target.summary()
    cols = st.columns(5)
    cols[0].metric("classes", summary["num_classes"])
    cols[1].metric("labeled + unlabeled images", summary["num_images"])
    for col, split in zip(cols[2:], SPLITS):
        col.metric(f"{split} images", summary["splits"].get(split, 0))
    notes = []
    if summary["splits"].get("unlabeled"):
        notes.append(f"{summary['splits']['unlabeled']} unlabeled images (distillation uses them through the teacher).")
    if not target.split_given:
        notes.append("No split was given: a seeded stratified split holds out a validation part.")
    notes.append(f"Teacher assessment uses the {len(target.assessment_items)} labeled train and val images; test "
                 "images only report the accuracy of distilled students.")
    st.caption(" ".join(notes))
    for warning in target.warnings:
        st.warning(warning, icon=":material/warning:")

    counts = pd.DataFrame(target.counts()).T.reindex(columns=list(SPLITS))
    counts.index.name = "class"
    counts["total"] = counts.sum(axis=1)
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.subheader("Images per class and split")
        st.dataframe(counts, width="stretch")
    with right:
        st.subheader("Samples")
        shown = st.multiselect("Classes to show", target.class_names, default=target.class_names[:6],
                               key=f"w_thumb_classes_{target.fingerprint[:12]}")
        for index, name in enumerate(target.class_names):
            if name in shown:
                st.markdown(f"**{name}**")
                ui.thumbnails([it.path for it in target.items if it.label == index][:8], per_row=8, width=64)
        unlabeled = target.split("unlabeled")[:8]
        if unlabeled:
            st.markdown("**unlabeled**")
            ui.thumbnails([it.path for it in unlabeled], per_row=8, width=64)
    st.divider()
    st.page_link("pages/teachers.py", label="Next: the teachers", icon=":material/arrow_forward:")


def target_page() -> None:
    """Home: choose the target set and show its classes, counts and sample images."""
    st.title(ui.APP_TITLE)
    st.markdown(
        "Rank a repository of pre-trained classifiers (**teachers**) for your small labeled image set (the "
        "**target**) with one forward pass each, see how each teacher's labels map onto yours through optimal "
        "transport, and distill the chosen teacher into a small student. Start with a demo world or bring your own "
        "images, then walk through **Teachers → Ranking → Transport plans → Distill** in the sidebar."
    )
    sources = [DEMO, UPLOAD] + ([FOLDER] if server_paths_allowed() else [])
    current = ui.target_spec()
    default = 0 if parse_source(current)[0] == "demo" else 1 if current.endswith(".zip") else len(sources) - 1
    source = st.radio("Target set", sources, index=min(default, len(sources) - 1), horizontal=True,
                      key="w_target_source")
    if source == DEMO:
        _choose_demo(current)
    elif source == UPLOAD:
        _choose_upload(current)
    else:
        _choose_folder()
    target = ui.current_target()
    if target is not None:
        if source == UPLOAD and ui.target_spec().lower().endswith(".zip"):
            _teachers_for_upload(target)
        _show_target(target)


ui.setup_app()
page = st.navigation([
    st.Page(target_page, title="Target set", icon=":material/target:", default=True),
    st.Page("pages/teachers.py", title="Teachers", icon=":material/school:"),
    st.Page("pages/ranking.py", title="Ranking", icon=":material/leaderboard:"),
    st.Page("pages/transport_plans.py", title="Transport plans", icon=":material/grid_on:"),
    st.Page("pages/distill.py", title="Distill", icon=":material/science:"),
])
ui.open_requested_page()
try:
    page.run()
except Exception as exc:  # st.stop and st.rerun are BaseExceptions and pass through
    ui.show_error(exc)
finally:  # also after st.stop() and reruns: the session's state is saved for a reload or a bookmark
    ui.save_session()
    ui.refresh_sidebar(last=True)  # after the page: the target and teachers it may just have changed
