"""Distill: start background runs (teacher x method), watch live curves, cancel, compare against ``ce``, download."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.common import ui
from scd_core import ScdError
from scd_core.distill.compare import (
    compare,
    default_seed_count,
    estimate_run_seconds,
    format_lambda,
    job_record,
    kfold_targets,
    lambda_cell,
    run_name,
)
from scd_core.distill.config import WEIGHTINGS
from scd_core.distill.losses import METHODS, method_refusal
from scd_core.distill.trainer import DEFAULT_STUDENT, DistillConfig
from scd_core.runtime.jobs import JobSnapshot, JobStatus, submit_distill
from scd_core.runtime.session import session_dir, upload_stem, zip_folder
from scd_core.utils import slug
from scd_core.viz.figures import run_comparison, training_curves

STUDENTS = (DEFAULT_STUDENT, "resnet18", "mobilenetv3_small_100", "efficientnet_b0", "test_resnet",
            "test_efficientnet", "test_convnext")
METHOD_HELP = {
    "scd": "CE + OT between teacher and student predictions through the label-space cost (any label space)",
    "translate": "CE + KD against the teacher's prediction carried into your labels by the plan",
    "kd": "CE + Hinton KD (only when the teacher has exactly your classes)",
    "rkd": "CE + relational KD on features (any label space)",
    "ce": "labels only: the baseline without a teacher",
}

ui.through_app("pages/distill.py")
st.title("Distill")
st.markdown(
    "Train a small student from scratch on your labeled images (and the unlabeled ones, through the teacher). "
    "Runs continue in the background while you browse the other pages; compare them against the `ce` baseline."
)

target = ui.require_target()
repo = ui.require_repository()
store = ui.job_store()
sid = ui.session_id()

# ------------------------------------------------------------------------------------------------
# Start runs
# ------------------------------------------------------------------------------------------------

# Methods that cannot use any teacher of this repository are not offered (the engine's rule: kd needs the
# teacher's label space to equal the target's); the ones that fit some teachers are checked at submit.
refusals = {(m, n): method_refusal(m, repo.get(n).label_names, target.class_names) for m in METHODS
            for n in repo.names}
usable = {m: [n for n in repo.names if refusals[(m, n)] is None] for m in METHODS}
method_options = [m for m in METHODS if m == "ce" or usable[m]]
ui.valid_choice("w_dist_methods", method_options, multi=True)
ui.valid_choice("w_dist_student", STUDENTS)

with st.form("distill_form"):
    left, middle, right = st.columns(3)
    with left:
        ui.keep_same_teachers("w_dist_teachers", repo, multi=True)  # the repository in use, never another's
        ui.take_linked_teacher("w_dist_teachers", repo.names, multi=True)
        if "w_dist_teachers" not in st.session_state:
            st.session_state["w_dist_teachers"] = [ui.best_teacher(repo) or repo.names[0]]
        teachers = st.multiselect("Teachers", repo.names, key="w_dist_teachers", **ui.PERSIST)
        if "w_dist_methods" not in st.session_state:
            st.session_state["w_dist_methods"] = ["scd", "ce"]
        methods = st.multiselect("Methods", method_options, key="w_dist_methods", **ui.PERSIST,
                                 help="\n".join(f"- **{m}**: {METHOD_HELP.get(m, '')}" for m in METHODS))
        for m in METHODS:
            if m not in method_options:
                st.caption(f"**{m}** is not offered: it needs a teacher with exactly your {target.num_classes} "
                           "classes and none here has them (scd, translate and rkd work across label spaces).")
            elif m != "ce" and len(usable[m]) < len(repo.names):
                st.caption(f"**{m}** only with {', '.join(usable[m])} (exactly your classes).")
    with middle:
        student = st.selectbox("Student architecture", STUDENTS, key="w_dist_student", **ui.PERSIST,
                               help="timm architecture trained from scratch; test_* are tiny (for quick trials).")
        for key, value in (("w_dist_epochs", 15), ("w_dist_batch", 64), ("w_dist_seed", 0), ("w_dist_lr", 0.0),
                           ("w_dist_weight", 1.0), ("w_dist_temp", 4.0), ("w_dist_unlabeled", True)):
            ui.init_widget(key, value)
        epochs = st.number_input("Epochs", 1, 500, key="w_dist_epochs", **ui.PERSIST)
        batch = st.number_input("Batch size", 2, 1024, key="w_dist_batch", **ui.PERSIST)
    with right:
        seed = st.number_input("First seed", 0, 10_000, key="w_dist_seed", **ui.PERSIST)
        pool = len(target.split("train")) + len(target.split("unlabeled"))
        past = [(j.elapsed, int(j.meta.get("pool") or 0), int(j.meta.get("epochs") or 0))  # finished: every epoch
                for j in store.jobs(sid, kind="distill", history=False)
                if j.status == JobStatus.FINISHED and j.meta.get("target_fp") == target.fingerprint]
        estimate = estimate_run_seconds(past, pool, int(st.session_state.get("w_dist_epochs", 15)))
        planned = max(1, len(st.session_state.get("w_dist_methods", ["scd", "ce"])))
        ui.init_widget("w_dist_seeds", default_seed_count(estimate.seconds, planned))
        seeds = st.number_input("Seeds per run", 1, 10, key="w_dist_seeds", **ui.PERSIST,
                                help="Each (teacher, method) is trained once per seed; the comparison shows the mean "
                                     "± std over seeds and an interval for the difference from ce.")
        per_run = estimate.seconds_text
        planned_folds = int(st.session_state.get("w_dist_folds") or 0)
        planned_folds = planned_folds if planned_folds >= 2 else 1
        st.caption(f"About {per_run} s per run (estimate from {estimate.basis}); "
                   f"{planned} method(s) × {int(seeds)} seed(s)"
                   + (f" × {planned_folds} folds" if planned_folds > 1 else "")
                   + f" ≈ {estimate.seconds * planned * int(seeds) * planned_folds / 60:.1f} min of worker time.")
        with st.expander("More options"):
            lr = st.number_input("Learning rate (0: default)", 0.0, 10.0, format="%.4f", key="w_dist_lr", **ui.PERSIST)
            weight = st.number_input("Teacher weight λ", 0.0, 100.0, key="w_dist_weight", **ui.PERSIST)
            ui.init_widget("w_dist_weighting", "adaptive")
            weighting = st.radio("Teacher weighting", WEIGHTINGS, key="w_dist_weighting", horizontal=True,
                                 **ui.PERSIST, help="adaptive: each image's λ times how well the teacher's transported "
                                                    "predictions agree with your labels for the teacher class it "
                                                    "predicts (a useless teacher gets about 0, so the run stays near "
                                                    "ce); fixed: λ as given.")
            temperature = st.number_input("Temperature T", 0.1, 50.0, key="w_dist_temp", **ui.PERSIST)
            ui.init_widget("w_dist_folds", 0)
            folds = st.number_input(
                "Cross-validation folds (0: off)", 0, 10, key="w_dist_folds", **ui.PERSIST,
                help="k >= 2: every (teacher, method, seed) is trained k times, each time validating on another "
                     "k-th of the labeled train + val images and training on the rest, so that the comparison rests "
                     "on every labeled image instead of one small validation split. k times the runs.")
            use_unlabeled = st.checkbox("Use unlabeled images", key="w_dist_unlabeled", **ui.PERSIST)
    start = st.form_submit_button("Start runs", type="primary")
# The form's values are saved with the session now, for a reload (app.py saves after the page too, but a page
# run alone, as under AppTest or a legacy deep link, never gets there).
ui.save_session()

if start:
    if not methods:
        st.error("Choose at least one method.")
    elif any(m != "ce" for m in methods) and not teachers:
        st.error("Choose at least one teacher (or only the ce method).")
    elif refused := [(m, t, why) for m in methods if m != "ce" for t in teachers if (why := refusals.get((m, t)))]:
        st.error("Nothing was started: " + "; ".join(f"**{m} ← {t}**: {why}" for m, t, why in refused),
                 icon=":material/block:")
    else:
        started = 0
        k_folds = int(folds) if int(folds) >= 2 else 0
        fold_sizes = []
        if k_folds:
            try:  # refused here, before anything is queued, when a class is smaller than k
                fold_sizes = [len(f.split("val")) for f in kfold_targets(target, k_folds)]
            except ScdError as exc:
                ui.show_error(exc, "Cross-validation: ")
                st.stop()
        plan = [(method, teacher, int(seed) + k, fold) for k in range(int(seeds))
                for fold in (range(k_folds) if k_folds else [None]) for method in methods
                for teacher in ([None] if method == "ce" else teachers)]
        for method, teacher, run_seed, fold in plan:
            config = DistillConfig(method=method, student=student, epochs=int(epochs), batch_size=int(batch),
                                   seed=run_seed, device=ui.device(), lr=float(lr) or None, weight=float(weight),
                                   temperature=float(temperature), use_unlabeled=bool(use_unlabeled),
                                   weighting=str(weighting))
            spec = repo.get(teacher) if teacher else None
            run_dir = session_dir(sid, "runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            label = f"{run_name(method, teacher, str(weighting))} · seed {run_seed}" + (
                f" · fold {fold + 1}/{k_folds}" if fold is not None else "")
            meta = {"teacher": teacher, "method": method, "student": student, "epochs": int(epochs),
                    "seed": run_seed, "weighting": str(weighting), "target": target.name,
                    "target_label": ui.target_label(),
                    "target_fp": target.fingerprint, "run_dir": str(run_dir),
                    "n_val": fold_sizes[fold] if fold is not None else len(target.split("val")), "pool": pool,
                    "fold": None if fold is None else fold + 1, "folds": k_folds or None}
            source = ui.target_spec()
            extract = str(session_dir(sid, "targets")) if source.lower().endswith(".zip") else None
            try:
                submit_distill(store, sid, target=source, extract_dir=extract, teacher=spec, config=config,
                               run_dir=run_dir, label=label, meta=meta, target_name=target.name,
                               fold=None if fold is None else (k_folds, fold))
            except ScdError as exc:
                ui.show_error(exc)
                break
            started += 1
        if started:
            ui.dispatcher().kick()
            st.session_state["runs_started"] = started
            st.rerun()  # the sidebar and the poller pick up the new runs
if st.session_state.pop("runs_started", 0):
    st.toast("Runs started: they continue while you browse the other pages.")

# ------------------------------------------------------------------------------------------------
# Runs: a fragment that polls the job store every second while something runs
# ------------------------------------------------------------------------------------------------


def _runs() -> list[JobSnapshot]:
    return store.jobs(sid, kind="distill")


def _cancel(job_id: str) -> None:
    store.request_cancel(job_id, session=sid)
    ui.dispatcher().kick()


def _restart(job_id: str) -> None:
    if store.restart(sid, job_id):
        ui.dispatcher().kick()


def _live(jobs: list[JobSnapshot]) -> None:
    running = [j for j in jobs if j.status in (JobStatus.RUNNING, JobStatus.CANCELLING)]
    queued = [j for j in jobs if j.status == JobStatus.QUEUED]
    places = {job.id: slot for job, slot in store.queue("train") if job.session == sid}
    if running:
        st.subheader(f"Running ({len(running)})")
        for job in running:
            _progress_row(job, job.message)
    if queued:
        st.subheader(f"Queued ({len(queued)})")
        for job in queued:
            slot = places.get(job.id)
            _progress_row(job, slot.reason() if slot is not None else "waiting for a worker")
    for job in [j for j in jobs if j.status in (JobStatus.FAILED, JobStatus.INTERRUPTED)][-5:]:
        cols = st.columns([5, 1], vertical_alignment="center")
        with cols[0]:
            st.error(f"{job.label} ({job.status}): {job.error}", icon=":material/block:")
        with cols[1]:
            st.button("Restart", key=f"restart-{job.id}", on_click=_restart, args=(job.id,),
                      help="Queue this run again with the same settings (its partial history stays here).")
    with_history = [j for j in jobs if j.history and j.meta.get("target_fp") == target.fingerprint]
    if with_history:
        curves = [{"label": j.label, "history": j.history, "baseline": j.meta.get("method") == "ce"}
                  for j in with_history[-12:]]
        st.plotly_chart(training_curves(curves, title="Training curves" + (" (live)" if running else "")),
                        key="dist_curves")
    elif not running and not queued:
        st.info("No runs yet: choose teachers and methods above and press **Start runs**.")


def _progress_row(job: JobSnapshot, text: str) -> None:
    cols = st.columns([5, 1], vertical_alignment="bottom")
    with cols[0]:
        st.progress(job.progress, text=f"**{job.label}** · {text}")
    with cols[1]:
        st.button("Cancel", key=f"cancel-{job.id}", on_click=_cancel, args=(job.id,),
                  disabled=job.status == JobStatus.CANCELLING)


def _comparison(jobs: list[JobSnapshot]) -> None:
    """Finished runs of the latest setting, grouped over seeds by the engine; cancelled and failed runs left out."""
    records = [job_record(j) for j in jobs if j.meta.get("target_fp") == target.fingerprint]
    finished = [r for r in records if r.status == JobStatus.FINISHED.value and r.val_acc is not None]
    if not finished:
        return
    setting = max(finished, key=lambda r: r.started).setting
    _, student, epochs, k_folds = setting
    # k-fold runs validate on one fold each: their own validation size (the plain split's otherwise)
    comparison = compare([r for r in records if r.setting == setting],
                         n_val=None if k_folds else len(target.split("val")), has_test=bool(target.split("test")))
    st.header("Compare against the ce baseline")
    left_out = sum(1 for r in comparison.excluded if r.status in ("cancelled", "failed", "interrupted"))
    over = f"{k_folds}-fold cross-validation × seeds" if k_folds else "seeds"
    st.caption(f"Finished runs with student {student} and {epochs} epochs, mean ± std over {over}"
               + (f"; {left_out} cancelled or failed run(s) are left out (see the history)." if left_out else "."))
    for warning in comparison.warnings:
        st.warning(warning, icon=":material/warning:")
    if comparison.warnings and not k_folds:
        st.caption("Cross-validation is under **More options → Cross-validation folds** above.")

    rows = [{
        "teacher · method": g.name + ("  (best)" if g.best else ""), "runs": g.n,
        "val acc": _accuracy(g.val_mean, g.val_std), "test acc": _accuracy(g.test_mean, g.test_std),
        "Δ val vs ce [95% interval]": (f"{g.vs_ce.value:+.1%} [{g.vs_ce.low:+.1%}, {g.vs_ce.high:+.1%}]"
                                       if g.vs_ce else ("baseline" if g.method == "ce" else "no ce run yet")),
        "verdict": g.vs_ce.label if g.vs_ce else "",
        "teacher λ": lambda_cell(g.lambdas) if g.teacher else "—",
    } for g in comparison.groups]
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True)
    for g in comparison.groups:
        if g.weight_note:
            st.caption(f"**{g.name}**: {g.weight_note}")
    weighted = [g for g in comparison.groups if g.class_weights]
    if weighted:
        with st.expander("Teacher weight per teacher class"):
            st.caption("Each training image's teacher term counts with λ × the weight of the teacher class the "
                       "teacher predicts for it: the 95% lower bound of how often that class's labeled images were "
                       "mapped to their label, above chance (0: not shown to beat chance). Teacher classes no "
                       "labeled image fell in weigh 0.")
            for g in weighted:
                table = pd.DataFrame(g.class_weights)
                table["weight"] = table["weight"].map(format_lambda)
                table["training images"] = table["training images"].map(lambda v: "—" if v is None else int(v))
                st.markdown(f"**{g.name}**")
                st.dataframe(table, width="stretch", hide_index=True, key=f"dist_class_weights_{g.name}")
    if comparison.test_note:
        st.caption(comparison.test_note)
    base = comparison.baseline
    chart, _ = st.columns([3, 2])
    with chart:
        st.plotly_chart(run_comparison(
            [{"label": f"{g.name} (n={g.n})", "val_acc": g.val_mean, "error": g.val_std, "baseline": g.method == "ce",
              "best": g.best}
             for g in comparison.groups], baseline=base.val_mean if base else None), key="dist_compare")


def target_shown(meta: dict) -> str:
    """The run's target as the user named it (stored at submit); older runs: the stored name without the
    content hash that uploads carry (``flowers-3f2a9c1b0d4e`` -> ``flowers``)."""
    if meta.get("target_label"):
        return str(meta["target_label"])
    return upload_stem(str(meta.get("target") or "")) or "—"


def _accuracy(value, std: float | None = None) -> str:
    """An accuracy (± its std over runs): a dash while running, after a failure or without a test split."""
    if not (isinstance(value, (int, float)) and value == value):
        return "—"
    return f"{value:.1%}" + (f" ± {std:.1%}" if std is not None else "")


def _history(jobs: list[JobSnapshot]) -> None:
    if not jobs:
        return
    st.header("Run history (this session)")
    st.dataframe(pd.DataFrame([{
        "started": datetime.fromtimestamp(j.started or j.created).strftime("%H:%M:%S"),
        "run": j.label, "target": target_shown(j.meta), "status": str(j.status),
        "epochs done": len(j.history), "val acc": _accuracy((j.result or {}).get("val_acc")),
        "test acc": _accuracy((j.result or {}).get("test_acc")), "seconds": round(j.elapsed, 1),
        "message": j.error or j.message,
    } for j in reversed(jobs)]), width="stretch", hide_index=True)
    if not target.split("test") and any(j.status == JobStatus.FINISHED for j in jobs):
        st.caption("test acc is a dash: this target set has no test split (its accuracy is measured on val).")


was_active = any(j.active for j in store.jobs(sid, kind="distill", history=False))


def runs_section() -> None:
    """Live progress with cancel buttons, queue places, curves, the comparison with ce and the history."""
    jobs = _runs()
    _live(jobs)
    _comparison(jobs)
    _history(jobs)
    if was_active and not any(j.active for j in jobs):
        st.rerun(scope="app")  # refresh the downloads and the sidebar


st.header("Runs")
st.fragment(runs_section, run_every="1s" if was_active else None)()

# ------------------------------------------------------------------------------------------------
# Downloads (outside the poller: a student is zipped only when shown)
# ------------------------------------------------------------------------------------------------

downloadable = [j for j in _runs() if j.status in (JobStatus.FINISHED, JobStatus.CANCELLED) and j.result
                and Path(j.result.get("student_dir", "")).is_dir()]
if downloadable:
    st.subheader("Download a student")
    labels = {j.id: f"{j.label} (val {j.result['val_acc']:.1%}, {j.status})" for j in downloadable}
    ui.valid_choice("w_dist_download", list(labels))
    choice = st.selectbox("Run", list(labels), format_func=labels.get, key="w_dist_download")
    job = next(j for j in downloadable if j.id == choice)
    st.caption("A teacher folder (config.json + model.safetensors): loads with plain timm and can join a "
               "teacher repository.")
    try:
        data = zip_folder(Path(job.result["student_dir"]), arcname=f"student-{job.meta.get('method')}-{choice}")
    except ScdError as exc:
        ui.show_error(exc)
    else:
        stem = slug(f"student-{job.meta.get('method')}-{job.meta.get('teacher') or 'no-teacher'}-"
                    f"{job.meta.get('target') or target.name}-seed{job.meta.get('seed', 0)}")
        st.download_button("Download student (.zip)", data, file_name=f"{stem}.zip",
                           mime="application/zip", key="w_dist_zip", icon=":material/download:")
