"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page, the demo flow end to end,
uploads (a real zip of PNG files, broken zips, teacher zips), background runs and session isolation."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
from helpers import make_teacher, make_zip, write_image, write_image_folder, zip_bytes
from streamlit.testing.v1 import AppTest

from scd_core.demo.worlds import ensure_world
from scd_core.runtime.jobs import JobStatus, default_store
from scd_core.runtime.workspace import workspace_dir

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
SHAPES_CLASSES = ["blue square", "blue triangle", "green circle", "green triangle", "red circle", "red square"]


@pytest.fixture(scope="module", autouse=True)
def demo_world():
    """The small ``shapes`` world in the session workspace (built once, shared with other tests)."""
    return ensure_world("shapes")


def new_app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def clean(at: AppTest) -> AppTest:
    """Fail on an uncaught exception (a traceback shown to the user)."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def headers(at: AppTest) -> list[str]:
    return [h.value for h in at.header]


def plotly_specs(at: AppTest) -> list[str]:
    return [chart.proto.spec for chart in at.get("plotly_chart")]


def upload_target(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="w_target_source").set_value("Upload a .zip").run()
    at.file_uploader(key="w_target_upload").set_value((name, data, "application/zip"))
    return clean(at.run())


def wait_for_runs(at: AppTest, limit: float = 600) -> AppTest:
    """Drive the polling fragment with ``run()`` until no run is in progress (runs start in a worker process,
    which imports torch first: slow on a loaded machine)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        clean(at.run())
        if not any(s.value.startswith(("Running (", "Queued (")) for s in at.subheader):
            return clean(at.run())
        time.sleep(0.5)
    raise AssertionError("runs did not finish in time")


def test_home_starts_on_the_demo_world():
    at = clean(new_app().run())
    assert "Target set: demo world 'shapes'" in headers(at)
    counts = at.dataframe[0].value
    assert list(counts.index) == SHAPES_CLASSES and set(counts.columns) >= {"train", "val", "test", "total"}
    assert len(at.get("image")) >= len(SHAPES_CLASSES)  # thumbnail grid
    assert any("Device in use" in m.value for m in at.sidebar.markdown)
    assert not errors(at)


def test_demo_flow_end_to_end():
    at = clean(new_app().run())

    at.switch_page("pages/teachers.py")
    clean(at.run())
    teachers = at.dataframe[0].value
    assert len(teachers) == 7 and {"near_identical", "superset", "untrained"} <= set(teachers.index)
    assert set(teachers.columns) >= {"architecture", "classes", "description"}

    ranked(at)
    assert not errors(at)
    assert any("Best teacher by **scd**" in s.value for s in at.success)
    ranking = at.dataframe[0].value
    assert len(ranking) == 7 and "scd ↑" in ranking.columns and "leep ↑" in ranking.columns
    assert any("higher is better" in spec for spec in plotly_specs(at))
    assert any(d.label == "Download ranking (CSV)" for d in at.get("download_button"))
    at.selectbox(key="w_rank_by").set_value("leep")
    clean(at.run())
    assert any("Best teacher by **leep**" in s.value for s in at.success)
    at.checkbox(key="w_rank_budget_on").check()
    clean(at.run())  # the switch sits outside the form: it enables the slider at once
    at.slider(key="w_rank_budget").set_value(0.5)
    button(at, "Rank teachers").click()
    clean(at.run())
    budgeted = at.dataframe[0].value
    assert "round" in budgeted.columns and budgeted["images"].min() < budgeted["images"].max()  # successive halving
    # on half the images, near_identical and superset stay within each other's 95% scd intervals
    at.selectbox(key="w_rank_by").set_value("scd")
    clean(at.run())
    by_scd = at.dataframe[0].value
    assert "scd 95% interval" in by_scd.columns and set(by_scd.index[by_scd["near tie"] != ""]) <= {"superset",
                                                                                                   "near_identical"}
    assert "≈ best" in set(by_scd["near tie"])
    assert any("Distill both, or label more images" in w.value for w in at.warning)

    at.switch_page("pages/transport_plans.py")
    clean(at.run())
    heatmap = plotly_specs(at)[0]
    assert all(f'"{name}"' in heatmap for name in SHAPES_CLASSES)  # both axes carry class names
    assert "hovertemplate" in heatmap and "teacher class" in heatmap
    at.selectbox(key="w_plan_teacher").set_value("superset")
    at.radio(key="w_plan_kind").set_value("cost")
    clean(at.run())
    heatmap = plotly_specs(at)[0]
    assert '"yellow star"' in heatmap and '"red circle"' in heatmap and "cost C" in heatmap
    assert len(plotly_specs(at)) == 3  # heatmap, class drill-down, image drill-down
    at.selectbox(key="w_plan_class").set_value("green circle")
    clean(at.run())
    assert "green circle" in plotly_specs(at)[1]

    at.switch_page("pages/distill.py")
    clean(at.run())
    at.multiselect(key="w_dist_teachers").set_value(["near_identical"])
    at.multiselect(key="w_dist_methods").set_value(["scd", "ce"])
    at.selectbox(key="w_dist_student").set_value("test_resnet")
    at.number_input(key="w_dist_epochs").set_value(1)
    at.number_input(key="w_dist_seeds").set_value(1)
    button(at, "Start runs").click()
    clean(at.run())
    wait_for_runs(at)
    assert not errors(at)
    assert "Compare against the ce baseline" in headers(at) and "Run history (this session)" in headers(at)
    compared = next(df.value for df in at.dataframe if "Δ val vs ce [95% interval]" in df.value.columns)
    scd_row = compared[compared["teacher · method"].str.startswith("scd ← near_identical")].iloc[0]
    assert scd_row["runs"] == 1 and "validation images, one image = " in scd_row["verdict"]
    assert any("Single-seed runs" in w.value for w in at.warning)  # the interval covers the split's noise only
    # the adaptive lambda the run used is shown, with how it was set
    assert compared.loc[compared["teacher · method"].str.startswith("ce"), "teacher λ"].iloc[0] == "—"
    note = next(c.value for c in at.caption if c.value.startswith("**scd ← near_identical, adaptive λ**: "))
    assert note.split(": ", 1)[1].startswith(f"λ {scd_row['teacher λ']}") and "labeled train images" in note
    # and the weight per teacher class behind it: every class labeled images fell in, with its evidence
    per_class = next(df.value for df in at.dataframe if "teacher class" in df.value.columns)
    assert list(per_class.columns) == ["teacher class", "labeled images", "training images", "weight"]
    judged = int(re.search(r"of (\d+) labeled train images", note).group(1))
    assert per_class["labeled images"].sum() == judged and len(per_class) >= 1
    history = at.dataframe[-1].value
    assert sorted(history["status"]) == ["finished", "finished"]
    assert any("validation accuracy" in spec for spec in plotly_specs(at))  # training curves
    assert any(d.label == "Download student (.zip)" for d in at.get("download_button"))
    # widget values survive a page switch
    at.switch_page("pages/ranking.py")
    clean(at.run())
    at.switch_page("pages/distill.py")
    clean(at.run())
    assert at.selectbox(key="w_dist_student").value == "test_resnet"


def test_upload_of_a_real_zip_of_png_files(tmp_path):
    folder = write_image_folder(tmp_path / "flowers", {"daisy": 5, "rose": 5, "tulip": 5}, size=16, fmt="png")
    data = make_zip(folder, tmp_path / "flowers.zip", prefix="flowers").read_bytes()
    at = upload_target(clean(new_app().run()), "flowers.zip", data)
    assert not errors(at)
    assert "Target set: upload 'flowers.zip'" in headers(at)
    limits = next(c.value for c in at.caption if c.value.startswith("Limits:"))  # read from the settings
    assert "100,000 files" in limits and "2 GiB uncompressed" in limits and "64 megapixels" in limits
    assert ".png" in limits and ".tiff" in limits
    assert list(at.dataframe[0].value.index) == ["daisy", "rose", "tulip"]
    ranked(at)
    assert not errors(at) and len(at.dataframe[0].value) == 7


def _session_uploads(at: AppTest) -> list[Path]:
    folder = workspace_dir() / "sessions" / at.session_state["scd_session"] / "targets"
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


def test_broken_uploads_show_a_readable_error_and_leave_nothing(tmp_path):
    png = write_image(tmp_path / "a.png", 16).read_bytes()
    cases = {
        "one_class.zip": (zip_bytes({f"d/cat/{i}.png": png for i in range(3)}), "only one class"),
        "corrupt.zip": (zip_bytes({"d/cat/0.png": png, "d/cat/1.png": png[:40], "d/dog/0.png": png,
                                   "d/dog/1.png": png}), "1.png"),
        "not_a_zip.zip": (b"this is not a zip archive", "not a valid zip archive"),
        "traversal.zip": (zip_bytes({"../evil/0.png": png, "d/cat/0.png": png}), "escapes"),
    }
    at = clean(new_app().run())
    for name, (data, expected) in cases.items():
        at = upload_target(at, name, data)
        shown = errors(at)
        assert shown and expected in shown[0] and "Upload refused" in shown[0], (name, shown)
        assert str(workspace_dir()) not in shown[0]  # names the file in the upload, not server folders
        assert "Target set: demo world 'shapes'" in headers(at)  # the previous target stays
        assert _session_uploads(at) == []


def test_teacher_upload_hub_name_and_removal(tmp_path):
    good = make_teacher(tmp_path / "good" / "my_teacher", 4, img_size=16, labels=["a", "b", "c", "d"],
                        description="uploaded in a test")
    good_zip = make_zip(good.parent, tmp_path / "my_teacher.zip").read_bytes()
    pickled = zip_bytes({"bad_teacher/config.json": (good / "config.json").read_bytes(),
                         "bad_teacher/pytorch_model.bin": b"\x80\x04not really a pickle"})
    at = clean(new_app().run())
    at.switch_page("pages/teachers.py")
    clean(at.run())

    at.file_uploader(key="w_teacher_upload").set_value(("bad_teacher.zip", pickled, "application/zip"))
    clean(at.run())
    assert any("safetensors" in e for e in errors(at))
    at.file_uploader(key="w_teacher_upload").set_value(("my_teacher.zip", good_zip, "application/zip"))
    clean(at.run())
    assert not errors(at), errors(at)
    table = at.dataframe[0].value
    assert "my_teacher" in table.index and table.loc["my_teacher", "classes"] == 4
    assert table.loc["my_teacher", "source"] == "upload"

    at.text_input(key="w_hub_name").set_value("resnet18.a1_in1k")
    button(at, "Add hub teacher").click()
    clean(at.run())
    table = at.dataframe[0].value
    assert table.loc["resnet18.a1_in1k", "classes"] == 1000 and table.loc["resnet18.a1_in1k", "source"] == "hub"

    at.multiselect(key="w_teacher_remove").set_value(["my_teacher", "resnet18.a1_in1k", "untrained"])
    clean(at.run())  # the button is enabled once something is selected
    button(at, "Remove").click()
    clean(at.run())
    table = at.dataframe[0].value
    assert not {"my_teacher", "resnet18.a1_in1k", "untrained"} & set(table.index) and len(table) == 6
    button(at, "Restore hidden teachers").click()
    clean(at.run())
    assert "untrained" in at.dataframe[0].value.index


def test_kd_is_refused_before_submit_with_the_engine_reason(tmp_path):
    at = clean(new_app().run())
    at.switch_page("pages/distill.py")
    clean(at.run())
    assert "kd" in at.multiselect(key="w_dist_methods").options  # near_identical has exactly the shapes classes
    assert any("**kd** only with near_identical" in c.value for c in at.caption)
    at.multiselect(key="w_dist_teachers").set_value(["superset"])
    at.multiselect(key="w_dist_methods").set_value(["kd"])
    at.selectbox(key="w_dist_student").set_value("test_resnet")
    at.number_input(key="w_dist_epochs").set_value(1)
    at.number_input(key="w_dist_seeds").set_value(1)
    button(at, "Start runs").click()
    clean(at.run())
    assert any("Nothing was started" in e and "kd ← superset" in e and "label space" in e for e in errors(at)), \
        errors(at)
    assert default_store().jobs(at.session_state["scd_session"]) == []  # refused before anything was queued

    folder = write_image_folder(tmp_path / "pets", {"cat": 4, "dog": 4}, size=16)
    at.switch_page("app.py")
    at = upload_target(clean(at.run()), "pets.zip", make_zip(folder, tmp_path / "pets.zip").read_bytes())
    at.switch_page("pages/distill.py")
    clean(at.run())
    assert "kd" not in at.multiselect(key="w_dist_methods").options  # no teacher has exactly cat and dog
    assert any("**kd** is not offered" in c.value for c in at.caption)


def test_two_sessions_see_neither_uploads_nor_runs_of_the_other(tmp_path):
    folder = write_image_folder(tmp_path / "mine", {"x": 4, "y": 4}, size=16)
    alice = upload_target(clean(new_app().run()), "mine.zip", make_zip(folder, tmp_path / "mine.zip").read_bytes())
    start_ce_runs(1, alice)

    bob = clean(new_app().run())
    assert "Target set: demo world 'shapes'" in headers(bob)
    bob.switch_page("pages/distill.py")
    clean(bob.run())
    assert "Run history (this session)" not in headers(bob)
    store = default_store()
    assert store.jobs(bob.session_state["scd_session"]) == []
    assert len(store.jobs(alice.session_state["scd_session"])) == 1
    assert alice.session_state["scd_session"] != bob.session_state["scd_session"]
    wait_for_runs(alice)


def test_server_folder_only_when_the_operator_allows_it(tmp_path, monkeypatch):
    at = clean(new_app().run())
    assert "Server folder" not in at.radio(key="w_target_source").options
    monkeypatch.setenv("SCD_ALLOW_SERVER_PATHS", "1")
    folder = write_image_folder(tmp_path / "server_target", {"p": 4, "q": 4}, size=16)
    at = clean(new_app().run())
    at.radio(key="w_target_source").set_value("Server folder").run()
    at.text_input(key="w_target_folder").set_value(str(tmp_path / "missing"))
    button(at, "Use this path").click()
    clean(at.run())
    assert any("no such file or folder" in e for e in errors(at))
    at.text_input(key="w_target_folder").set_value(str(folder))
    button(at, "Use this path").click()
    clean(at.run())
    assert any(h.startswith("Target set: server path") for h in headers(at))
    assert list(at.dataframe[0].value.index) == ["p", "q"]


def ranked(at: AppTest) -> AppTest:
    """Open the Ranking page and rank the teachers with its defaults."""
    at.switch_page("pages/ranking.py")
    clean(at.run())
    button(at, "Rank teachers").click()
    return clean(at.run())


def start_ce_runs(epochs: int, at: AppTest | None = None, **numbers: int) -> AppTest:
    """The Distill page of ``at`` (default: a new session) after starting ``ce`` runs of a tiny student (one
    seed; ``numbers``: other number inputs of the form by key suffix, e.g. ``batch=4``, ``folds=2``)."""
    at = at or clean(new_app().run())
    at.switch_page("pages/distill.py")
    clean(at.run())
    at.multiselect(key="w_dist_methods").set_value(["ce"])
    at.selectbox(key="w_dist_student").set_value("test_resnet")
    at.number_input(key="w_dist_epochs").set_value(epochs)
    at.number_input(key="w_dist_seeds").set_value(1)
    for name, value in numbers.items():
        at.number_input(key=f"w_dist_{name}").set_value(value)
    button(at, "Start runs").click()
    return clean(at.run())


def test_a_run_is_cancelled_from_the_page():
    at = start_ce_runs(400, batch=4)
    store, sid = default_store(), at.session_state["scd_session"]
    deadline = time.time() + 120
    while not store.jobs(sid)[0].history and time.time() < deadline:  # training has started
        time.sleep(0.2)
    clean(at.run())
    cancel = next(b for b in at.button if b.label == "Cancel")
    cancel.click()
    clean(at.run())
    wait_for_runs(at, limit=30)
    job = store.jobs(sid)[0]
    assert job.status is JobStatus.CANCELLED and len(job.history) < 400
    assert "cancelled" in list(at.dataframe[-1].value["status"])


def test_an_operator_configured_teacher_folder_joins_the_demo_zoo(tmp_path, monkeypatch):
    make_teacher(tmp_path / "repo" / "house_model", 2, img_size=16, labels=["x", "y"], description="in-house")
    monkeypatch.setenv("SCD_TEACHERS", str(tmp_path / "repo"))
    at = clean(new_app().run())
    at.switch_page("pages/teachers.py")
    clean(at.run())
    table = at.dataframe[0].value
    assert len(table) == 8 and table.loc["house_model", "source"] == f"folder {tmp_path / 'repo'}"
    assert table.loc["house_model", "description"] == "in-house"


def test_a_reload_with_the_session_link_returns_to_the_uploads_and_runs(tmp_path):
    folder = write_image_folder(tmp_path / "mine", {"x": 4, "y": 4}, size=16)
    at = upload_target(clean(new_app().run()), "mine.zip", make_zip(folder, tmp_path / "mine.zip").read_bytes())
    sid = at.session_state["scd_session"]
    assert at.query_params["s"] == [sid] or at.query_params["s"] == sid  # the id is in the URL
    start_ce_runs(1, at)

    # a reload: a new browser session (empty session state) opening the same link
    again = new_app()
    again.query_params["s"] = sid
    clean(again.run())
    assert again.session_state["scd_session"] == sid
    assert "Target set: upload 'mine.zip'" in headers(again)
    again.switch_page("pages/distill.py")
    wait_for_runs(clean(again.run()))
    assert "Run history (this session)" in headers(again)
    history = again.dataframe[-1].value
    assert list(history["status"]) == ["finished"]
    assert list(history["target"]) == ["upload 'mine.zip'"]  # the name the user knows, not the stored hash name
    assert history["test acc"].iloc[0] == "—" and history["val acc"].iloc[0].endswith("%")
    assert any("no test split" in c.value for c in again.caption)
    # the Distill form comes back as it was submitted
    assert again.multiselect(key="w_dist_methods").value == ["ce"]
    assert again.selectbox(key="w_dist_student").value == "test_resnet"
    assert again.number_input(key="w_dist_epochs").value == 1 and again.number_input(key="w_dist_seeds").value == 1
    assert any(b.label == "Download student (.zip)" for b in again.get("download_button"))

    # an unknown id is not adopted: a fresh session without the other's data
    stranger = new_app()
    stranger.query_params["s"] = "x" * 32
    clean(stranger.run())
    assert stranger.session_state["scd_session"] not in (sid, "x" * 32)
    assert "Target set: demo world 'shapes'" in headers(stranger)


def test_a_large_ranking_runs_in_worker_processes_with_the_same_scores(monkeypatch):
    from pages.common import cluster
    from scd_core.assess.ranking import rank

    started = []
    real_get_executor = cluster.get_executor

    def recording(name, **options):
        started.append((name, options))
        return real_get_executor(name, **options)

    monkeypatch.setattr(cluster, "get_executor", recording)
    monkeypatch.setenv("SCD_RANK_IN_WORKERS_ABOVE", "0")  # every ranking counts as large
    cluster._local_executor.clear()
    at = clean(new_app().run())
    ranked(at)
    assert not errors(at)
    assert started and started[0][0] == "local" and started[0][1]["import_main"] is False
    shown = at.dataframe[0].value
    here = rank("demo:shapes", "demo:shapes").table()
    assert list(shown.index) == list(here.index)  # same order as in the server process
    assert np.allclose(shown["scd ↑"].to_numpy(float), here["scd"].to_numpy(float), atol=1e-6)
    cluster._local_executor.clear()


def test_check_the_ranking_runs_in_the_background_and_shows_the_scatter():
    """Ranking page: "Check the ranking" queues a validate job; the finished report shows score vs accuracy."""
    at = clean(new_app().run())
    ranked(at)
    at.number_input(key="w_validate_top").set_value(2)
    at.number_input(key="w_validate_seeds").set_value(1)
    at.number_input(key="w_validate_epochs").set_value(1)
    button(at, "Check the ranking").click()
    clean(at.run())
    deadline = time.time() + 600
    while time.time() < deadline and not any("weighted tau" in spec for spec in plotly_specs(at)):
        time.sleep(1.0)
        clean(at.run())
    assert any("weighted tau" in spec for spec in plotly_specs(at)), "the check did not finish in time"
    agreement = next(df.value for df in at.dataframe if "weighted_tau" in df.value.columns)
    assert set(agreement.index) >= {"scd", "leep"}
    accuracies = next(df.value for df in at.dataframe if "student accuracy" in df.value.columns)
    assert len(accuracies) == 2 and (accuracies["seeds"] == 1).all()
    assert any("No teacher (`ce`)" in c.value for c in at.caption)


def test_k_fold_runs_are_compared_over_folds():
    """Distill with 2 cross-validation folds: one run per fold, grouped into one comparison row over folds."""
    at = start_ce_runs(1, folds=2)
    wait_for_runs(at)
    assert not errors(at)
    assert any("2-fold cross-validation" in c.value for c in at.caption)
    compared = next(df.value for df in at.dataframe if "Δ val vs ce [95% interval]" in df.value.columns)
    ce_row = compared[compared["teacher · method"].str.startswith("ce")].iloc[0]
    assert ce_row["runs"] == 2
    history = at.dataframe[-1].value
    assert {"fold 1/2", "fold 2/2"} <= {run.rsplit(" · ", 1)[-1] for run in history["run"]}


def _styles(df) -> str:
    return df.proto.arrow_data.styler.styles


def test_budgeted_ranking_shows_one_order_explains_rounds_and_the_slider_follows_the_switch():
    at = clean(new_app().run())
    at.switch_page("pages/ranking.py")
    clean(at.run())
    assert at.slider(key="w_rank_budget").disabled  # budgeting is off
    at.checkbox(key="w_rank_budget_on").check()
    clean(at.run())
    assert not at.slider(key="w_rank_budget").disabled
    at.slider(key="w_rank_budget").set_value(0.5)
    button(at, "Rank teachers").click()
    clean(at.run())
    table = at.dataframe[0]
    shown = table.value
    assert list(shown["round"]) == sorted(shown["round"], reverse=True)  # last round first
    chart = json.loads(next(spec for spec in plotly_specs(at) if "per teacher" in spec))
    assert chart["data"][0]["y"] == list(shown.index)  # the chart has the table's order
    assert any("**Rounds** (successive halving)" in c.value and "keeps that round's score" in c.value
               for c in at.caption)
    styles = _styles(table)
    assert "#ffd8d8" not in styles and "font-weight: bold" in styles
    last = [i for i, images in enumerate(shown["images"]) if images == shown["images"].max()]
    highlighted = {int(cell.split("_row")[1].split("_")[0]) for cell in re.findall(r"_row\d+_col\d+", styles)}
    assert highlighted and highlighted <= set(last)  # best only among teachers scored on the most images


def _next_link(at: AppTest):
    return next(link for link in at.get("page_link") if link.proto.label.startswith("Next:"))


def _follow(at: AppTest, link) -> AppTest:
    """What a click on a page link does: open its page with its query parameters."""
    for name, values in parse_qs(link.proto.query_string).items():
        at.query_params[name] = values[0]
    at.switch_page(f"pages/{link.proto.page}.py")  # the proto names the page by its URL path
    return clean(at.run())


def test_next_links_open_the_next_page_with_their_teacher_preselected():
    at = clean(new_app().run())
    ranked(at)
    best = str(at.dataframe[0].value.index[0])
    link = _next_link(at)
    assert best in link.proto.label and parse_qs(link.proto.query_string)["teacher"] == [best]
    at.selectbox(key="w_rank_by").set_value("nce")  # another best, so the link is what decides
    clean(at.run())
    best = str(at.dataframe[0].value.index[0])
    at = _follow(at, _next_link(at))
    assert at.selectbox(key="w_plan_teacher").value == best

    at.selectbox(key="w_plan_teacher").set_value("shape_only")
    clean(at.run())
    link = _next_link(at)
    assert link.proto.label == "Next: distill shape_only into a student"
    at = _follow(at, link)
    assert at.multiselect(key="w_dist_teachers").value == ["shape_only"]
    assert "teacher" not in at.query_params  # taken once: a later choice of the user is not overridden


def test_image_drill_down_filters_by_class_and_picks_from_thumbnails():
    at = clean(new_app().run())
    at.switch_page("pages/transport_plans.py")
    clean(at.run())
    at.selectbox(key="w_plan_image_class").set_value("red square")
    clean(at.run())
    image = at.selectbox(key="w_plan_image")
    assert image.options and all(option.endswith("(red square)") for option in image.options)
    picks = [b for b in at.button if b.key and b.key.startswith("w_plan_pick_")]
    assert len(picks) == len(image.options) and picks[0].disabled  # one thumbnail per image, the shown one marked
    picks[1].click()
    clean(at.run())
    assert at.selectbox(key="w_plan_image").index == 1
    assert next(b for b in at.button if b.key == picks[1].key).disabled
    assert len(plotly_specs(at)) == 3 and "red square" in plotly_specs(at)[2]


def _sidebar_text(at: AppTest) -> str:
    return " ".join([m.value for m in at.sidebar.markdown] + [c.value for c in at.sidebar.caption])


def test_the_sidebar_follows_the_target_at_once_and_an_upload_says_which_teachers_it_gets(tmp_path):
    ensure_world("digits")  # built here, so the switch below does not wait for a background build
    at = clean(new_app().run())
    assert "demo world 'shapes'" in _sidebar_text(at) and "demo zoo 'shapes'" in _sidebar_text(at)
    at.selectbox(key="w_demo_world").set_value("digits")
    clean(at.run())
    assert "Target set: demo world 'digits'" in headers(at)
    assert "demo world 'digits'" in _sidebar_text(at) and "demo zoo 'digits'" in _sidebar_text(at)  # same run

    folder = write_image_folder(tmp_path / "flowers", {"daisy": 4, "rose": 4, "tulip": 4}, size=16)
    at = upload_target(at, "flowers.zip", make_zip(folder, tmp_path / "flowers.zip").read_bytes())
    assert "upload 'flowers.zip'" in _sidebar_text(at)  # the sidebar names the upload in the same run
    assert any("Teachers for this target:** demo zoo 'digits'" in m.value for m in at.markdown)
    assert any("look unrelated to your classes" in w.value and "label name only" in w.value for w in at.warning)
    assert at.selectbox(key="w_upload_zoo").value == "keep the current teachers"

    # a teacher chosen in the digits zoo is not kept when its name names another zoo's teacher
    at.switch_page("pages/transport_plans.py")
    clean(at.run())
    at.selectbox(key="w_plan_teacher").set_value("untrained")
    clean(at.run())
    at.switch_page("app.py")
    clean(at.run())
    at.selectbox(key="w_upload_zoo").set_value("shapes")
    clean(at.run())
    assert "demo zoo 'shapes'" in _sidebar_text(at)
    assert any("Teachers for this target:** demo zoo 'shapes'" in m.value for m in at.markdown)
    assert at.selectbox(key="w_upload_zoo").value == "keep the current teachers"
    at.switch_page("pages/transport_plans.py")
    clean(at.run())
    assert at.selectbox(key="w_plan_teacher").value != "untrained"  # shapes' untrained is another teacher


def test_the_build_notice_gives_the_measured_time_and_offers_the_small_version(tmp_path, monkeypatch, demo_world):
    """A server whose demo worlds are full size, none built yet: the notice states the measured build time, a
    button switches this session to the small version (already built here), and once a world is ready the
    other one is queued to be built ahead of need at low priority."""
    from scd_core.demo.worlds import world_dir
    from scd_core.runtime.jobs import BACKGROUND, SHARED_SESSION

    monkeypatch.setenv("SCD_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("SCD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCD_DEMO_SIZE", "full")
    monkeypatch.setenv("SCD_DEMO_PREBUILD", "1")
    shutil.copytree(demo_world.root, world_dir("shapes", "small"))
    store = default_store()
    at = clean(new_app().run())
    notice = next(i.value for i in at.info if "Building the demo world" in i.value)
    assert "full version" in notice and "about 70 s" in notice and "3 min" in notice
    small = next(b for b in at.button if b.label.startswith("Build the small version instead"))
    small.click()
    clean(at.run())
    full = store.find(SHARED_SESSION, "demo:shapes:full")
    store.request_cancel(full.id)  # not needed by this test: stop it
    assert "Target set: demo world 'shapes' (small version)" in headers(at)
    assert at.session_state["target_spec"] == "demo:shapes@small"  # runs and workers resolve the same world
    assert "(small version)" in _sidebar_text(at)
    ahead = store.find(SHARED_SESSION, "demo:digits:small")
    assert ahead is not None and ahead.lane == BACKGROUND
    store.request_cancel(ahead.id)
    at.switch_page("pages/teachers.py")
    clean(at.run())
    assert len(at.dataframe[0].value) == 7  # the small zoo of shapes


def test_every_widget_kept_across_pages_is_also_restored_after_a_reload():
    """A widget created with ``**ui.PERSIST`` keeps its value across page switches; a reload restores exactly
    the widgets in ``ui.RESTORED_WIDGETS``. The two must name the same widgets, or a reload loses a form value."""
    import ast

    from pages.common import ui

    persisted = set()
    pages = Path(__file__).resolve().parents[1] / "pages"
    for path in [*pages.glob("*.py"), *(pages / "common").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            spread = [k.value for k in node.keywords if k.arg is None]
            if any(isinstance(v, (ast.Attribute, ast.Name)) and getattr(v, "attr", getattr(v, "id", "")) == "PERSIST"
                   for v in spread):
                key = next(k.value for k in node.keywords if k.arg == "key")
                assert isinstance(key, ast.Constant), f"{path}:{node.lineno}: a persisted widget needs a literal key"
                persisted.add(key.value)
    assert len(persisted) > 20  # the scan found the pages' widgets
    assert persisted == set(ui.RESTORED_WIDGETS)


@pytest.mark.parametrize(("kept", "shown"), [(99, "all"), ("junk", 4)])
def test_a_kept_teacher_count_out_of_the_ranking_check_range_is_clamped_or_dropped(kept, shown):
    """A reload or page switch can bring back a count from a ranking of more teachers (or a value that is no
    number): the ranking check clamps it to this ranking's teachers (or drops it for the default)."""
    at = clean(new_app().run())
    at.session_state["w_validate_top"] = kept
    ranked(at)
    teachers = len(at.dataframe[0].value)
    top = at.number_input(key="w_validate_top")
    assert top.value == (teachers if shown == "all" else min(teachers, shown))
    assert top.max == teachers
