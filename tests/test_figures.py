"""Figure builders: class names reach the plotly JSON, rows form blocks, top-k keeps big teachers readable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scd_core.assess.ranking import MetricInfo, Ranking, TeacherScore
from scd_core.ot.plans import LabeledMatrix
from scd_core.viz.figures import (
    class_sources,
    image_flow,
    image_top5,
    matrix_heatmap,
    prepare_matrix,
    ranking_bar,
    row_order,
    run_comparison,
    sort_ranking,
    training_curves,
    unique_labels,
)

TARGET = ["cat", "dog", "owl"]


def _ranking(scd: tuple[float, ...] = (0.4, 0.2, 0.3)) -> Ranking:
    leep = (-1.0, -2.0, -0.5)
    teachers = tuple(TeacherScore(name, k, 30, {"scd": s, "leep": v})
                     for name, k, s, v in zip(["a", "b", "c"], [5, 7, 3], scd, leep))
    return Ranking(teachers, {"scd": MetricInfo("scd", False), "leep": MetricInfo("leep", True)}, rank_by="scd")


def _spec(fig) -> dict:
    return json.loads(fig.to_json())


def test_ranking_bar_puts_the_best_first_highlighted_with_direction():
    table = _ranking()
    scd = _spec(ranking_bar(table, "scd"))
    assert scd["data"][0]["y"] == ["b", "c", "a"]  # lower is better
    assert scd["data"][0]["marker"]["color"][0] != scd["data"][0]["marker"]["color"][1]
    assert "lower is better" in scd["layout"]["title"]["text"]
    leep = _spec(ranking_bar(table, "leep"))
    assert leep["data"][0]["y"] == ["c", "a", "b"] and "higher is better" in leep["layout"]["title"]["text"]
    assert list(sort_ranking(table, "leep").index) == ["c", "a", "b"]
    for spec, values in ((scd, [0.2, 0.3, 0.4]), (leep, [-0.5, -1.0, -2.0])):
        bar = spec["data"][0]
        lengths = [abs(x) for x in bar["x"]]
        assert lengths == sorted(lengths, reverse=True)  # the best teacher has the longest bar
        assert np.allclose(np.array(bar["x"]) + bar["base"], values) and bar["customdata"] == values
    with pytest.raises(ValueError):
        ranking_bar(table, "logme")


def test_ranking_bar_draws_intervals_as_error_bars_and_marks_near_ties():
    teachers = (TeacherScore("a", 5, 30, {"scd": 0.9}, {"scd": (0.8, 1.0)}),
                TeacherScore("b", 5, 30, {"scd": 0.85}, {"scd": (0.7, 0.95)}),
                TeacherScore("c", 5, 30, {"scd": 0.2}, {"scd": (0.1, 0.3)}))
    bar = _spec(ranking_bar(Ranking(teachers, {"scd": MetricInfo("scd", True)}, rank_by="scd"), "scd"))["data"][0]
    assert bar["y"] == ["a", "b", "c"]
    assert np.allclose(bar["error_x"]["array"], [0.1, 0.1, 0.1]) and np.allclose(bar["error_x"]["arrayminus"],
                                                                                  [0.1, 0.15, 0.1])
    assert bar["marker"]["pattern"]["shape"] == ["", "/", ""]


def test_a_budgeted_ranking_bar_keeps_the_ranking_order_and_fades_earlier_rounds():
    """Table and chart show one order (last round first, then by score), even when a teacher dropped in an
    earlier round has a better score on its smaller subset; the best is not drawn in red."""
    teachers = (TeacherScore("early_high", 5, 10, {"scd": 0.9}, round=0),
                TeacherScore("final_low", 5, 40, {"scd": 0.5}, round=2),
                TeacherScore("final_high", 5, 40, {"scd": 0.6}, round=2),
                TeacherScore("middle", 5, 20, {"scd": 0.7}, round=1))
    ranking = Ranking(teachers, {"scd": MetricInfo("scd", True)}, rank_by="scd", budget=0.5)
    bar = _spec(ranking_bar(ranking, "scd"))["data"][0]
    order = ["final_high", "final_low", "middle", "early_high"]
    assert bar["y"] == order == list(sort_ranking(ranking, "scd").index)
    assert bar["marker"]["opacity"] == [1.0, 1.0, 0.45, 0.45]
    spec = _spec(ranking_bar(ranking, "scd"))
    assert "round 0, 10 images" in spec["layout"]["yaxis"]["ticktext"][-1] and "round 0" in bar["hovertext"][-1]
    best = bar["marker"]["color"][0]
    assert best.lower() not in ("#d62728", "red", "#ff4b4b", "#ff0000") and best != bar["marker"]["color"][1]
    assert ranking.rounds() == {0: (10, 1), 1: (20, 1), 2: (40, 2)}


def test_sort_ranking_puts_nan_last():
    table = _ranking(scd=(0.4, 0.2, np.nan))
    assert list(sort_ranking(table, "scd").index) == ["b", "a", "c"]


def test_row_order_groups_rows_into_blocks_by_favoured_column_then_mass():
    # rows: t0 -> owl (0.3), t1 -> cat (0.1), t2 -> cat (0.2), t3 -> nothing, t4 -> dog (0.25)
    m = np.array([[0, 0, 0.3], [0.1, 0, 0], [0.2, 0.01, 0], [0, 0, 0], [0, 0.25, 0.02]])
    assert list(row_order(m, "plan", "blocks")) == [2, 1, 4, 0, 3]
    assert list(row_order(m, "plan", "mass")) == [0, 4, 2, 1, 3]
    assert list(row_order(m, "plan", "original")) == [0, 1, 2, 3, 4]
    cost = 1 - m  # the cost favours its lowest column
    assert list(row_order(cost, "cost", "blocks"))[:2] == [2, 1]
    with pytest.raises(ValueError):
        row_order(m, "plan", "random")


def test_heatmap_carries_class_names_hover_values_and_blocks():
    rows = ["t_owl", "t_cat_small", "t_cat_big"]
    lm = LabeledMatrix(rows, TARGET, np.array([[0, 0, 0.4], [0.1, 0, 0], [0.5, 0, 0]]), "plan")
    spec = _spec(matrix_heatmap(lm))
    heat = spec["data"][0]
    assert heat["x"] == TARGET
    assert heat["y"] == ["t_cat_big", "t_cat_small", "t_owl"]  # cat block first, bigger mass on top
    assert "%{y}" in heat["hovertemplate"] and "%{x}" in heat["hovertemplate"] and "%{z" in heat["hovertemplate"]
    assert heat["text"][0][0] == "50.0%" and heat["text"][0][1] == ""  # empty cells stay blank
    assert spec["layout"]["yaxis"]["autorange"] == "reversed"
    cost = _spec(matrix_heatmap(LabeledMatrix(rows, TARGET, np.full((3, 3), 0.5), "cost")))
    assert cost["data"][0]["zmax"] == 1.0 and "cost" in cost["layout"]["title"]["text"]


def test_heatmap_of_a_thousand_class_teacher_keeps_the_top_k_rows():
    rng = np.random.default_rng(0)
    matrix = rng.random((1000, 3)) * 1e-4
    matrix[[7, 500, 900]] = [[0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]]
    lm = LabeledMatrix([f"imagenet_{i}" for i in range(1000)], TARGET, matrix, "plan")
    spec = _spec(matrix_heatmap(lm, top_k=40))
    heat = spec["data"][0]
    assert len(heat["y"]) == 40 and heat["y"][0] == "imagenet_7"  # heaviest row of the first block on top
    assert {"imagenet_500", "imagenet_900"} <= set(heat["y"])
    assert "top 40 of 1000" in spec["layout"]["title"]["text"]
    assert spec["layout"]["height"] <= 1600
    assert len(prepare_matrix(lm, None).rows) == 1000


def test_duplicate_labels_stay_distinct_on_the_axis():
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a #2", "a #3"]
    lm = LabeledMatrix(["x", "x"], ["cat", "dog"], np.array([[0.5, 0], [0, 0.5]]), "joint")
    assert sorted(_spec(matrix_heatmap(lm))["data"][0]["y"]) == ["x", "x #2"]


def test_class_sources_shows_only_the_feeding_classes_as_shares():
    lm = LabeledMatrix(["a", "b", "c"], TARGET, np.array([[0.2, 0, 0], [0.1, 0.3, 0], [0, 0, 0.4]]), "plan")
    spec = _spec(class_sources(lm, "cat"))
    assert spec["data"][0]["y"] == ["a", "b"]
    assert np.allclose(spec["data"][0]["x"], [2 / 3, 1 / 3])
    assert "cat" in spec["layout"]["title"]["text"]
    with pytest.raises(ValueError):
        class_sources(lm, "zebra")


def test_image_flow_splits_each_teacher_class_along_its_plan_row():
    plan = LabeledMatrix(["a", "b", "c"], TARGET, np.array([[0.2, 0.2, 0], [0, 0.3, 0], [0, 0, 0.3]]), "plan")
    spec = _spec(image_flow(["a", "b"], [0.6, 0.3], plan, true_label="dog"))
    stacked = [t for t in spec["data"] if t.get("legendgroup")]
    assert {t["name"] for t in stacked} == {"cat", "dog"}  # owl receives nothing from a or b
    total = sum(np.asarray(t["x"]) for t in stacked)
    assert np.allclose(total, [0.6, 0.3])
    arriving = spec["data"][-1]
    assert arriving["y"] == TARGET and np.allclose(arriving["x"], [0.3, 0.6, 0.0])
    with pytest.raises(ValueError):
        image_flow(["zzz"], [1.0], plan)
    # every bar and its label fit inside their axis (a 54.9% bar once ran past the right one)
    layout = spec["layout"]
    left_end, right_end = layout["xaxis"]["range"][1], layout["xaxis2"]["range"][1]
    assert layout["xaxis"]["range"][0] == 0 and left_end >= max(total) and left_end <= 1.0
    assert right_end >= 1.2 * max(arriving["x"]) and arriving["textposition"] == "outside"
    big = _spec(image_flow(["c"], [0.549], plan))  # all of c's mass goes to owl: one 54.9% bar on the right
    assert big["layout"]["xaxis2"]["range"][1] > 0.549 * 1.2 and big["data"][-1]["text"][2] == "54.9%"
    assert _spec(image_top5(["a", "b"], [0.7, 0.2]))["data"][0]["y"] == ["a", "b"]


def test_training_curves_and_comparison():
    runs = [{"label": "scd ← t", "history": [{"epoch": 1, "train_loss": 2.0, "val_acc": 0.3},
                                             {"epoch": 2, "train_loss": 1.5, "val_acc": 0.5}]},
            {"label": "ce", "history": [{"epoch": 1, "train_loss": 2.1, "val_acc": 0.2}], "baseline": True}]
    spec = _spec(training_curves(runs))
    assert len(spec["data"]) == 4  # loss and accuracy per run
    assert spec["data"][0]["y"] == [2.0, 1.5] and spec["data"][1]["y"] == [0.3, 0.5]
    assert spec["data"][2]["line"]["dash"] == "dash"
    comp = _spec(run_comparison([{"label": "scd ← t", "val_acc": 0.5}, {"label": "ce", "val_acc": 0.2,
                                                                           "baseline": True}], baseline=0.2))
    assert comp["data"][0]["x"] == ["scd ← t", "ce"]
    assert comp["layout"]["shapes"] and "ce baseline" in json.dumps(comp["layout"]["annotations"])


def _validation_report() -> dict:
    teachers = [{"name": "a", "scores": {"scd": -0.5, "scd_cost": 0.2}, "accuracy_mean": 0.8, "accuracy_std": 0.02},
                {"name": "b", "scores": {"scd": -0.9, "scd_cost": 0.4}, "accuracy_mean": 0.5, "accuracy_std": 0.05},
                {"name": "c", "scores": {"scd": -1.2, "scd_cost": 0.1}, "accuracy_mean": 0.3, "accuracy_std": 0.0}]
    return {"teachers": teachers, "method": "scd", "seeds": 3, "accuracy_split": "test",
            "metrics": {"scd": {"weighted_tau": 1.0}, "scd_cost": {"weighted_tau": None}}}


def test_validation_scatter_has_one_panel_per_metric_with_its_weighted_tau():
    from scd_core.viz.figures import validation_scatter

    spec = _spec(validation_scatter(_validation_report()))
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert titles == ["scd: weighted tau 1.00", "scd_cost: weighted tau n/a"]
    assert len(spec["data"]) == 2
    scd, cost = spec["data"]
    assert scd["x"] == [-0.5, -0.9, -1.2] and scd["y"] == [0.8, 0.5, 0.3] and scd["text"] == ["a", "b", "c"]
    assert scd["error_y"]["array"] == [0.02, 0.05, 0.0]
    assert cost["x"] == [0.2, 0.4, 0.1]
    axes = {k: v["title"]["text"] for k, v in spec["layout"].items() if k.startswith("xaxis")}
    assert "lower is better" in axes["xaxis2"] and "higher is better" in axes["xaxis"]


def test_write_figure_html_is_self_contained_and_bad_names_are_refused(tmp_path):
    from scd_core.errors import ScdError
    from scd_core.viz.figures import validation_scatter, write_figure

    out = write_figure(validation_scatter(_validation_report()), str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert out.endswith("report.html") and "scd: weighted tau 1.00" in html
    assert '<script src="https://cdn' not in html and len(html) > 1_000_000  # plotly.js embedded: opens offline
    with pytest.raises(ScdError, match=r"report\.txt"):
        write_figure(validation_scatter(_validation_report()), str(tmp_path / "report.txt"))
    with pytest.raises(ScdError, match="folder"):
        write_figure(validation_scatter(_validation_report()), str(tmp_path / "missing" / "r.html"))
