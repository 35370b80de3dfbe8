"""Teachers: the session's teacher repository (demo zoo, configured folders, uploads, hub names); add and remove."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import ui
from scd_core import ScdError
from scd_core.config import settings
from scd_core.demo.worlds import WORLDS
from scd_core.runtime.session import (
    add_uploaded_teacher,
    hub_weights_cached,
    remove_uploaded_teacher,
    server_paths_allowed,
)
from scd_core.teachers.repository import spec_from_hub

ui.through_app("pages/teachers.py")
st.title("Teachers")
st.markdown(
    "Pre-trained classifiers in the Hugging Face / timm folder layout (`config.json` with `architecture`, "
    "`num_classes`, `label_names`, and `model.safetensors`). Each one is ranked by a single forward pass over "
    "your labeled images."
)

sources = ui.teacher_sources()
collected = ui.collected_teachers()
for message in collected.errors:
    st.warning(message, icon=":material/warning:")

repo = collected.repository
if repo is None:
    st.info("The repository is empty: add teachers below.")
else:
    rows = []
    for spec in repo.specs:
        cached = hub_weights_cached(spec)
        rows.append({
            "teacher": spec.name, "architecture": spec.architecture, "classes": spec.num_classes,
            "description": spec.description, "source": collected.origin.get(spec.name, spec.source),
            "weights": "in HF cache" if cached else ("not in HF cache" if cached is False else "local"),
        })
    st.subheader(f"{len(rows)} teachers")
    table = pd.DataFrame(rows).set_index("teacher")
    # A table cell does not wrap and cut the descriptions off: they are listed in full under the table (the
    # column stays in the data, hidden, for search and tests)
    st.dataframe(table, width="stretch", column_order=[c for c in table.columns if c != "description"],
                 column_config={"classes": st.column_config.NumberColumn("label-space size", format="%d")})
    described = [spec for spec in repo.specs if spec.description]
    if described:
        st.markdown("**What each teacher is**\n\n" + "\n".join(f"- **{spec.name}**: {spec.description}"
                                                              for spec in described))
    with st.expander("Label names of a teacher"):
        ui.valid_choice("w_teacher_labels", repo.names)
        name = st.selectbox("Teacher", repo.names, key="w_teacher_labels")
        labels = repo.get(name).label_names
        st.caption(f"{len(labels)} classes" + (" (first 300 shown)" if len(labels) > 300 else ""))
        st.write(", ".join(labels[:300]))

st.header("Add teachers")
tabs = ["Upload a teacher (.zip)", "Hub name", "Demo zoo"] + (["Server folder"] if server_paths_allowed() else [])
tab_objs = st.tabs(tabs)

with tab_objs[0]:
    st.markdown("A .zip of one teacher folder: `config.json` and `model.safetensors` (pickled `.bin`/`.pth` "
                "weights are refused in uploads). The teacher is named after its folder.")
    st.caption(f"Limits: a .zip of at most {st.get_option('server.maxUploadSize'):,} MB. Large heads are refused "
               f"above {settings().max_teacher_classes:,} classes.")
    upload = st.file_uploader("Teacher (.zip)", type=["zip"], key="w_teacher_upload")
    if upload is not None:
        signature = (upload.name, upload.size, getattr(upload, "file_id", ""))
        if st.session_state.get("teacher_upload_signature") != signature:
            st.session_state["teacher_upload_signature"] = signature
            st.session_state.pop("teacher_upload_message", None)
            try:
                with st.spinner(f"Checking {upload.name}…"):
                    taken = set(repo.names if repo else []) | set(collected.hidden)
                    spec = add_uploaded_teacher(ui.session_id(), upload.name, upload.getvalue(), taken=taken)
            except Exception as exc:
                st.session_state["teacher_upload_message"] = ("error", ui.error_message(exc))
            else:
                sources.uploads.append(spec.location)
                ui.clear_teacher_cache()
                st.session_state["teacher_upload_message"] = (
                    "success", f"Added teacher '{spec.name}' ({spec.architecture}, {spec.num_classes} classes).")
                st.rerun()
        kind, text = st.session_state.get("teacher_upload_message", (None, None))
        if kind == "error":
            st.error(f"Teacher refused: {text}", icon=":material/block:")
        elif kind == "success":
            st.success(text)

with tab_objs[1]:
    st.markdown("An `hf-hub:timm/<model>` name or a timm pretrained tag (e.g. `resnet18.a1_in1k`). Weights come "
                "from the local Hugging Face cache (this server may be offline).")
    hub_name = st.text_input("Hub name", key="w_hub_name", placeholder="hf-hub:timm/resnet18.a1_in1k")
    if st.button("Add hub teacher", key="w_hub_add") and hub_name.strip():
        name = hub_name.strip()
        try:
            with st.spinner(f"Looking up {name} (local cache first, then the hub)…"):
                spec = spec_from_hub(name)
        except ScdError as exc:
            ui.show_error(exc)
        else:
            if repo is not None and spec.name in repo.names:
                st.error(f"A teacher named {spec.name!r} is already in the repository.")
            else:
                sources.hub.append(name)
                ui.clear_teacher_cache()
                if hub_weights_cached(spec) is False:
                    st.session_state["hub_warning"] = (f"{name}: its weights are not in the local HF cache; "
                                                       "ranking it needs network access or a pre-filled cache.")
                st.rerun()
    if st.session_state.get("hub_warning"):
        st.warning(st.session_state.pop("hub_warning"))

with tab_objs[2]:
    include = st.checkbox("Include a demo world's teacher zoo", value=sources.demo is not None, key="w_demo_zoo")
    zoo_world = st.selectbox("Demo world", WORLDS, index=WORLDS.index(sources.demo) if sources.demo in WORLDS else 0,
                             key="w_demo_zoo_world", disabled=not include)
    wanted = zoo_world if include else None
    if wanted != sources.demo:
        ui.set_demo_zoo(wanted)
        st.rerun()

if server_paths_allowed():
    with tab_objs[3]:
        folder = st.text_input("Teacher repository or teacher folder on the server", key="w_teacher_folder")
        if st.button("Add folder", key="w_teacher_folder_add") and folder.strip():
            from scd_core.teachers.repository import TeacherRepository

            try:
                TeacherRepository.from_folder(folder.strip())
            except ScdError as exc:
                ui.show_error(exc)
            else:
                sources.folders.append(folder.strip())
                ui.clear_teacher_cache()
                st.rerun()



def _remove_selected() -> None:
    """Button callback: uploads and hub names are dropped, shared teachers hidden for this session."""
    for name in st.session_state.get("w_teacher_remove", []):
        spec = repo.get(name)
        origin = collected.origin.get(name, "")
        if origin == "upload":
            sources.uploads = [p for p in sources.uploads if p != spec.location]
            remove_uploaded_teacher(ui.session_id(), spec.location)
        elif origin == "hub":
            sources.hub = [h for h in sources.hub if h != spec.location]
        else:  # demo zoo and configured folders are shared: hide them for this session
            sources.hidden.append(name)
    st.session_state["w_teacher_remove"] = []
    ui.clear_teacher_cache()


def _restore_hidden() -> None:
    sources.hidden.clear()
    ui.clear_teacher_cache()


if repo is not None or collected.hidden:
    st.header("Remove teachers")
    if repo is not None:
        ui.valid_choice("w_teacher_remove", repo.names, multi=True)
        remove = st.multiselect("Teachers to remove", repo.names, key="w_teacher_remove")
        st.button("Remove", key="w_teacher_remove_go", disabled=not remove, on_click=_remove_selected)
    if collected.hidden:
        st.caption("Hidden: " + ", ".join(collected.hidden))
        st.button("Restore hidden teachers", key="w_teacher_restore", on_click=_restore_hidden)

st.divider()
st.page_link("pages/ranking.py", label="Next: rank the teachers", icon=":material/arrow_forward:")
