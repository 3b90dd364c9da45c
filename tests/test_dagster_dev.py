"""`batchpipe dev` (what `make dev` runs): the webserver and daemon load the code location,
and a partition launched through the UI's GraphQL API runs to the enriched table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
FAILURES = """
query($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection {
      events {
        ... on ExecutionStepFailureEvent { error { message } }
        ... on RunFailureEvent { message }
        ... on EngineEvent { message }
      }
    }
  }
}
"""


def enriched_statuses(project: Path) -> dict[str, dict[str, int]]:
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT CAST(partition_date AS VARCHAR), result_status, count(*) "
            "FROM product_descriptions GROUP BY ALL"
        ).fetchall()
    found: dict[str, dict[str, int]] = {}
    for day, status, count in rows:
        found.setdefault(day, {})[status] = count
    return found


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (duckdb.IOException, duckdb.CatalogException):
            pass  # a run holds the write lock, or the table is not made yet: look again
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ui_launch_then_the_daemons_sensor_finishes_the_partition(
    webserver: str, demo_db: Path
) -> None:
    nodes = graphql(webserver, "{ assetNodes { assetKey { path } isPartitioned } }")
    keys = {"/".join(n["assetKey"]["path"]): n["isPartitioned"] for n in nodes["assetNodes"]}
    assert keys["product_descriptions/enriched"] is True
    assert "duckdb/products" in keys and "review_replies/requests" in keys

    # What a person does in the UI: materialize requests and batch_status for a date.
    # batch_status returns once the batch is submitted; the sensor does the rest.
    params = {
        "selector": {
            "repositoryLocationName": "batchpipe",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [
                {"path": ["product_descriptions", "requests"]},
                {"path": ["product_descriptions", "batch_status"]},
            ],
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2026-11-05"}]},
    }
    launched = graphql(webserver, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def run_ended() -> bool:
        status = graphql(webserver, STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("FAILURE", "CANCELED"):
            events = graphql(webserver, FAILURES, {"id": run_id})["logsForRun"]["events"]
            pytest.fail(f"run ended {status}: {[e for e in events if e]}")
        return status == "SUCCESS"

    wait_for(run_ended, 120, "the submit run")
    wait_for(
        lambda: enriched_statuses(demo_db).get("2026-11-05") == {"succeeded": 30},
        180,
        "the sensor to load results and write the enriched partition",
    )


def test_a_backfill_of_five_partitions_from_the_dagster_cli(webserver: str, demo_db: Path) -> None:
    """Five runs at once over one DuckDB file: the writer pool queues them, none fails on
    the file lock, and the sensor finishes each partition."""
    backfill = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            # README's command: the workspace file `batchpipe dev` wrote into DAGSTER_HOME
            *("job", "backfill", "-w", "dagster_home/workspace.yaml"),
            *("-j", "product_descriptions__job"),
            *("--from", "2026-11-01", "--to", "2026-11-05", "--noprompt"),
        ],
        cwd=demo_db,
        env={**os.environ, "DAGSTER_HOME": str(demo_db / "dagster_home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    days = [f"2026-11-0{d}" for d in range(1, 6)]
    wait_for(
        lambda: all(enriched_statuses(demo_db).get(d) == {"succeeded": 30} for d in days),
        300,
        "five backfilled partitions to be enriched",
    )
    failed = graphql(
        webserver, "{ runsOrError(filter: {statuses: [FAILURE]}) { ... on Runs { count } } }"
    )["runsOrError"]["count"]
    assert failed == 0
