"""`batchpipe dev` (what `make dev` runs): the webserver and daemon load the code location,
and a partition launched through the UI's GraphQL API runs to the enriched table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.support import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.fixture
def webserver(demo_db: Path, emulator_url: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": emulator_url,
        "DAGSTER_HOME": str(demo_db / "dagster_home"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "dev", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("dagster dev did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


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


def test_ui_lists_the_assets_and_runs_a_partition(webserver: str, demo_db: Path) -> None:
    nodes = graphql(webserver, "{ assetNodes { assetKey { path } isPartitioned } }")
    keys = {"/".join(n["assetKey"]["path"]): n["isPartitioned"] for n in nodes["assetNodes"]}
    assert keys["product_descriptions/enriched"] is True
    assert "duckdb/products" in keys and "review_replies/requests" in keys

    steps = ("requests", "batch_status", "results", "enriched")
    params = {
        "selector": {
            "repositoryLocationName": "batchpipe",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["product_descriptions", s]} for s in steps],
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2026-11-05"}]},
    }
    launched = graphql(webserver, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        status = graphql(webserver, STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    if status != "SUCCESS":
        events = graphql(webserver, FAILURES, {"id": run_id})["logsForRun"]["events"]
        pytest.fail(f"run ended {status}: {[e for e in events if e]}")
    with duckdb.connect(str(demo_db / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT count(*) FILTER (result_status = 'succeeded'), count(*) "
            "FROM product_descriptions WHERE partition_date = DATE '2026-11-05'"
        ).fetchone()
    assert rows == (30, 30)
