"""Only ScdError is input feedback; any other exception is a bug: its traceback is logged under a short id
and the user sees an "internal error (id ...)" note, in the CLI and in the app. The CLI's --device
defaults to SCD_DEVICE."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_teacher, write_image_folder, zip_bytes
from streamlit.testing.v1 import AppTest

import scd_core.assess.ranking as ranking
from scd_core.cli.main import main
from scd_core.errors import TargetSetError
from scd_core.incidents import log_path, user_message

ROOT = Path(__file__).resolve().parents[1]
NOTE = re.compile(r"internal error \(id ([0-9a-f]{8})\)")


def _broken(*args, **kwargs):
    raise RuntimeError("secret internals at /srv/private")


def _logged(incident: str, path: Path | None = None) -> str:
    """The log entry of ``incident`` (fails when it is not there)."""
    text = (path or log_path()).read_text()
    start = text.index(f"--- internal error {incident} ")
    end = text.find("--- internal error ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    target = write_image_folder(root / "target", {"cat": 4, "dog": 4}, size=16)
    make_teacher(root / "repo" / "wide", 3, img_size=16, seed=0)
    return str(target), str(root / "repo")


def test_user_message_is_the_scd_error_or_a_note_with_a_logged_id():
    assert user_message(TargetSetError("pets.zip/cat/1.png: not an image")) == "pets.zip/cat/1.png: not an image"
    try:
        _broken()
    except RuntimeError as exc:
        message = user_message(exc)
    assert "secret" not in message and "/srv" not in message
    entry = _logged(NOTE.search(message).group(1))
    assert "Traceback" in entry and "_broken" in entry and "RuntimeError: secret internals" in entry
    assert user_message(ValueError("bad shape")).startswith("internal error (id ")  # not input feedback


def test_cli_bug_gives_one_line_with_an_id_and_the_log_has_the_traceback(tmp_path):
    code = ("import sys, scd_core.assess.ranking as r\n"
            "def rank(*a, **k): raise KeyError('secret internals')\n"
            "r.rank = rank\n"
            "from scd_core.cli.main import main\n"
            "sys.exit(main(['--quiet', 'rank', '--target', 'demo:shapes', '--repo', 'demo:shapes']))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SCD_WORKSPACE=str(tmp_path / "ws"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: internal error (id "), proc.stderr
    assert "secret" not in proc.stderr and "Traceback" not in proc.stderr
    log = tmp_path / "ws" / "logs" / "internal-errors.log"
    assert str(log) in lines[0]
    entry = _logged(NOTE.search(lines[0]).group(1), log)
    assert "Traceback" in entry and "in rank" in entry and "KeyError: 'secret internals'" in entry


def test_cli_input_error_is_still_exit_2(paths, capsys):
    target, repo = paths
    assert main(["--quiet", "rank", "--target", target, "--repo", repo, "--metrics", "vibes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown metric" in err and "internal error" not in err


def test_cli_device_defaults_to_scd_device(paths, monkeypatch, capsys, tmp_path):
    target, repo = paths
    seen = []
    real = ranking.rank

    def recording(*args, **kwargs):
        seen.append(kwargs["device"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ranking, "rank", recording)
    args = ["--quiet", "rank", "--target", target, "--repo", repo, "--metrics", "scd", "--json", os.devnull]
    monkeypatch.setenv("SCD_DEVICE", "cpu")
    assert main(args) == 0
    assert main([*args, "--device", "auto"]) == 0  # the option wins over the variable
    monkeypatch.delenv("SCD_DEVICE")
    assert main(args) == 0
    assert seen == ["cpu", "auto", "auto"]

    monkeypatch.setenv("SCD_DEVICE", "gpu")
    assert main(args) == 2
    assert "SCD_DEVICE='gpu' is not valid: expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    absent = "cuda" if not torch.cuda.is_available() else None
    if absent:  # the engine refuses an unavailable device named by the variable, as with --device
        monkeypatch.setenv("SCD_DEVICE", absent)
        monkeypatch.setenv("SCD_CACHE_DIR", str(tmp_path / "cache"))  # cached outputs need no device
        assert main(args) == 2
        assert "'cuda' requested but no CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The app (streamlit.testing.v1.AppTest, in this process: monkeypatched engine functions apply)
# ------------------------------------------------------------------------------------------------


def _app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def _errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]  # never a traceback in the page
    return [e.value for e in at.error]


def test_app_upload_bug_shows_an_internal_error_note(monkeypatch):
    import scd_core.runtime.session as session

    monkeypatch.setattr(session, "load_uploaded_target", _broken)
    at = _app().run()
    at.radio(key="w_target_source").set_value("Upload a .zip").run()
    at.file_uploader(key="w_target_upload").set_value(("pets.zip", zip_bytes({"cat/1.png": b"x"}),
                                                        "application/zip"))
    errors = _errors(at.run())
    refused = [e for e in errors if e.startswith("Upload refused: internal error (id ")]
    assert refused and "secret" not in " ".join(errors)
    assert "RuntimeError: secret internals" in _logged(NOTE.search(refused[0]).group(1))


def test_app_page_bug_is_caught_for_every_page(monkeypatch):
    import scd_core.demo.worlds as worlds

    monkeypatch.setattr(worlds, "world_description", _broken)
    errors = _errors(_app().run())
    assert len(errors) == 1 and NOTE.match(errors[0]) and "secret" not in errors[0]
    assert "_broken" in _logged(NOTE.match(errors[0]).group(1))


def test_app_refuses_a_bad_setting_with_its_name(monkeypatch):
    monkeypatch.setenv("SCD_DEMO_SIZE", "huge")
    errors = _errors(_app().run())
    assert errors == ["The server's configuration is invalid: SCD_DEMO_SIZE='huge' is not valid: "
                      "expected one of full, small"]
