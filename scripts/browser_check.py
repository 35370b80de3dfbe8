"""Browser check: start the app headless, drive the demo flow in Chromium, save a screenshot of each page.

Setup (once; no browser is downloaded, Playwright drives Debian's Chromium):

    apt-get install -y chromium          # provides /usr/bin/chromium
    pip install playwright               # the Python package only; do NOT run `playwright install`

Run from the repository root:

    python scripts/browser_check.py [--out benchmarks/results/screenshots] [--workspace DIR] [--port 8599]

It starts ``streamlit run app.py --server.headless true --server.port N`` with ``SCD_DEMO_SIZE=small`` in a
temporary workspace (or ``--workspace``, to reuse an already built demo world), polls
``/_stcore/health``, then walks through: the demo world build (first launch) -> home page -> upload of a
real zip of PNG files -> a broken upload (error shown) -> back to the demo -> Teachers -> Ranking (rank,
then budgeted, then Check the ranking as a background job) -> its "Next" link to Transport plans (plan and
cost, drill-downs) -> its "Next" link to Distill (two tiny runs, a page switch while they run, finished
curves and comparison) -> a reload, after which the Distill form, the ranking check's epochs and the
plan page's picked image must be as they were. After every action it waits for
``[data-testid="stApp"][data-test-script-state="notRunning"]``. It fails (exit 1) when a page shows an
exception box, and writes ``report.json`` (steps, timings, errors seen) beside the screenshots.

``--runtime`` checks instead that runs survive the browser and the server: on the Distill page it starts
a run, reloads the page (the session id is in the address) and sees the run continue, waits for it to
finish, stops the server (SIGTERM) and starts a new one on the same workspace, opens the same address
and sees the finished run and its student download still there (screenshots ``runtime_*.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("streamlit did not become healthy in time")


def make_zips(folder: Path) -> tuple[Path, Path]:
    """A valid ImageFolder zip of PNG files (3 classes) and a broken one (a single class)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    good = folder / "my_flowers.zip"
    bad = folder / "one_class.zip"
    colours = {"daisy": (230, 230, 80), "rose": (200, 40, 60), "violet": (120, 60, 180)}
    with zipfile.ZipFile(good, "w") as zf:
        for name, colour in colours.items():
            for i in range(6):
                pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
                path = folder / f"{name}-{i}.png"
                Image.fromarray(pixels).save(path)
                zf.write(path, f"my_flowers/{name}/{i:02d}.png")
    with zipfile.ZipFile(bad, "w") as zf:
        for i in range(4):
            zf.write(folder / f"daisy-{i}.png", f"only/daisy/{i:02d}.png")
    return good, bad


class Driver:
    """Thin helpers over a Playwright page: wait for the app, screenshot, collect errors."""

    def __init__(self, page, out: Path) -> None:
        self.page, self.out = page, out
        self.steps: list[dict] = []
        self.t0 = time.time()

    def idle(self, timeout: float = 180) -> None:
        time.sleep(0.6)  # let a rerun start before waiting for it to end
        self.page.wait_for_selector(IDLE, timeout=timeout * 1000)
        time.sleep(0.4)

    def shot(self, name: str, note: str = "") -> None:
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        exceptions = self.page.locator('[data-testid="stException"]').all_inner_texts()
        errors = self.page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
        self.steps.append({"screenshot": path.name, "note": note, "t": round(time.time() - self.t0, 1),
                           "exceptions": exceptions, "errors": errors})
        print(f"[{time.time() - self.t0:6.1f}s] {path.name}: {note}"
              + (f"  errors={errors}" if errors else "") + (f"  EXCEPTIONS={exceptions}" if exceptions else ""),
              flush=True)

    def tall_shot(self, name: str, note: str = "", height: int = 3600) -> None:
        """A screenshot of a page longer than the window (Streamlit scrolls inside the page, so a full-page
        screenshot stops at the window): the window is made taller for it."""
        size = self.page.viewport_size
        self.page.set_viewport_size({"width": size["width"], "height": height})
        time.sleep(1.0)
        self.shot(name, note)
        self.page.set_viewport_size(size)
        time.sleep(0.5)

    def nav(self, label: str) -> None:
        self.page.get_by_test_id("stSidebarNav").get_by_text(label, exact=True).click()
        self.idle()

    def click_button(self, label: str) -> None:
        self.page.get_by_role("button", name=label).first.click()
        self.idle()

    def choose(self, widget_label: str, option: str) -> None:
        """Pick ``option`` in the selectbox labelled ``widget_label``."""
        box = self.page.get_by_test_id("stSelectbox").filter(has_text=widget_label).first
        box.click()
        self.page.get_by_role("option", name=option, exact=True).first.click()
        self.idle()

    def wait_text(self, text: str, timeout: float = 600) -> None:
        self.page.get_by_text(text).first.wait_for(timeout=timeout * 1000)


def open_app(pw, args: argparse.Namespace, base: str, out: Path):
    """Chromium on the app's address, once the app has rendered: (browser, page, driver)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1500, "height": args.height})
    d = Driver(page, out)
    page.goto(base, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    d.idle()
    return browser, page, d


def selectbox_text(page, label: str) -> str:
    """What a select box shows (its label excluded)."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True)).first
    shown = box.inner_text().removeprefix(label) + " ".join(i.input_value() for i in box.locator("input").all())
    return shown.strip()


def start_server(port: int, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def prepare(args: argparse.Namespace, stale: str, prefix: str) -> tuple[Path, Path, dict, int, str]:
    """The screenshots folder (its ``stale`` pictures removed), a temporary folder, the server's
    environment (a small demo in a fresh or given workspace), its port and base address."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(stale):
        old.unlink()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    workspace = Path(args.workspace).resolve() if args.workspace else tmp / "workspace"
    env = dict(os.environ, SCD_WORKSPACE=str(workspace), SCD_CACHE_DIR=str(workspace / "cache"),
               SCD_DEMO_SIZE="small", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    port = args.port or free_port()
    return out, tmp, env, port, f"http://127.0.0.1:{port}"


def run_runtime(args: argparse.Namespace) -> int:
    """Start a run, reload and see it continue; restart the server and see the finished run and its student."""
    from playwright.sync_api import sync_playwright

    out, tmp, env, port, base = prepare(args, "runtime_*.png", "scd-browser-runtime-")
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - closed in finally
    proc = start_server(port, env, log)
    checks: dict[str, bool] = {}
    d = None
    try:
        wait_health(base, proc)
        with sync_playwright() as pw:
            browser, page, d = open_app(pw, args, base, out)
            d.wait_text("Images per class and split", timeout=args.build_timeout)
            d.idle()
            d.nav("Distill")
            d.choose("Student architecture", "test_resnet")
            methods = page.get_by_test_id("stMultiSelect").filter(has_text="Methods").first
            for _ in range(3):  # keep only ce: one run, no teacher
                remove = methods.get_by_role("button", name="Remove scd")
                if remove.count():
                    remove.first.click()
                    d.idle()
            epochs = page.get_by_label("Epochs")
            epochs.fill(str(args.runtime_epochs))
            epochs.press("Tab")
            seeds = page.get_by_role("spinbutton", name="Seeds per run")
            seeds.fill("1")
            seeds.press("Tab")
            d.click_button("Start runs")
            d.wait_text("Running (1)", timeout=120)
            page.get_by_text(re.compile(r"epoch \d+/")).first.wait_for(timeout=300_000)  # any epoch of the run
            url = page.url
            checks["session id in the address"] = "s=" in url
            d.shot("runtime_1_running", f"a run in progress; address {url.split('?')[-1][:12]}...")
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
            d.idle()
            checks["reload keeps the session"] = page.url == url
            page.get_by_text("Run history (this session)").first.wait_for(timeout=120_000)
            checks["run continues after reload"] = bool(page.get_by_text("Running (1)").count()
                                                        or page.get_by_text("Download student (.zip)").count())
            d.shot("runtime_2_after_reload", "after F5: same session, the run goes on")
            deadline = time.time() + 900
            while page.get_by_text("Running (").count() and time.time() < deadline:
                time.sleep(1)
            d.wait_text("Download student (.zip)", timeout=120)
            d.idle()
            d.shot("runtime_3_finished", "finished before the restart")

            stop_server(proc)
            proc = start_server(port, env, log)
            wait_health(base, proc)
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
            d.idle()
            d.wait_text("Download student (.zip)", timeout=120)
            d.idle()
            checks["finished run and student download after a server restart"] = \
                page.get_by_text("Run history (this session)").count() > 0
            # a deep link to a cold server opens inside the app's frame (its sidebar), not the page alone
            checks["deep link after a restart opens inside the app"] = page.get_by_text("Device in use").count() > 0
            with page.expect_download(timeout=60_000) as info:
                page.get_by_role("button", name="Download student (.zip)").first.click()
            saved = tmp / "student.zip"
            info.value.save_as(saved)
            with zipfile.ZipFile(saved) as zf:
                names = zf.namelist()
            checks["downloaded student has config.json and model.safetensors"] = \
                any(n.endswith("/config.json") for n in names) and any(n.endswith("/model.safetensors") for n in names)
            d.shot("runtime_4_after_server_restart", "after a server restart: the run, its curves and the download")
            browser.close()
    finally:
        stop_server(proc)
        log.close()
        shutil.copy(tmp / "streamlit.log", out / "runtime_streamlit.log")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    steps = d.steps if d is not None else []
    (out / "runtime_report.json").write_text(json.dumps({"steps": steps, "checks": checks}, indent=2))
    failed = [k for k, v in checks.items() if not v] + [s["screenshot"] for s in steps if s["exceptions"]]
    print(json.dumps(checks, indent=2))
    if failed or len(checks) < 5:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    print(f"ok: {len(steps)} screenshots in {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    out, tmp, env, port, base = prepare(args, "[0-9]*.png", "scd-browser-")
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - closed in finally
    proc = start_server(port, env, log)
    good_zip, bad_zip = make_zips(tmp)
    try:
        wait_health(base, proc)
        with sync_playwright() as pw:
            browser, page, d = open_app(pw, args, base, out)
            if page.get_by_text("Building the demo world").count():
                time.sleep(3)
                d.shot("00_demo_build", "first launch: the demo world builds with a progress bar")
            d.wait_text("Images per class and split", timeout=args.build_timeout)
            d.idle()
            d.shot("01_home", "home: demo target set, counts, thumbnails")

            page.get_by_text("Upload a .zip", exact=True).click()
            d.idle()
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(good_zip))
            d.idle()
            d.wait_text("upload 'my_flowers.zip'", timeout=60)
            d.shot("02_upload_ok", "uploaded a zip of PNG files (3 classes)")
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(bad_zip))
            d.idle()
            d.wait_text("Upload refused", timeout=60)
            d.shot("03_upload_error", "a broken upload (a single class): readable error")
            page.get_by_text("Demo world", exact=True).first.click()
            d.idle()
            d.wait_text("Target set: demo world", timeout=60)

            d.nav("Teachers")
            d.shot("04_teachers", "teachers: demo zoo with architecture, label-space size, description")

            d.nav("Ranking")
            d.click_button("Rank teachers")
            d.wait_text("Best teacher by", timeout=300)
            d.idle()
            d.shot("05_ranking", "ranking table (direction, best highlighted) and bar chart")
            page.get_by_text("Budgeted assessment (successive halving)", exact=True).click()
            d.idle()
            d.click_button("Rank teachers")
            d.wait_text("Rounds", timeout=300)
            d.idle()
            d.shot("05b_ranking_budget", "budgeted ranking: one order in table and chart, rounds explained")

            # Check the ranking: a background validate job (2 teachers, 1 seed, 1 epoch), then its scatter
            for label, value in (("Teachers (from the top)", "2"), ("Epochs", "1")):
                box = page.get_by_label(label, exact=True)
                box.fill(value)
                box.press("Enter")
                d.idle()
            d.click_button("Check the ranking")
            d.wait_text("Download the check (JSON)", timeout=600)
            d.idle()
            d.tall_shot("05c_ranking_check", "Check the ranking: score vs student accuracy per metric, weighted tau")

            # the "Next" link carries the best teacher to the Transport plans page
            page.get_by_text(re.compile(r"^Next: how .*'s labels map onto yours$")).first.click()
            d.idle()
            d.wait_text("Drill into one image", timeout=300)
            d.shot("06_plans", "plan heatmap of the linked (best) teacher, drill-downs with a thumbnail grid")
            page.get_by_role("button", name="show").nth(1).click()  # pick another image from the grid
            d.idle()
            d.tall_shot("06b_plans_image", "one image picked from the thumbnail grid: its flow through the plan")
            picked = selectbox_text(page, "Image")
            page.get_by_text("cost C", exact=True).click()
            d.idle()
            d.shot("07_plans_cost", "cost heatmap")
            d.choose("Teacher", "superset")
            page.get_by_text("plan G", exact=True).click()
            d.idle()
            d.shot("08_plans_superset", "16-class teacher: plan rows sorted into blocks")

            page.get_by_text("Next: distill superset into a student", exact=True).first.click()
            d.idle()
            d.wait_text("Start runs", timeout=120)
            d.choose("Student architecture", "test_resnet")
            epochs = page.get_by_label("Epochs")
            epochs.fill("3")
            epochs.press("Tab")
            d.click_button("Start runs")
            time.sleep(1.5)
            d.shot("09_distill_running", "runs started: live progress")
            d.nav("Ranking")
            time.sleep(1.0)
            d.shot("10_ranking_while_running", "runs continue while browsing (sidebar)")
            d.nav("Distill")
            d.wait_text("Compare against the ce baseline", timeout=600)
            deadline = time.time() + 600
            while page.get_by_text("Running (").count() and time.time() < deadline:
                time.sleep(1)
            d.idle()
            d.shot("11_distill_done", "finished: curves, comparison with ce, history, download")
            page.get_by_text("Teacher weight per teacher class", exact=True).click()
            d.idle()
            page.get_by_text("Teacher weight per teacher class", exact=True).scroll_into_view_if_needed()
            d.shot("11a_distill_class_weights", "the adaptive weight per teacher class behind the lambda column")
            d.tall_shot("11b_distill_history", "the whole page down to the run history: the target by its name, a "
                                               "dash for what was not measured")
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
            d.idle()
            d.wait_text("Start runs", timeout=120)
            restored = "test_resnet" in selectbox_text(page, "Student architecture")  # the student chosen above
            d.shot("12_distill_after_reload", "after a reload: the Distill form as it was submitted")
            if not restored:
                d.steps[-1]["errors"].append("the Distill form was not restored after a reload (student)")
            # the other pages' forms come back too: the ranking check's epochs and the plan page's image
            d.nav("Ranking")
            d.wait_text("Check the ranking", timeout=120)
            epochs = page.get_by_label("Epochs", exact=True).input_value()
            d.nav("Transport plans")
            d.wait_text("Drill into one image", timeout=300)
            again = selectbox_text(page, "Image")
            d.tall_shot("12b_plans_after_reload", "after the reload: the image picked on the plan page is still picked")
            if epochs != "1":
                d.steps[-1]["errors"].append(f"the ranking check's epochs were not restored after a reload ({epochs})")
            if not picked or picked != again:
                d.steps[-1]["errors"].append(f"the plan page's image was not restored ({picked!r} -> {again!r})")
            d.steps[-1]["note"] += f" ({again})"
            browser.close()
    finally:
        stop_server(proc)
        log.close()
        shutil.copy(tmp / "streamlit.log", out / "streamlit.log")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    steps = d.steps if "d" in locals() else []
    (out / "report.json").write_text(json.dumps({"steps": steps}, indent=2))
    bad = [s for s in steps if s["exceptions"]]
    unexpected = [s for s in steps if s["errors"] and s["screenshot"] != "03_upload_error.png"]
    if bad or unexpected:
        print(f"FAILED: exceptions in {[s['screenshot'] for s in bad]}, errors in "
              f"{[s['screenshot'] for s in unexpected]}", file=sys.stderr)
        return 1
    print(f"ok: {len(steps)} screenshots in {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "screenshots"))
    parser.add_argument("--workspace", default=None, help="reuse this workspace (e.g. with a built demo world)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--height", type=int, default=1800, help="viewport height (screenshots are full page)")
    parser.add_argument("--build-timeout", type=float, default=900, help="seconds to wait for the demo build")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--runtime", action="store_true", help="check runs across a reload and a server restart")
    parser.add_argument("--runtime-epochs", type=int, default=40, help="epochs of the run of --runtime")
    args = parser.parse_args()
    return run_runtime(args) if args.runtime else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
