"""The Dagster UI in a real browser: what a data engineer does after `make dev`.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is ever
downloaded) opens the asset graph of a pipeline served by `batchpipe dev` (webserver and
daemon), launches one partition from the Materialize dialog, watches the run succeed
and reads the partition's cost in the asset's metadata. The GraphQL tests in
test_dagster_dev.py prove the server works; this one proves a person can use it.

A screenshot of the partition's page is saved under the test's tmp_path and, when
BATCHPIPE_SCREENSHOT_DIR is set, there as well (that is how docs/ui.png is made).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dagster_dev, query

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google's services,
# which on a machine with no network only fills the logs and slows the start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PIPELINE = "product_descriptions"
DATE = "2026-11-03"
# Dagster's UI answers slowly on a 2-core machine while the daemon and code server start.
TIMEOUT_MS = 60_000


@pytest.fixture
def webserver(demo_db: Path, emulator_url: str) -> Iterator[str]:
    """`batchpipe dev` on the demo project, its pipeline set to `wait: true`: the run the
    UI launches polls its batch and loads the results itself, so its enriched partition
    has its cost when the run succeeds (without it, that is the sensor's job, later).
    Without this the test raced the emulator and lost once the SDK calls got fast."""
    path = demo_db / "pipelines" / f"{PIPELINE}.yaml"
    path.write_text(
        path.read_text().replace("  max_tokens: 200\n", "  max_tokens: 200\n  wait: true\n")
    )
    with dagster_dev(demo_db, emulator_url) as url:
        yield url


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator:
    """A fresh headless Chromium page; the last thing it showed is saved on the way out,
    so a failed run of this test leaves a picture of where it stopped."""
    if not CHROMIUM.exists():
        # Failing, not skipping: a skipped browser test would let CI look green without it.
        pytest.fail(
            f"{CHROMIUM} is missing: run `make browser` (Debian's chromium package); "
            "this test never downloads a browser"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1250})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
            page.screenshot(path=str(tmp_path / "last-page.png"))
        finally:
            browser.close()


def save_screenshot(page, tmp_path: Path, name: str, *, publish: bool = False) -> Path:
    """The page as a PNG under the test's output; with `publish`, also in
    BATCHPIPE_SCREENSHOT_DIR when set (the README's picture is made that way)."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    if publish and (target := os.environ.get("BATCHPIPE_SCREENSHOT_DIR")):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def test_materialize_a_partition_from_the_ui_and_read_its_cost(
    browser_page, webserver: str, demo_db: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    # The asset graph of the pipeline's group: the four steps, below the source table.
    page.goto(f"{webserver}/locations/batchpipe/asset-groups/{PIPELINE}")
    for step in ("requests", "batch_status", "results", "enriched"):
        expect(page.get_by_text(step, exact=True).first).to_be_visible()

    # Materialize the group for one date, picked in the launch dialog's partition box.
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Launch runs to materialize 4 assets")).to_be_visible()
    partitions = dialog.get_by_role("textbox").first
    partitions.fill(DATE)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch 1 run").click()

    # The toast links to the run; its page shows the run's status as it goes.
    page.get_by_role("link", name="View", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    expect(page.get_by_text(f"partition: {DATE}")).to_be_visible()
    ended = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(ended).to_be_visible(timeout=120_000)
    save_screenshot(page, tmp_path, "ui-run.png")
    assert ended.inner_text() == "Success", page.inner_text("body")[-3000:]

    # The partition's page on the enriched asset: its materialization and the cost.
    page.goto(f"{webserver}/assets/{PIPELINE}/enriched?view=partitions&partition={DATE}")
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    cost_row = page.get_by_role("row").filter(has_text="batchpipe/cost_usd")
    expect(cost_row).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="batchpipe/standard_cost_usd")).to_be_visible()
    shown = float(cost_row.get_by_role("cell").nth(1).inner_text())
    save_screenshot(page, tmp_path, "ui.png", publish=True)

    # What the UI shows is what the warehouse holds for the partition.
    ((cost,),) = query(
        demo_db,
        f"SELECT sum(cost_usd) FROM {PIPELINE} WHERE partition_date = ?",
        [DATE],
    )
    assert cost > 0
    assert shown == pytest.approx(float(cost), abs=1e-6)
    assert not page_errors, page_errors
