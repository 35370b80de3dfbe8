"""Plotly figure builders for the app (and notebooks): rankings, label-space matrices, runs, drill-downs.

Every builder takes plain engine objects (a :class:`~scd_core.assess.ranking.Ranking`, a
:class:`~scd_core.ot.plans.LabeledMatrix`, run histories, per-image top classes) and returns a
``plotly.graph_objects.Figure`` whose JSON carries the class names, so the pages only lay figures out.
Nothing here imports streamlit.

Label-space matrices are made readable in three ways: only the ``top_k`` teacher classes by mass are
kept (a 1000- or 21k-class teacher shows its few relevant classes), rows are ordered so that a
mapping shows as blocks (by the target class they send most mass to, then by mass), and every cell
hovers with both class names, its value and the row's share. Numbers go into the figures as plain
lists (not numpy arrays, which plotly would encode as base64), so the JSON stays readable and testable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from scd_core.assess.ranking import Ranking
from scd_core.ot.plans import LabeledMatrix

ROW_ORDERS = ("blocks", "mass", "original")
BEST_COLOUR = "#1f4e8c"  # a strong blue: red is kept for warnings and errors
OTHER_COLOUR = "#a3bbd4"
BASELINE_COLOUR = "#555555"
MAX_ANNOTATED_CELLS = 400
_KIND_TITLES = {
    "plan": "transport plan G (mass moved from teacher class to target class)",
    "joint": "soft joint J (mean teacher prediction per target label)",
    "cost": "cost C (teacher class to target class, 0 = close, 1 = far)",
}
_VALUE_NAMES = {"plan": "plan mass", "joint": "joint mass", "cost": "cost"}


def palette(n: int) -> list[str]:
    """``n`` distinct colours (plotly's qualitative palettes, cycled for very many classes)."""
    colours = qualitative.Plotly if n <= 10 else qualitative.Alphabet
    return [colours[i % len(colours)] for i in range(n)]


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Labels made unique for a categorical axis (plotly merges equal categories): ``a``, ``a #2``."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        text = str(label)
        seen[text] = seen.get(text, 0) + 1
        out.append(text if seen[text] == 1 else f"{text} #{seen[text]}")
    return out


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def direction_label(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def sort_ranking(ranking: Ranking, metric: str) -> pd.DataFrame:
    """The ranking's display table best first by ``metric`` (NaN last; later budget rounds first)."""
    return ranking.table(metric)


def ranking_bar(ranking: Ranking, metric: str) -> go.Figure:
    """Horizontal bars of one metric per teacher, best at the top and highlighted; title shows direction.

    Where the ranking holds 95% intervals they are drawn as error bars, and near ties of the leader
    are hatched.
    """
    if metric not in ranking.metrics:
        raise ValueError(f"metric {metric!r} is not in the ranking table")
    higher = ranking.metrics[metric].higher_is_better
    ordered = ranking.ordered(metric)
    names = [str(t.name) for t in ordered]
    values = np.array([t.scores.get(metric, np.nan) for t in ordered], dtype=float)
    colours = [BEST_COLOUR if i == 0 else OTHER_COLOUR for i in range(len(names))]
    # a budgeted ranking: teachers dropped in an earlier round were scored on fewer images; their bars are
    # faded and the order stays the ranking's (last round first), as in the table
    last_round = max((t.round for t in ordered), default=0)
    opacity = [1.0 if t.round == last_round else 0.45 for t in ordered]
    # Bars start just beyond the worst value, so the longest bar is always the best teacher, whatever
    # the metric's sign and direction (a log-likelihood near 0 would otherwise draw the shortest bar).
    finite = values[np.isfinite(values)]
    span = float(np.ptp(finite)) if finite.size else 0.0
    pad = 0.05 * span if span > 0 else max(abs(float(finite[0])) * 0.05, 1e-12) if finite.size else 1.0
    base = (float(finite.min()) - pad if higher else float(finite.max()) + pad) if finite.size else 0.0
    bar = dict(
        x=(values - base).tolist(), base=base, y=names, orientation="h",
        marker={"color": colours, "opacity": opacity} if ranking.budget is not None else {"color": colours},
        customdata=values.tolist(), text=[f"{v:.4g}" for v in values], textposition="auto",
        hovertemplate="teacher: %{y}<br>value: %{customdata:.5g}<extra></extra>",
    )
    rounds = [f"round {t.round}, {t.images} images" for t in ordered]
    intervals = [t.intervals.get(metric) for t in ordered]
    if any(iv is not None for iv in intervals):
        low = np.array([iv[0] if iv is not None else v for iv, v in zip(intervals, values)], dtype=float)
        high = np.array([iv[1] if iv is not None else v for iv, v in zip(intervals, values)], dtype=float)
        bar["error_x"] = {"type": "data", "symmetric": False, "array": np.maximum(high - values, 0).tolist(),
                          "arrayminus": np.maximum(values - low, 0).tolist(), "color": BASELINE_COLOUR,
                          "thickness": 1.5}
        bar["hovertemplate"] = ("teacher: %{y}<br>value: %{customdata[0]:.5g}<br>95% interval: "
                                "[%{customdata[1]:.5g}, %{customdata[2]:.5g}]<extra></extra>")
        bar["customdata"] = np.column_stack([values, low, high]).tolist()
        ties = set(ranking.near_ties_for(metric))
        bar["marker"]["pattern"] = {"shape": ["/" if n in ties else "" for n in names]}
    if ranking.budget is not None:  # each teacher's round and image count, in the hover and the axis labels
        bar["hovertext"] = rounds
        bar["hovertemplate"] = bar["hovertemplate"].replace("<extra>", "<br>%{hovertext}<extra>")
    fig = go.Figure(go.Bar(**bar))
    arrow = "→ better" if higher else "← better"
    if ranking.budget is not None:
        fig.update_yaxes(tickmode="array", tickvals=names,
                         ticktext=[f"{n}<br><sub>{r}</sub>" for n, r in zip(names, rounds)])
    fig.update_layout(
        title=f"{metric} per teacher ({direction_label(higher)}; best highlighted"
              + ("; last round first, earlier rounds faded)" if ranking.budget is not None else ")"),
        xaxis_title=f"{metric} {arrow}", yaxis={"autorange": "reversed", "automargin": True},
        height=max(260, 34 * len(names) + 120), margin={"l": 10, "r": 20, "t": 50, "b": 40},
        showlegend=False,
    )
    return fig


# ------------------------------------------------------------------------------------------------
# Label-space matrices
# ------------------------------------------------------------------------------------------------


def row_order(matrix: np.ndarray, kind: str = "plan", order: str = "blocks") -> np.ndarray:
    """Row permutation of a teacher x target matrix.

    ``blocks``: rows grouped by the target column they favour (argmax of mass; argmin of cost), in
    column order, and within a group by decreasing mass (increasing cost), so a mapping reads as
    blocks on the diagonal. ``mass``: by decreasing row mass (increasing minimum cost).
    ``original``: unchanged.
    """
    if order not in ROW_ORDERS:
        raise ValueError(f"unknown row order {order!r}; choose one of {', '.join(ROW_ORDERS)}")
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    if order == "original" or n == 0:
        return np.arange(n)
    if kind == "cost":
        strength = -np.nanmin(m, axis=1)
        favoured = np.nanargmin(m, axis=1) if m.shape[1] else np.zeros(n, int)
    else:
        strength = np.nansum(m, axis=1)
        favoured = np.nanargmax(m, axis=1) if m.shape[1] else np.zeros(n, int)
    if order == "mass":
        return np.lexsort((np.arange(n), -strength))
    # rows with (almost) no mass go last, whatever their argmax
    empty = (strength <= 1e-12) if kind != "cost" else np.zeros(n, bool)
    return np.lexsort((np.arange(n), -strength, favoured, empty))


def prepare_matrix(lm: LabeledMatrix, top_k: int | None = None, order: str = "blocks") -> LabeledMatrix:
    """The rows a heatmap shows: the ``top_k`` rows by mass (or lowest cost), in ``order``."""
    shown = lm.top_rows(top_k) if top_k else lm
    perm = row_order(shown.matrix, shown.kind, order)
    return LabeledMatrix([shown.rows[i] for i in perm], list(shown.cols), np.asarray(shown.matrix)[perm], shown.kind)


def matrix_heatmap(lm: LabeledMatrix, *, top_k: int | None = 40, order: str = "blocks",
                   title: str | None = None, annotate: bool | None = None) -> go.Figure:
    """Heatmap of a plan, joint or cost with teacher classes on the rows and target classes on the columns.

    Hover shows both class names, the value and, for mass matrices, the share of the teacher class's
    mass that goes to the target class. Cells are annotated with their values when there are few.
    """
    total_rows = len(lm.rows)
    shown = prepare_matrix(lm, top_k, order)
    z = np.asarray(shown.matrix, dtype=np.float64)
    rows, cols = unique_labels(shown.rows), unique_labels(shown.cols)
    is_cost = shown.kind == "cost"
    value_name = _VALUE_NAMES.get(shown.kind, "value")
    if is_cost:
        custom = np.broadcast_to(np.nanmin(z, axis=1, keepdims=True) if z.size else z, z.shape)
        extra = "<br>row's lowest cost: %{customdata:.3f}"
    else:
        row_sum = z.sum(axis=1, keepdims=True)
        custom = np.divide(z, row_sum, out=np.zeros_like(z), where=row_sum > 0)
        extra = "<br>share of the teacher class's mass: %{customdata:.1%}"
    fmt = ".3f" if is_cost else ".2%"
    annotate = (z.size <= MAX_ANNOTATED_CELLS) if annotate is None else annotate
    heat = go.Heatmap(
        z=z.tolist(), x=cols, y=rows, customdata=np.asarray(custom).tolist(),
        colorscale="Viridis_r" if is_cost else "Blues",
        zmin=0.0, zmax=1.0 if is_cost else (float(z.max()) if z.size and z.max() > 0 else 1.0),
        colorbar={"title": {"text": value_name}, "tickformat": ".0%" if not is_cost else ".1f"},
        hovertemplate=("teacher class: %{y}<br>target class: %{x}<br>" + value_name + ": %{z:" + fmt + "}"
                       + extra + "<extra></extra>"),
        xgap=1, ygap=1,
    )
    if annotate:  # values in the cells; empty cells of a plan stay blank so that the blocks stand out
        text = [[(f"{v:.2f}" if is_cost else (f"{v:.1%}" if v >= 5e-4 else "")) for v in row] for row in z]
        heat.update(text=text, texttemplate="%{text}", textfont={"size": 11})
    fig = go.Figure(heat)
    kept = "" if len(rows) == total_rows else f" (top {len(rows)} of {total_rows} teacher classes)"
    fig.update_layout(
        title=title or (_KIND_TITLES.get(shown.kind, shown.kind) + kept),
        xaxis={"title": "target class", "side": "bottom", "tickangle": -30 if len(cols) > 6 else 0,
               "automargin": True, "type": "category"},
        yaxis={"title": "teacher class", "autorange": "reversed", "automargin": True, "type": "category"},
        height=int(min(1600, max(360, 26 * len(rows) + 200))),
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    return fig


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without mass stay zero): where a teacher class's mass goes."""
    m = np.asarray(matrix, dtype=np.float64)
    s = m.sum(axis=1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def class_sources(lm: LabeledMatrix, target_class: str, top_k: int = 10) -> go.Figure:
    """Which teacher classes feed one target class: its column of the plan (or joint), as shares."""
    if target_class not in lm.cols:
        raise ValueError(f"unknown target class {target_class!r}")
    j = lm.cols.index(target_class)
    col = np.asarray(lm.matrix, dtype=np.float64)[:, j]
    total = col.sum()
    order = np.argsort(-col, kind="stable")[:top_k]
    order = order[col[order] > 1e-9 * max(total, 1e-300)] if total > 0 else order  # only classes that feed it
    share = col[order] / total if total > 0 else np.zeros(len(order))
    names = unique_labels([lm.rows[i] for i in order])
    fig = go.Figure(go.Bar(
        x=share.tolist(), y=names, orientation="h", marker_color=OTHER_COLOUR,
        text=[f"{s:.1%}" for s in share], textposition="auto",
        hovertemplate="teacher class: %{y}<br>share of the target class: %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(
        title=f"Teacher classes feeding '{target_class}' (top {len(order)} by {lm.kind} mass)",
        xaxis={"title": f"share of the target class's {lm.kind} mass", "tickformat": ".0%"},
        yaxis={"autorange": "reversed", "automargin": True},
        height=max(240, 30 * len(order) + 110), margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def image_top5(teacher_classes: Sequence[str], probs: Sequence[float], title: str = "") -> go.Figure:
    """One image's top teacher classes and their probabilities."""
    names = unique_labels(teacher_classes)
    fig = go.Figure(go.Bar(
        x=list(map(float, probs)), y=names, orientation="h", marker_color=OTHER_COLOUR,
        text=[f"{p:.1%}" for p in probs], textposition="auto",
        hovertemplate="teacher class: %{y}<br>probability: %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(title=title or "Top teacher classes", xaxis={"tickformat": ".0%", "title": "probability"},
                      yaxis={"autorange": "reversed", "automargin": True},
                      height=max(220, 34 * len(names) + 100), margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def image_flow(teacher_classes: Sequence[str], probs: Sequence[float], plan: LabeledMatrix,
               true_label: str | None = None, title: str = "") -> go.Figure:
    """One image: its top teacher classes (bar length = probability), each bar split by where the plan
    sends that class's mass (row-normalised plan), and the mass arriving at each target class.

    ``teacher_classes`` must be row names of ``plan``.
    """
    index = {name: i for i, name in enumerate(plan.rows)}
    missing = [c for c in teacher_classes if c not in index]
    if missing:
        raise ValueError(f"teacher classes not in the plan: {', '.join(map(str, missing[:3]))}")
    routes = row_normalised(plan.matrix)[[index[c] for c in teacher_classes]]  # (k, K_s)
    p = np.asarray(probs, dtype=np.float64)
    flows = routes * p[:, None]
    arriving = flows.sum(axis=0)
    names = unique_labels(teacher_classes)
    colours = palette(len(plan.cols))
    right_title = "mass arriving at each target class" + ("<br>(true label outlined)" if true_label is not None else "")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.16,
                        subplot_titles=("top teacher classes, split by where the plan sends them", right_title))
    for j, target in enumerate(plan.cols):
        if not np.any(flows[:, j] > 1e-9):
            continue
        fig.add_trace(go.Bar(
            x=flows[:, j].tolist(), y=names, orientation="h", name=str(target), marker_color=colours[j],
            legendgroup=str(target), customdata=routes[:, j].tolist(),
            hovertemplate="teacher class: %{y}<br>to target class: %{fullData.name}"
                          "<br>mass: %{x:.1%} (%{customdata:.0%} of the class)<extra></extra>",
        ), row=1, col=1)
    bar_colours = [colours[j] for j in range(len(plan.cols))]
    line = [3 if true_label is not None and c == true_label else 0 for c in plan.cols]
    fig.add_trace(go.Bar(
        x=arriving.tolist(), y=unique_labels(plan.cols), orientation="h", marker={"color": bar_colours,
                                                                        "line": {"width": line, "color": "black"}},
        showlegend=False, text=[f"{a:.1%}" for a in arriving], textposition="outside", cliponaxis=False,
        hovertemplate="target class: %{y}<br>mass from the top classes: %{x:.1%}<extra></extra>",
    ), row=1, col=2)
    fig.update_layout(
        barmode="stack", title=title or "Where this image's teacher prediction goes",
        height=max(320, 34 * max(len(names), len(plan.cols)) + 160), margin={"l": 10, "r": 10, "t": 90, "b": 40},
        legend={"title": {"text": "to target class"}, "orientation": "h", "y": -0.18, "x": 0},
    )
    fig.update_xaxes(tickformat=".0%")
    # Explicit ranges: plotly's autorange ignores labels drawn outside the bars, so the longest bar's label
    # (e.g. "54.9%") ran past the axis; the right axis leaves room for it.
    fig.update_xaxes(range=[0.0, _axis_end(float(flows.sum(axis=1).max(initial=0.0)), 1.05)], row=1, col=1)
    fig.update_xaxes(range=[0.0, _axis_end(float(arriving.max(initial=0.0)), 1.3)], row=1, col=2)
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def _axis_end(longest: float, room: float) -> float:
    """The end of a [0, end] value axis: the longest bar plus ``room`` for its label, never empty."""
    return max(longest * room, 0.05)


# ------------------------------------------------------------------------------------------------
# Distillation runs
# ------------------------------------------------------------------------------------------------


def training_curves(runs: Sequence[Mapping], title: str = "Training curves") -> go.Figure:
    """Train loss and validation accuracy per epoch, one colour per run (``{"label", "history"}``)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "validation accuracy"),
                        horizontal_spacing=0.1)
    colours = palette(max(1, len(runs)))
    for colour, run in zip(colours, runs):
        history = list(run.get("history") or [])
        label = str(run.get("label", "run"))
        epochs = [h.get("epoch") for h in history]
        dash = "dash" if run.get("baseline") else "solid"
        common = {"mode": "lines+markers", "line": {"color": colour, "dash": dash}, "legendgroup": label,
                  "name": label}
        fig.add_trace(go.Scatter(x=epochs, y=[h.get("train_loss") for h in history], **common,
                                 hovertemplate="%{fullData.name}<br>epoch %{x}<br>loss %{y:.4f}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=epochs, y=[h.get("val_acc") for h in history], **common, showlegend=False,
                                 hovertemplate="%{fullData.name}<br>epoch %{x}<br>val acc %{y:.1%}<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=1 if max((len(r.get("history") or []) for r in runs), default=0) <= 20
                     else None)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", tickformat=".0%", rangemode="tozero", row=1, col=2)
    fig.update_layout(title=title, height=380, margin={"l": 10, "r": 10, "t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def run_comparison(runs: Sequence[Mapping], baseline: float | None = None, metric: str = "val_acc") -> go.Figure:
    """Final accuracy per run (or per group of seeds) as bars, with the ``ce`` baseline as a dashed line.

    Each entry is ``{"label", metric}``, optionally with ``"error"`` (a std over seeds, drawn as an
    error bar) and ``"baseline": True`` for ``ce``.
    """
    labels = unique_labels([str(r.get("label", "run")) for r in runs])
    values = [float(r.get(metric)) if r.get(metric) is not None else np.nan for r in runs]
    errors = [float(r["error"]) if r.get("error") is not None else 0.0 for r in runs]
    colours = [BASELINE_COLOUR if r.get("baseline") else OTHER_COLOUR for r in runs]
    if any("best" in r for r in runs):  # the caller decided (e.g. no best in a tie)
        colours = [BEST_COLOUR if r.get("best") else c for r, c in zip(runs, colours)]
    elif values and not all(np.isnan(values)):
        best = int(np.nanargmax(values))
        colours[best] = BEST_COLOUR
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=colours, text=[f"{v:.1%}" for v in values],
                           textposition="auto", hovertemplate="%{x}<br>accuracy: %{y:.1%}<extra></extra>",
                           width=[min(0.8, 0.25 * max(1, len(labels)))] * len(labels),
                           error_y={"type": "data", "array": errors, "visible": any(errors)}))
    if baseline is not None and np.isfinite(baseline):
        fig.add_hline(y=baseline, line_dash="dash", line_color=BASELINE_COLOUR,
                      annotation_text=f"ce baseline {baseline:.1%}", annotation_position="top left")
    name = {"val_acc": "validation accuracy", "test_acc": "test accuracy"}.get(metric, metric)
    fig.update_layout(title=f"Final {name} per run (best highlighted)",
                      yaxis={"tickformat": ".0%", "rangemode": "tozero", "title": name},
                      xaxis={"automargin": True}, height=360, margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def validation_scatter(report: Mapping, higher_is_better: Mapping[str, bool] | None = None) -> go.Figure:
    """Score against student accuracy, one panel per metric, weighted tau in each panel's title.

    ``report`` is :func:`scd_core.assess.validate.validate`'s result: per teacher its ``scores`` and the
    mean and spread of its students' accuracies (error bars), per metric its ``weighted_tau``. A good
    metric puts its points on a rising line (for a lower-is-better metric, a falling one: the axis title
    says which). ``higher_is_better`` maps metric names to directions (default: the metric registry).
    """
    from scd_core.assess.metrics import METRICS

    rows = list(report.get("teachers") or [])
    metrics = list(report.get("metrics") or {})
    if not metrics:
        return go.Figure()
    hib = dict(higher_is_better or {})
    for m in metrics:
        hib.setdefault(m, METRICS[m].higher_is_better if m in METRICS else True)
    cols = min(3, len(metrics))
    n_rows = -(-len(metrics) // cols)

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    titles = [f"{m}: weighted tau {fmt(report['metrics'][m].get('weighted_tau'))}" for m in metrics]
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.16 if n_rows > 1 else 0.1)
    names = [str(r["name"]) for r in rows]
    acc = [r.get("accuracy_mean") for r in rows]
    err = [r.get("accuracy_std") or 0.0 for r in rows]
    colours = palette(max(1, len(rows)))
    for i, m in enumerate(metrics):
        row, col = i // cols + 1, i % cols + 1
        x = [(r.get("scores") or {}).get(m) for r in rows]
        fig.add_trace(go.Scatter(
            x=x, y=acc, mode="markers+text", text=names, textposition="top center", textfont={"size": 9},
            marker={"size": 9, "color": colours}, error_y={"type": "data", "array": err, "visible": True},
            name=m, showlegend=False,
            hovertemplate="%{text}<br>score %{x:.4f}<br>accuracy %{y:.1%}<extra>" + m + "</extra>"),
            row=row, col=col)
        fig.update_xaxes(title_text=f"{m} ({direction_label(hib[m])})", row=row, col=col)
        fig.update_yaxes(title_text="student accuracy" if col == 1 else None, tickformat=".0%", row=row, col=col)
    split = report.get("accuracy_split", "test")
    fig.update_layout(
        title=(f"Does the ranking match distillation? Score vs {split} accuracy of the "
               f"`{report.get('method', 'scd')}` student ({report.get('seeds', '?')} seeds, mean +- std)"),
        height=330 * n_rows + 80, margin={"l": 10, "r": 10, "t": 90, "b": 40})
    return fig


def write_figure(fig: go.Figure, path: str) -> str:
    """Write ``fig`` as a self-contained HTML page (plotly.js embedded, works offline) or, with kaleido, PNG."""
    from scd_core.errors import ScdError

    out = check_report_path(path)
    if out.suffix.lower() in (".html", ".htm"):
        fig.write_html(str(out), include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    else:
        try:
            fig.write_image(str(out), width=1200, height=int(fig.layout.height or 600), scale=1)
        except (ImportError, ValueError, RuntimeError) as exc:
            raise ScdError(f"could not write {out.name} as PNG ({exc}); install kaleido, or write an .html report"
                           ) from exc
    return str(out)


def check_report_path(path: str) -> Path:
    """The report's path, or a :class:`ScdError` naming the file when its type or folder will not do."""
    from scd_core.errors import ScdError

    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm", ".png"):
        raise ScdError(f"report {out.name}: use a .html (or, with kaleido installed, .png) file name")
    if not out.parent.is_dir():
        raise ScdError(f"report {out.name}: its folder does not exist")
    return out
