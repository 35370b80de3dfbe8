"""The Ranking page's "Check the ranking" section: a background job that distills a student per teacher.

The job (:func:`scd_core.runtime.jobs.submit_validate`) runs in a worker process like a distillation run,
so it survives page switches, reloads and a server restart; this section submits it, shows its progress
and, when it is done, the validate report: score against student accuracy per metric with weighted tau.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from pages.common import ui
from scd_core.assess.ranking import Ranking
from scd_core.distill.compare import estimate_run_seconds
from scd_core.distill.config import DistillConfig
from scd_core.runtime.jobs import JobSnapshot, JobStatus, submit_validate
from scd_core.runtime.session import session_dir
from scd_core.viz.figures import validation_scatter

KIND = "validate"


def _latest(target_fp: str) -> JobSnapshot | None:
    jobs = [j for j in ui.job_store().jobs(ui.session_id(), kind=KIND, history=False)  # no per-epoch records
            if j.meta.get("target_fp") == target_fp]
    return max(jobs, key=lambda j: j.created) if jobs else None


def _submit(target, repo, ranking: Ranking, top: int, seeds: int, epochs: int) -> None:
    sid = ui.session_id()
    source = ui.target_spec()
    extract = str(session_dir(sid, "targets")) if source.lower().endswith(".zip") else None
    names = ranking.names[:top]
    config = DistillConfig(epochs=epochs, device=ui.device(), weighting="fixed")
    submit_validate(ui.job_store(), sid, target=source, extract_dir=extract, teachers=[repo.get(n) for n in names],
                    config=config, metrics=list(ranking.metrics), seeds=seeds, top=None,
                    label=f"check of the ranking ({len(names)} teachers × {seeds} seed(s))", target_name=target.name,
                    meta={"target_fp": target.fingerprint, "teachers": names, "seeds": seeds, "epochs": epochs})
    ui.dispatcher().kick()


def _report(job: JobSnapshot) -> None:
    report = job.result or {}
    if job.status == JobStatus.CANCELLED:
        st.info("The check was cancelled; the figure uses the students that finished.")
    rows = report.get("teachers") or []
    if not rows:
        return
    st.plotly_chart(validation_scatter(report), key=f"validate_{job.id}")
    agreement = pd.DataFrame(report.get("metrics") or {}).T
    agreement.index.name = "metric"
    st.markdown("**How well each metric's order matches the students'** (1: the same order; 0: no relation; "
                f"{len(rows)} teachers, so one swapped pair moves Kendall tau by about {2 / max(1, len(rows)):.2f})")
    st.dataframe(agreement, width="stretch")
    baseline = (report.get("baseline_ce") or {}).get("accuracy_mean")
    table = pd.DataFrame([{"teacher": r["name"], "student accuracy": r.get("accuracy_mean"),
                           "std over seeds": r.get("accuracy_std"), "seeds": len(r.get("accuracies") or [])}
                          for r in rows]).set_index("teacher")
    st.dataframe(table.style.format({"student accuracy": "{:.1%}", "std over seeds": "{:.1%}"}, na_rep="–"),
                 width="stretch")
    if baseline is not None:
        st.caption(f"No teacher (`ce`): {baseline:.1%} {report.get('accuracy_split', 'test')} accuracy.")
    for name, why in (report.get("failures") or {}).items():
        st.warning(f"{name} failed and is left out: {why}")
    st.download_button("Download the check (JSON)", json.dumps(report, indent=2, default=str).encode("utf-8"),
                       file_name="ranking-check.json", mime="application/json", key=f"w_validate_json_{job.id}",
                       icon=":material/download:")


def check_ranking_section(target, repo, ranking: Ranking) -> None:
    """Offer, follow and show the check of ``ranking`` against students distilled from its teachers."""
    st.subheader("Check the ranking")
    st.markdown("Is the order right on *your* data? This trains a `scd` student from each of the top teachers "
                "(fixed teacher weight, so that a poor teacher shows as poor) and one without a teacher, then plots "
                "every score against the students' accuracy. It is the slow, brute-force check the ranking exists "
                "to avoid: use it to decide a near tie or to trust the metrics on a new kind of data.")
    job = _latest(target.fingerprint)
    if job is not None and job.active:
        _follow(job)
        return
    names = ranking.names
    cols = st.columns(3)
    low, high = (2 if len(names) > 1 else 1), max(1, len(names))
    ui.valid_range("w_validate_top", low, high)  # a value kept from a ranking of more teachers
    ui.init_widget("w_validate_top", min(len(names), 4))
    top = cols[0].number_input("Teachers (from the top)", low, high, key="w_validate_top", **ui.PERSIST)
    ui.init_widget("w_validate_seeds", 1)
    seeds = cols[1].number_input("Seeds per student", 1, 5, key="w_validate_seeds", **ui.PERSIST)
    ui.init_widget("w_validate_epochs", DistillConfig().epochs)
    epochs = cols[2].number_input("Epochs", 1, 200, key="w_validate_epochs", **ui.PERSIST)
    pool = len(target.split("train")) + len(target.split("unlabeled"))
    estimate = estimate_run_seconds([], pool, int(epochs))
    students = (int(top) + 1) * int(seeds)
    each = estimate.seconds_text
    st.caption(f"{students} students of about {each} s each (estimate from {estimate.basis}): "
               f"≈ {students * estimate.seconds / 60:.1f} min of worker time; it runs in the background.")
    if st.button("Check the ranking", key="w_validate_start", icon=":material/fact_check:"):
        _submit(target, repo, ranking, int(top), int(seeds), int(epochs))
        st.rerun()
    if job is not None:
        if job.status == JobStatus.FAILED:
            st.error(f"The last check failed: {job.error}")
        else:
            _report(job)


def _follow(job: JobSnapshot) -> None:
    store = ui.job_store()

    def poll() -> None:
        current = store.get(job.id, history=False)
        if current is None or not current.active:
            st.rerun(scope="app")
        st.progress(current.progress or 0.0, text=current.message or str(current.status))
        if st.button("Cancel the check", key=f"w_validate_cancel_{job.id}"):
            store.request_cancel(job.id, session=ui.session_id())
            ui.dispatcher().kick()

    st.fragment(poll, run_every="1s")()
