"""Ranking: score every teacher on the target set (one forward pass each), table and bar chart, CSV."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import cluster, ui
from pages.common.check_ranking import check_ranking_section
from scd_core.assess.metrics import DEFAULT_METRICS, METRICS
from scd_core.assess.ranking import Ranking, rank
from scd_core.viz.figures import direction_label, ranking_bar, sort_ranking

ui.through_app("pages/ranking.py")
st.title("Ranking")
st.markdown(
    "Each teacher runs once over the labeled train and val images; every metric comes from that pass. "
    "**scd** asks whether the optimal-transport cost from the teacher's prediction to the true label is low "
    "*compared with the cost to every other label* (a log-likelihood, higher is better; `scd_cost` is the plain "
    "mean cost, lower is better); LEEP, NCE, LogME and H-score are the usual baselines (higher is better)."
)
st.caption(
    "How far to trust the order: on 16 benchmark worlds none of these scores was tuned on, scd, LEEP and "
    "scd_conditional order the teachers about equally well (weighted Kendall tau 0.49-0.51 against the students "
    "actually distilled; the differences are within noise), ahead of NCE, H-score and the plain mean cost. No "
    "score is right every time: for a close call, use **Check the ranking** below "
    "(benchmarks/results/ranking_science.md)."
)

target = ui.require_target()
repo = ui.require_repository()

# The budget switch sits outside the form: a widget inside a form does not rerun the page, so the slider
# below could not follow it (it is disabled while budgeting is off).
budget_on = st.checkbox("Budgeted assessment (successive halving)", key="w_rank_budget_on", **ui.PERSIST,
                        help="Score all teachers on a small stratified subset, keep the better half, double the "
                             "subset, repeat: about `budget` of a full scan's forward passes.")
with st.form("rank_form", border=True):
    left, right = st.columns([3, 2])
    with left:
        ui.valid_choice("w_rank_teachers", repo.names, multi=True)
        if "w_rank_teachers" not in st.session_state:
            st.session_state["w_rank_teachers"] = list(repo.names)
        teachers = st.multiselect("Teachers", repo.names, key="w_rank_teachers", **ui.PERSIST)
        if "w_rank_metrics" not in st.session_state:
            st.session_state["w_rank_metrics"] = list(DEFAULT_METRICS)
        metrics = st.multiselect("Metrics (the first ranks by default)", list(METRICS), key="w_rank_metrics",
                                 **ui.PERSIST, help="; ".join(f"{n}: {m.description}" for n, m in METRICS.items()))
    with right:
        ui.init_widget("w_rank_budget", 0.5)
        budget = st.slider("Budget (fraction of a full scan)", 0.1, 1.0, step=0.05, key="w_rank_budget", **ui.PERSIST,
                           disabled=not budget_on,
                           help="Turn on the budgeted assessment above to use a budget." if not budget_on else None)
    submitted = st.form_submit_button("Rank teachers", type="primary")

budget_value = float(budget) if budget_on and budget < 1 else None
specs = [repo.get(n) for n in teachers]
key = (target.fingerprint, tuple(s.fingerprint for s in specs), tuple(metrics), budget_value)
store: dict = st.session_state.setdefault("rankings", {})

if submitted:
    if not teachers:
        st.error("Choose at least one teacher.")
    elif not metrics:
        st.error("Choose at least one metric.")
    else:
        bar = st.progress(0.0, text="Starting…")
        try:
            ranking = rank(target, repo, teachers=teachers, metrics=metrics, budget=budget_value, device=ui.device(),
                           progress=ui.progress_callback(bar),
                           executor=cluster.executor(len(target.assessment_items), len(teachers)))
        except Exception as exc:  # input feedback, or a bug's internal-error note
            bar.empty()
            ui.show_error(exc, "Ranking failed: ")
        else:
            bar.empty()
            for name, why in ranking.failures.items():
                st.warning(f"Teacher **{name}** could not be scored and is left out: {why}")
            store[key] = ranking
            st.session_state["last_ranking_key"] = key

ranking: Ranking | None = store.get(key)
if ranking is None and st.session_state.get("last_ranking_key") in store:
    last = store[st.session_state["last_ranking_key"]]
    if last.target.get("fingerprint") == target.fingerprint:
        ranking = last
        st.info("Showing the last ranking; the settings above changed since (press **Rank teachers** to update).")
if ranking is None:
    st.info("Press **Rank teachers** to score the teachers.")
    st.stop()

info = ranking.metrics
metric_names = list(info)
ui.valid_choice("w_rank_by", metric_names)
rank_by = st.columns([2, 3])[0].selectbox(
    "Rank by", metric_names, key="w_rank_by", **ui.PERSIST,
    format_func=lambda m: f"{m} ({direction_label(info[m].higher_is_better)})")
ordered = sort_ranking(ranking, rank_by)
best = str(ordered.index[0])
ties = ranking.near_ties_for(rank_by)
ui.remember_best_teacher(repo.get(best))
st.success(f"Best teacher by **{rank_by}**: **{best}**")
if ties:
    st.warning(f"**Near tie**: the 95% interval of {', '.join(f'**{t}**' for t in ties)} overlaps **{best}**'s, "
               "so these images cannot tell which is better. Distill both, or label more images.",
               icon=":material/balance:")


def budget_rounds_note(budgeted: Ranking) -> str:
    """The caption explaining a budgeted ranking's rounds and its order."""
    rounds = budgeted.rounds()
    sizes = "; ".join(f"round {r}: {images} images ({n} teacher{'s' if n != 1 else ''} last scored there)"
                      for r, (images, n) in rounds.items())
    return ("**Rounds** (successive halving): every teacher is scored on a small stratified subset, the better half "
            "goes on to the next round on twice the images, and so on. A teacher dropped after a round keeps that "
            f"round's score. {sizes}. Table and chart list the last round first, then by score: a score from fewer "
            "images is not compared with one from more.")


def _arrow(metric: str) -> str:
    return f"{metric} {'↑' if info[metric].higher_is_better else '↓'}"


shown = ordered.rename(columns={m: _arrow(m) for m in metric_names})
shown.insert(0, "rank", range(1, len(shown) + 1))
bounds = {t.name: t.intervals.get(rank_by) for t in ranking.teachers}
shown.insert(1, "near tie", ["≈ best" if name in ties else "" for name in ordered.index])
shown[f"{rank_by} 95% interval"] = [f"[{b[0]:.4f}, {b[1]:.4f}]" if b is not None else "–"
                                    for b in (bounds[name] for name in ordered.index)]


# Best values are compared only among the teachers scored on the most images (a budgeted ranking's last
# round): a score from a smaller subset is another measurement, not a better or worse one.
full = ordered["images"] == ordered["images"].max()
BEST_STYLE = "background-color: rgba(49, 119, 180, 0.16); font-weight: bold"  # neutral: red is for warnings


def _highlight_best(column: pd.Series) -> list[str]:
    metric = column.name.split(" ")[0]
    values = ordered[metric].astype(float)
    compared = values[full]
    target_value = compared.max() if info[metric].higher_is_better else compared.min()
    return [BEST_STYLE if ok and v == target_value else "" for v, ok in zip(values, full)]


styled = shown.style.apply(_highlight_best, subset=[_arrow(m) for m in metric_names]).format(
    {_arrow(m): "{:.4f}" for m in metric_names})
column_config = {_arrow(m): st.column_config.NumberColumn(help=f"{info[m].description} "
                                                               f"({direction_label(info[m].higher_is_better)})")
                 for m in metric_names}
column_config["num_classes"] = st.column_config.NumberColumn("teacher classes")
column_config["near tie"] = st.column_config.TextColumn(help="Its 95% interval overlaps the best teacher's: "
                                                             "distill both, or label more images.")
column_config["images"] = st.column_config.NumberColumn("images scored",
                                                        help="Labeled images the scores came from (budget rounds "
                                                             "use subsets).")
column_config["round"] = st.column_config.NumberColumn(
    "round", help="Successive-halving round in which the teacher was last scored (0 = the first, smallest subset).")
st.subheader("Ranking table")
st.caption("↑ higher is better, ↓ lower is better; the best value of each metric is highlighted in bold"
           + (" among the teachers of the last round" if ranking.budget is not None else "")
           + ". The interval is a 95% bootstrap interval over the assessment images; **≈ best** marks a near tie "
           "with the best teacher.")
if ranking.budget is not None:
    st.caption(budget_rounds_note(ranking))
st.dataframe(styled, width="stretch", column_config=column_config)
timing = ranking.timing
if timing:
    st.caption(f"Computed in {timing.get('total_s', 0):.1f} s (forward passes {timing.get('forward_s', 0):.1f} s, "
               f"metrics {timing.get('metrics_s', 0):.1f} s; cached teacher outputs are reused).")
st.download_button("Download ranking (CSV)", ranking.table(rank_by, intervals=True).to_csv().encode("utf-8"),
                   file_name="ranking.csv", mime="text/csv", key="w_rank_csv", icon=":material/download:")
st.plotly_chart(ranking_bar(ranking, rank_by), key="rank_bar")

st.divider()
check_ranking_section(target, repo, ranking)

st.divider()
ui.next_page_link("pages/transport_plans.py", f"Next: how {best}'s labels map onto yours", teacher=best)
