"""The Dagster UI in a real browser: what a data engineer does after `make dev`.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is ever
downloaded) opens the asset graph of a pipeline served by `batchpipe dev` (webserver and
daemon), launches one partition from the Materialize dialog, watches the run succeed
and reads the partition's cost in the asset's metadata. The GraphQL tests in
test_dagster_dev.py prove the server works; this one proves a person can use it.

The second test launches a backfill of three partitions from the same dialog, without
`wait` (the pipelines' default): while the batches are open (an emulator of the test's own
holds them until the test moves its clock), the enriched partitions show as missing; once
they end, the pipeline's sensor loads each partition in a run of the pipeline's job, with
its cost and both checks passed.

Screenshots are saved under each test's tmp_path and, when BATCHPIPE_SCREENSHOT_DIR is
set, there as well (that is how docs/ui.png and docs/ui-backfill.png are made).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import advance_emulator_clock, dagster_dev, graphql, query

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


# A backfill launched from the UI without `wait`: the pipelines' default. Its runs submit
# the batches and end; the pipeline's sensor loads each partition once its batches end.
BACKFILL_DAYS = ["2026-11-02", "2026-11-03", "2026-11-04"]
# The emulator holds every batch open this long (its clock, not the wall's): nothing ends
# until the test moves the clock past it, so "while the batches are open" is not a race.
HELD_OPEN_SECONDS = 3600
ENRICHED = ["product_descriptions", "enriched"]
BATCH_STATUS = ["product_descriptions", "batch_status"]
RUNS = """
query($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    ... on Runs { results { runId jobName status tags { key value } assetSelection { path } } }
  }
}
"""
MATERIALIZATIONS = """
query($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition runId
        metadataEntries {
          label
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on JsonMetadataEntry { jsonString }
        }
      }
    }
  }
}
"""
PARTITION_STATS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionStats { numMaterialized numMaterializing numFailed }
      assetPartitionStatuses { ... on TimePartitionStatuses { ranges { startKey endKey status } } }
    }
  }
}
"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $check, partition: $partition, limit: 10) {
    runId status partition evaluation { success partition }
  }
}
"""
CHECKS = ("every_row_final", "error_rate")


@pytest.fixture
def held_batches_webserver(demo_db: Path, private_emulator) -> Iterator[tuple[str, str]]:
    """`batchpipe dev` on the demo project as it ships (`request.wait: false`), against an
    emulator of the test's own whose batches stay open until the test lets them end:
    the server's URL and the emulator's."""
    emulator = private_emulator(latency=HELD_OPEN_SECONDS)
    with dagster_dev(demo_db, emulator) as url:
        yield url, emulator


def wait_until(condition, seconds: float, what: str):
    """Call `condition` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(1)


def ended_runs(url: str, tag: str, value: str, count: int) -> list[dict] | None:
    """The runs tagged `tag=value` once there are `count` and all have ended; a run that
    fails or is canceled fails the test."""
    tags = [{"key": tag, "value": value}]
    runs = graphql(url, RUNS, {"tags": tags})["runsOrError"]["results"]
    broken = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
    assert not broken, f"runs tagged {tag}={value} did not succeed: {broken}"
    if len(runs) == count and all(r["status"] == "SUCCESS" for r in runs):
        return runs
    assert len(runs) <= count, runs
    return None


def materializations(url: str, key: list[str]) -> dict[str, list[dict]]:
    """The materializations of `key` in BACKFILL_DAYS, by partition, each with its metadata
    as a label -> value dict."""
    found: dict[str, list[dict]] = {day: [] for day in BACKFILL_DAYS}
    events = graphql(url, MATERIALIZATIONS, {"key": {"path": key}, "partitions": BACKFILL_DAYS})
    for event in events["assetOrError"]["assetMaterializations"]:
        values = {
            m["label"]: m.get("floatValue", m.get("intValue", m.get("jsonString")))
            for m in event["metadataEntries"]
        }
        found[event["partition"]].append({"run_id": event["runId"], "metadata": values})
    return found


def check_executions(url: str, check: str, day: str) -> list[dict]:
    variables = {"key": {"path": ENRICHED}, "check": check, "partition": day}
    return graphql(url, CHECK_EXECUTIONS, variables)["assetCheckExecutions"]


def warehouse_costs(project: Path) -> dict[str, float]:
    """sum(cost_usd) per partition, read-only; looked at again while a run still holds
    the file's write lock."""
    import duckdb

    def read() -> dict[str, float] | None:
        try:
            rows = query(
                project,
                f"SELECT CAST(partition_date AS VARCHAR), sum(cost_usd) FROM {PIPELINE} "
                "GROUP BY ALL",
            )
        except duckdb.IOException:
            return None
        return {day: float(cost) for day, cost in rows}

    return wait_until(read, 60, "the warehouse to be readable")


def test_a_backfill_from_the_ui_is_materialized_by_the_sensor_once_its_batches_end(
    browser_page, held_batches_webserver: tuple[str, str], demo_db: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    webserver, emulator = held_batches_webserver
    page = browser_page
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    # Materialize all of the group for three dates: a range typed in the dialog's box
    # makes the dialog a backfill.
    page.goto(f"{webserver}/locations/batchpipe/asset-groups/{PIPELINE}")
    expect(page.get_by_text("enriched", exact=True).first).to_be_visible()
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Launch runs to materialize 4 assets")).to_be_visible()
    partitions = dialog.get_by_role("textbox").first
    partitions.fill(f"[{BACKFILL_DAYS[0]}...{BACKFILL_DAYS[-1]}]")
    partitions.press("Enter")
    expect(dialog.get_by_text("3 partitions", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch backfill").click()

    # The toast names the backfill and links to its page.
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(toast).to_be_visible()
    backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)
    page.get_by_role("link", name="View", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/runs/b/{backfill_id}"))
    expect(page.get_by_text(f"{BACKFILL_DAYS[0]}...{BACKFILL_DAYS[-1]}")).to_be_visible()

    # Its runs (one a partition) submit the batches and succeed...
    submitted = wait_until(
        lambda: ended_runs(webserver, "dagster/backfill", backfill_id, 3),
        180,
        "the backfill's three runs to succeed",
    )
    by_day = {tag_of(run, "dagster/partition"): run["runId"] for run in submitted}
    assert sorted(by_day) == BACKFILL_DAYS
    # ...and batch_status records each partition's batch, still open.
    statuses = materializations(webserver, BATCH_STATUS)
    for day in BACKFILL_DAYS:
        assert [m["run_id"] for m in statuses[day]] == [by_day[day]], statuses[day]
        assert json.loads(statuses[day][0]["metadata"]["batchpipe/open_batch_ids"]), statuses[day]

    # While the batches are open nothing claims data it does not have: no enriched
    # partition is materialized, neither check has been evaluated, and no run has followed.
    assert materializations(webserver, ENRICHED) == {day: [] for day in BACKFILL_DAYS}
    stats = graphql(webserver, PARTITION_STATS, {"key": {"path": ENRICHED}})["assetNodeOrError"]
    assert stats["partitionStats"]["numMaterialized"] == 0, stats
    assert stats["assetPartitionStatuses"]["ranges"] == [], stats
    for day, check in itertools.product(BACKFILL_DAYS, CHECKS):
        executions = check_executions(webserver, check, day)
        assert all(e["evaluation"] is None for e in executions), (day, check, executions)
        assert {e["status"] for e in executions} <= {"SKIPPED"}, (day, check, executions)
    follow_ups = [{"key": "batchpipe/backfill", "value": backfill_id}]
    assert graphql(webserver, RUNS, {"tags": follow_ups})["runsOrError"]["results"] == []

    # The UI says so too: batch_status has the three partitions, enriched none of them.
    page.goto(f"{webserver}/assets/{PIPELINE}/batch_status?view=partitions")
    show_backfill_range(page)
    expect(page.get_by_text("Materialized (3)", exact=True)).to_be_visible()
    page.goto(f"{webserver}/assets/{PIPELINE}/enriched?view=partitions&partition={DATE}")
    show_backfill_range(page)
    expect(page.get_by_text("Missing (3)", exact=True)).to_be_visible()
    expect(page.get_by_text("Materialized (0)", exact=True)).to_be_visible()
    expect(page.get_by_text("No metadata entries")).to_be_visible()
    save_screenshot(page, tmp_path, "ui-backfill-open.png")

    # The batches end; the sensor's next tick loads each partition in a run of its own.
    advance_emulator_clock(emulator, HELD_OPEN_SECONDS + 60)
    followed = wait_until(
        lambda: ended_runs(webserver, "batchpipe/backfill", backfill_id, 3),
        180,
        "the sensor's three runs to succeed",
    )
    loaded_by = {}
    for run in followed:
        day = tag_of(run, "batchpipe/partition")
        assert run["jobName"] == f"{PIPELINE}__job", run
        assert tag_of(run, "dagster/partition") == day
        assert tag_of(run, "batchpipe/pipeline") == PIPELINE
        assert tag_of(run, "batchpipe/submitted_by_run") == by_day[day]
        assert tag_of(run, "dagster/sensor_name") == f"{PIPELINE}__batches"
        assert tag_of(run, "dagster/backfill") == backfill_id  # on the backfill's page
        assert sorted("/".join(k["path"]) for k in run["assetSelection"]) == [
            f"{PIPELINE}/enriched",
            f"{PIPELINE}/results",
        ]
        loaded_by[day] = run["runId"]
    assert sorted(loaded_by) == BACKFILL_DAYS
    # the backfill's own runs list: its three submitting runs and the three follow-ups
    assert ended_runs(webserver, "dagster/backfill", backfill_id, 6)

    # Each partition is materialized once, by its sensor run, with its cost, and both
    # checks passed for it in that run.
    costs = warehouse_costs(demo_db)
    enriched = materializations(webserver, ENRICHED)
    for day in BACKFILL_DAYS:
        assert [m["run_id"] for m in enriched[day]] == [loaded_by[day]], enriched[day]
        metadata = enriched[day][0]["metadata"]
        assert costs[day] > 0
        assert metadata["batchpipe/cost_usd"] == pytest.approx(costs[day], abs=1e-6)
        assert metadata["batchpipe/succeeded"] == metadata["dagster/row_count"] > 0, metadata
        for check in CHECKS:
            latest = check_executions(webserver, check, day)[0]
            assert latest["runId"] == loaded_by[day], (day, check, latest)
            assert latest["status"] == "SUCCEEDED", (day, check, latest)
            assert latest["evaluation"] == {"success": True, "partition": day}

    # What each partition's page shows is the same.
    for day in BACKFILL_DAYS:
        page.goto(f"{webserver}/assets/{PIPELINE}/enriched?view=partitions&partition={day}")
        expect(page.get_by_text("Materialized (3)", exact=True)).to_be_visible()
        cost_row = page.get_by_role("row").filter(has_text="batchpipe/cost_usd")
        expect(cost_row).to_be_visible()
        shown = float(cost_row.get_by_role("cell").nth(1).inner_text())
        assert shown == pytest.approx(costs[day], abs=1e-6), day

    # The picture for the docs: the three partitions of the backfill, materialized.
    show_backfill_range(page)
    expect(page.get_by_text("Missing (0)", exact=True)).to_be_visible()
    save_screenshot(page, tmp_path, "ui-backfill.png", publish=True)
    assert not page_errors, page_errors


def show_backfill_range(page) -> None:
    """Narrow an asset's partitions view to the backfill's dates (the range box on top)."""
    from playwright.sync_api import expect

    box = page.get_by_role("textbox").first
    box.fill(f"[{BACKFILL_DAYS[0]}...{BACKFILL_DAYS[-1]}]")
    box.press("Enter")
    expect(page.get_by_text("3 Partitions Selected", exact=True)).to_be_visible()


def tag_of(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)
