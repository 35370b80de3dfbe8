"""Transport plans: how one teacher's label space maps onto the target's (plan, soft joint, cost), with drill-downs."""

from __future__ import annotations

import streamlit as st

from pages.common import ui
from scd_core import ScdError
from scd_core.ot.costs import COSTS
from scd_core.viz.figures import ROW_ORDERS, class_sources, image_flow, matrix_heatmap

ui.through_app("pages/transport_plans.py")
st.title("Transport plans")
st.markdown(
    "The **plan** G moves the teacher's mean prediction onto the target's label frequencies at the least "
    "total cost: each row shows where one teacher class's mass goes. The **soft joint** J is what the teacher "
    "predicts, on average, for images of each target class. The **cost** C compares each teacher class's "
    "classifier weights with each target class's mean feature (0 = close)."
)

target = ui.require_target()
repo = ui.require_repository()

names = repo.names
ui.keep_same_teachers("w_plan_teacher", repo)
ui.take_linked_teacher("w_plan_teacher", names)
if "w_plan_teacher" not in st.session_state and ui.best_teacher(repo):
    st.session_state["w_plan_teacher"] = ui.best_teacher(repo)
teacher = st.selectbox("Teacher", names, key="w_plan_teacher", **ui.PERSIST,
                       help="The best teacher of the last ranking is chosen first.")
spec = repo.get(teacher)
try:
    outputs = ui.teacher_outputs(spec, target)
except Exception as exc:  # input feedback, or a bug's internal-error note
    ui.show_error(exc, f"Cannot run teacher {teacher}: ")
    st.stop()

k_t = outputs.num_teacher_classes
controls = st.columns([2, 2, 2, 2])
with controls[0]:
    kind = st.radio("Matrix", ["plan", "joint", "cost"], horizontal=True, key="w_plan_kind", **ui.PERSIST,
                    format_func={"plan": "plan G", "joint": "soft joint J", "cost": "cost C"}.get)
with controls[1]:
    cost = st.selectbox("Cost", list(COSTS), key="w_plan_cost", **ui.PERSIST, disabled=kind == "joint",
                        help="; ".join(f"{c.name}: {c.description}" for c in COSTS.values()))
with controls[2]:
    eps = st.select_slider("Entropic regularisation (plan)", options=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
                           key="w_plan_eps", **ui.PERSIST, disabled=kind != "plan",
                           help="0: the exact plan (network simplex); above 0: a smoother Sinkhorn plan.")
with controls[3]:
    order = st.selectbox("Row order", ROW_ORDERS, key="w_plan_order", **ui.PERSIST,
                         help="blocks: rows grouped by the target class they favour, then by mass; "
                              "mass: by total mass; original: the teacher's class order.")
top_k = k_t
if k_t > 10:
    if not 5 <= st.session_state.get("w_plan_topk", 0) <= min(k_t, 200):
        st.session_state["w_plan_topk"] = min(k_t, 40)
    top_k = st.slider(f"Teacher classes shown (top by mass, of {k_t})", 5, min(k_t, 200), key="w_plan_topk",
                      **ui.PERSIST)

try:
    matrix = ui.plan_matrix(target.fingerprint, spec.fingerprint, kind, cost, float(eps) or None, outputs)
    plan = matrix if kind == "plan" else ui.plan_matrix(target.fingerprint, spec.fingerprint, "plan", cost,
                                                        float(eps) or None, outputs)
except ScdError as exc:
    ui.show_error(exc)
    st.stop()

st.plotly_chart(matrix_heatmap(matrix, top_k=top_k, order=order,
                               title=None), key="plan_heatmap")
st.download_button(f"Download the {kind} matrix (CSV, all {k_t} teacher classes)",
                   matrix.to_frame().to_csv().encode("utf-8"), file_name=f"{teacher}-{kind}.csv", mime="text/csv",
                   key="w_plan_csv")

st.header("Drill into a target class")
ui.valid_choice("w_plan_class", target.class_names)
target_class = st.selectbox("Target class", target.class_names, key="w_plan_class", **ui.PERSIST)
left, right = st.columns([3, 2])
source = matrix if kind in ("plan", "joint") else plan
with left:
    st.plotly_chart(class_sources(source, target_class, top_k=min(10, k_t)), key="plan_class_sources")
with right:
    index = target.class_names.index(target_class)
    examples = [it for it in target.assessment_items if it.label == index][:12]
    st.markdown(f"**Examples of '{target_class}'**")
    ui.thumbnails([it.path for it in examples], per_row=4, width=84)

st.header("Drill into one image")
by_rel = {it.rel: it for it in target.assessment_items}
image_ids = list(outputs.image_ids)
labels = [target.class_names[int(y)] for y in outputs.labels]
ALL = "all classes"
ui.valid_choice("w_plan_image_class", [ALL, *target.class_names])
ui.init_widget("w_plan_image_class", target_class)  # the class drilled into above, to begin with
image_class = st.selectbox("Images of", [ALL, *target.class_names], key="w_plan_image_class", **ui.PERSIST)
options = [i for i in range(len(image_ids)) if image_class == ALL or labels[i] == image_class]
ui.valid_choice("w_plan_image", options)
PER_PAGE = 24
pages = max(1, -(-len(options) // PER_PAGE))
if pages > 1:
    ui.init_widget("w_plan_image_page", 1)
    ui.valid_range("w_plan_image_page", 1, pages)
    page_no = int(st.number_input(f"Page (of {pages}, {PER_PAGE} images each)", 1, pages, key="w_plan_image_page"))
else:
    page_no = 1
shown_rows = options[(page_no - 1) * PER_PAGE: page_no * PER_PAGE]
if "w_plan_image" not in st.session_state and options:
    st.session_state["w_plan_image"] = options[0]


def _pick(row_index: int) -> None:
    st.session_state["w_plan_image"] = row_index


st.caption(f"{len(options)} labeled images" + (f" of '{image_class}'" if image_class != ALL else "")
           + ": pick one below (the selected one is marked), or choose it from the list.")
PER_ROW = 8
for start in range(0, len(shown_rows), PER_ROW):
    cols = st.columns(PER_ROW)
    for col, i in zip(cols, shown_rows[start:start + PER_ROW]):
        with col:
            item = by_rel.get(image_ids[i])
            if item is not None:
                st.image(str(item.path), width=64)
            chosen = st.session_state.get("w_plan_image") == i
            st.button("✓ shown" if chosen else "show", key=f"w_plan_pick_{i}", on_click=_pick, args=(i,),
                      type="primary" if chosen else "secondary", disabled=chosen,
                      help=f"{image_ids[i]} ({labels[i]})")
def _image_drill_down(row: int) -> None:
    left, right = st.columns([1, 4])
    with left:
        item = by_rel.get(image_ids[row])
        if item is not None:
            st.image(str(item.path), width=160, caption=f"label: {labels[row]}")
        top = [(outputs.teacher_labels[int(c)], float(p))
               for c, p in zip(outputs.top_classes[row], outputs.top_probs[row])]
        st.markdown("**Top teacher classes**")
        for name, p in top:
            st.markdown(f"- {name}: {p:.1%}")
    with right:
        try:
            fig = image_flow([n for n, _ in top], [p for _, p in top], plan, true_label=labels[row],
                             title="Where this image's top teacher classes send their mass (through the plan's rows)")
        except ValueError as exc:
            ui.show_error(exc)
        else:
            st.plotly_chart(fig, key="plan_image_flow")


if options:
    _image_drill_down(st.selectbox("Image", options, key="w_plan_image", **ui.PERSIST,
                                   format_func=lambda i: f"{image_ids[i]} ({labels[i]})"))
else:
    st.info("No labeled images of this class among the assessment images.")

st.divider()
ui.next_page_link("pages/distill.py", f"Next: distill {teacher} into a student", teacher=teacher)
