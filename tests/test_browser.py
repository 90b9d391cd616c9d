"""Notebook 04 in a real browser: JupyterLab on a free local port, Debian's Chromium driven by Playwright.

Runs every cell, picks a query and a method in the deletion explorer, presses Delete, moves the IF-to-SOURCE
horizon slider, and checks that the page shows the numbers Python computes for the same settings. Screenshots go
to test-artifacts/browser/. Skips (saying how to enable it) where chromium or the playwright package is missing;
.ci/run installs both. Every server and browser the test starts is stopped, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import tdakit
from tdakit.experiment import Method, compute_scores
from tdakit.explore.spectrum import Spectrum
from tdakit.explore.whatif import WhatIf
from tdakit.widgets import views

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_what_if.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CACHE = os.environ.get("TDAKIT_CACHE")  # read at import, before the per-test cache isolation of conftest
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
# the notebook's Concrete methods (the test recomputes a deletion with them)
METHODS = {"exact unrolling": Method("unrolled"), "influence": Method("influence", curvature="ggn"),
           "SOURCE": Method("source", segments=3, curvature="ggn"), "TracIn": Method("tracin")}
NOTEBOOK_SECONDS = 1800  # the first run of notebook 04 on a cold cache trains, scores and retrains


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return ("Debian's chromium is not installed; to run the browser test: apt-get install -y chromium "
                "(as .ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing; pip install -e '.[dev]' (never 'playwright install')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict, log: Path):
    """A JupyterLab server on a free port serving ``root``: yields (base url, token); stopped on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={root / '.s'}",
           f"--LabApp.workspaces_dir={root / '.w'}"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; its log: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url, token
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def test_notebook_04_in_jupyterlab_and_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    notebook = json.loads(NOTEBOOK.read_text())  # a copy without outputs (the server autosaves: never the repo's)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (tmp_path / NOTEBOOK.name).write_text(json.dumps(notebook))
    cache = CACHE or str(tmp_path / "cache")
    env = {**os.environ, "TDAKIT_CACHE": cache, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    with jupyter_lab(tmp_path, env, ARTIFACTS / "jupyterlab.log") as (url, token), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            time.sleep(3)  # let the kernel start; cells run as soon as it is ready anyway
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator("[data-command='runmenu:run-all']").first.click()
            page.wait_for_selector("text=L = 6: SOURCE LDS", timeout=NOTEBOOK_SECONDS * 1000)
            page.screenshot(path=ARTIFACTS / "1-notebook-ran.png", full_page=False)

            # the deletion explorer (the first on the page: Concrete): choose query 5, SOURCE, fresh seeds
            page.locator(".tdakit-query").first.scroll_into_view_if_needed()
            page.locator(".tdakit-query select").first.select_option(index=5)
            page.locator(".tdakit-method select").first.select_option(label="SOURCE")
            k_box = page.locator(".tdakit-k input").first
            k_box.fill("10")
            k_box.press("Enter")
            page.locator(".tdakit-kind").first.get_by_text("fresh seeds").click()
            page.wait_for_function("document.querySelector('.tdakit-status').innerText.includes('Query 5')",
                                   timeout=120_000)
            started = time.monotonic()
            page.locator(".tdakit-delete").first.click()
            page.wait_for_function(
                "document.querySelector('.tdakit-result').innerText.includes('Query 5: deleted the 10 most "
                "helpful points by SOURCE; retrained on fresh seeds')", timeout=600_000)
            delete_seconds = time.monotonic() - started
            page.screenshot(path=ARTIFACTS / "2-deleted.png")
            shown = {cell.get_attribute("data-method"): cell.inner_text()
                     for cell in page.locator(".tdakit-result").first.locator(".tdakit-predicted").all()}
            actual = _text(page, ".tdakit-result .tdakit-actual")

            # move the horizon slider four steps right (one decade): eta K x 1 -> 10
            handle = page.locator(".tdakit-horizon .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "document.querySelector('.tdakit-spectrum-table').innerText.includes('eta K x 10)')",
                timeout=300_000)
            page.locator(".tdakit-spectrum-table").first.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "3-slider-moved.png")
            table = _text(page, ".tdakit-spectrum-table")
        finally:
            browser.close()

    # the same settings, computed by Python (from the cache the notebook filled)
    os.environ["TDAKIT_CACHE"] = cache
    setting, data = tdakit.preset("concrete"), tdakit.preset("concrete").data()
    run = setting.train(data, progress=False, dtype=torch.float64)  # as the notebook trains it
    trial = WhatIf(run, data.query, METHODS, seeds=5).delete(5, "SOURCE", 10, protocol="fresh")
    units = views.units_of(run.task, data)
    assert shown == {label: units.text(value) for label, value in trial.predicted.items()}
    assert actual.startswith(units.text(trial.actual))

    narrow = tdakit.preset("concrete_narrow")
    narrow_run = narrow.train(data, progress=False, placement="end")
    unrolled = compute_scores(narrow_run, data.query, {"u": Method("unrolled")}, progress=False)[0]["u"]
    truth = tdakit.groundtruth(narrow_run, data.query, subsets=50, fraction=0.5, seeds=4, progress=False)
    spectrum = Spectrum(narrow_run, data.query, curvature="ggn", truth=truth, reference=unrolled)
    view = spectrum.view(6, 10.0, spectrum.implied_damping)  # the notebook leaves L = 6 and the first damping
    numbers = re.findall(r"-?\d+\.\d{3}(?!\d)", table.split("SOURCE", 1)[1])
    assert numbers[:2] == [f"{view.lds_source.value:.3f}", f"{view.agreement_source:.3f}"]
    (ARTIFACTS / "timings.txt").write_text(f"press Delete to result (Concrete, fresh seeds, R = 5): "
                                           f"{delete_seconds:.1f} s\n")
