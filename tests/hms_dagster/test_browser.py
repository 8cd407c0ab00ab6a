"""The Dagster UI as a user meets it, in headless Chromium (Debian's ``chromium`` driven by Playwright from PyPI).

Uses the session's ``hms ui`` on a copy of the trained tiny workspace (the ``ui_server`` fixture, shared with
test_ui), opens the lineage of the preprocessing group and the
``eeg_windows`` partitions page, checks the assets and the fold partitions are shown, selects a fold, clicks
Materialize / Confirm / Launch like a user, and waits for the run page to say Success. Screenshots are written to
``runs/test-artifacts/browser/`` (or ``$HMS_TEST_ARTIFACTS``); the test prints the folder. Skipped, with the
reason, only where Chromium or Playwright cannot start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from hms_dagster.stages import TEST_WINDOWS, preprocessing_asset_keys

ARTIFACTS = Path(os.environ.get("HMS_TEST_ARTIFACTS", "runs/test-artifacts")) / "browser"
LATEST_RUN = """{ runsOrError(limit: 1) { ... on Runs { results { runId status tags { key value } } } } }"""


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; `make test` installs it as root)")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - playwright is a test dependency
        pytest.skip(f"playwright is not installed: {e}")
    pw = sync_playwright().start()
    try:
        return pw, pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
    except PlaywrightError as e:  # the binary exists but cannot start here (missing libraries, no /dev/shm, ...)
        pw.stop()
        pytest.skip(f"chromium at {path} does not start: {str(e).splitlines()[0]}")


def _skip_community_dialog(page) -> None:
    """The "Join the Dagster community" dialog of a first visit (not shown again once skipped)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # no dialog this time
        page.get_by_role("button", name="Skip").click(timeout=4000)


def test_browser_lineage_partitions_and_materialize_a_fold(ui_server):
    pw, browser = _chromium()
    ws, base = ui_server.ws, ui_server.base
    fold = ws.cfg.fold_names[-1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    print(f"browser screenshots: {ARTIFACTS.resolve()}")
    try:
        t0 = time.perf_counter()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        group = f"{base}/locations/hms_dagster.definitions/asset-groups/preprocessing"
        page.goto(group)
        _skip_community_dialog(page)
        page.get_by_text("eeg_windows", exact=True).first.wait_for(
            timeout=60_000
        )  # the graph draws what is in view
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "01_preprocessing_lineage.png")
        page.goto(f"{group}/list")  # every asset of the group, with its partitions and checks
        for key in (*preprocessing_asset_keys(ws.cfg), TEST_WINDOWS):
            page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=ARTIFACTS / "02_preprocessing_list.png")

        page.goto(f"{base}/assets/eeg_windows?view=partitions")
        _skip_community_dialog(page)
        for f in ws.cfg.fold_names:
            page.locator("span", has_text=f).first.wait_for(timeout=30_000)
        page.screenshot(path=ARTIFACTS / "03_eeg_windows_partitions.png")

        # a user picks the last fold and clicks Materialize: the multi-asset dialog, then the launch dialog
        page.locator("span", has_text=fold).first.click()
        page.get_by_role("button", name="Materialize…").first.click()
        page.get_by_role("button", name="Confirm").click()  # the fold's other preprocessing assets come along
        launch = page.get_by_role("button", name="Launch 1 run")
        launch.wait_for(timeout=30_000)
        page.screenshot(path=ARTIFACTS / "04_launch_dialog.png")
        launch.click()

        run_id, deadline = None, time.time() + 240
        while time.time() < deadline and run_id is None:
            runs = httpx.post(f"{base}/graphql", json={"query": LATEST_RUN}, timeout=30).json()
            for r in runs["data"]["runsOrError"]["results"]:
                if {"key": "dagster/partition", "value": fold} in r["tags"]:
                    run_id = r["runId"]
            time.sleep(1)
        assert run_id, "the Launch click created no run for the partition"
        page.goto(f"{base}/runs/{run_id}")
        page.get_by_text("Success", exact=True).first.wait_for(timeout=240_000)
        page.screenshot(path=ARTIFACTS / "05_run_success.png")
        print(f"RESULT browser_materialize_fold_s={time.perf_counter() - t0:.1f} run={run_id}")
    finally:
        browser.close()
        pw.stop()
    shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
    assert shots == [
        "01_preprocessing_lineage.png", "02_preprocessing_list.png", "03_eeg_windows_partitions.png",
        "04_launch_dialog.png", "05_run_success.png",
    ]  # fmt: skip
