"""The command line contract: JSON keys, CSV export, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_teacher, write_image_folder

from scd_core.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    target = write_image_folder(root / "target", {"cat": 5, "dog": 5, "fox": 5}, size=16)
    make_teacher(root / "repo" / "wide", 6, img_size=16, seed=0)
    make_teacher(root / "repo" / "narrow", 2, img_size=16, seed=1)
    return str(target), str(root / "repo"), root


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "scd_core", "--quiet", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_rank_json_follows_the_contract(paths):
    target, repo, root = paths
    out = root / "rank.json"
    assert main(["--quiet", "rank", "--target", target, "--repo", repo, "--metrics", "scd,leep,logme",
                 "--device", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"target", "metrics", "teachers", "timing"}
    assert data["metrics"]["scd"] == {"higher_is_better": True, "description": data["metrics"]["scd"]["description"]}
    assert [t["name"] for t in data["teachers"]] != [] and {t["name"] for t in data["teachers"]} == {"wide", "narrow"}
    scds = [t["scores"]["scd"] for t in data["teachers"]]
    assert scds == sorted(scds, reverse=True)  # best first by the first metric (higher is better)
    assert all(isinstance(t["num_classes"], int) for t in data["teachers"])


def test_plan_json_and_csv(paths):
    target, repo, root = paths
    out, csv = root / "plan.json", root / "plan.csv"
    assert main(["--quiet", "plan", "--target", target, "--repo", repo, "--teacher", "wide", "--kind", "joint",
                 "--csv", str(csv), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["cols"] == ["cat", "dog", "fox"] and len(data["rows"]) == 6
    assert len(data["matrix"]) == 6 and len(data["matrix"][0]) == 3
    assert abs(sum(map(sum, data["matrix"])) - 1) < 1e-6
    frame = pd.read_csv(csv, index_col=0)
    assert list(frame.columns) == ["cat", "dog", "fox"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["rank", "--target", "/nonexistent/target", "--repo", "{repo}"], "no such file"),
        (["rank", "--target", "{target}", "--repo", "{repo}", "--metrics", "vibes"], "unknown metric"),
        (["plan", "--target", "{target}", "--repo", "{repo}", "--teacher", "ghost"], "no teacher named"),
        (["rank", "--target", "{target}", "--repo", "/nonexistent/repo"], "does not exist"),
        (["distill", "--target", "{target}", "--repo", "{repo}", "--teacher", "wide", "--method", "kd",
          "--student", "test_resnet", "--epochs", "1"], "label space"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(paths, args, fragment):
    target, repo, _ = paths
    proc = _run(*[a.format(target=target, repo=repo) for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_distill_command_writes_history_and_student(paths):
    target, repo, root = paths
    out = root / "distill.json"
    code = main(["--quiet", "distill", "--target", target, "--repo", repo, "--teacher", "wide", "--method", "scd",
                 "--student", "test_resnet", "--epochs", "2", "--out", str(root / "run"), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert [h["epoch"] for h in data["history"]] == [1, 2]
    assert set(data["history"][0]) == {"epoch", "train_loss", "val_acc"}
    assert Path(data["student_dir"], "model.safetensors").is_file()


def test_validate_writes_a_scatter_report(paths):
    target, repo, root = paths
    report, out = root / "check.html", root / "validate.json"
    res = _run("validate", "--target", target, "--repo", repo, "--metrics", "scd,leep", "--seeds", "1",
               "--epochs", "1", "--device", "cpu", "--report", str(report), "--json", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["report"] == str(report) and {t["name"] for t in data["teachers"]} == {"wide", "narrow"}
    html = report.read_text()
    assert "scd: weighted tau" in html and "leep: weighted tau" in html and "narrow" in html


def test_validate_refuses_a_bad_report_name_before_training(paths):
    target, repo, root = paths
    res = _run("validate", "--target", target, "--repo", repo, "--seeds", "1", "--epochs", "1",
               "--report", str(root / "check.docx"))
    assert res.returncode != 0 and "check.docx" in res.stderr and "Traceback" not in res.stderr
