"""Helpers for tests that need a real emulator process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from batchpipe.emulator import process
from batchpipe.emulator.process import free_port

# The emulator as a process: tests and bench/ share one launcher, in the emulator itself.
start_emulator = process.start


def ledger(url: str) -> list[dict]:
    """What the emulator billed: one entry per succeeded request."""
    with urllib.request.urlopen(f"{url}/_emulator/ledger", timeout=5) as response:
        return json.loads(response.read())["data"]


def request_of(wire_id: str) -> str:
    """The request a billed custom_id stands for: batchpipe sends each request as
    `<its custom_id>-<12-character submission token>`, so the same request sent in two
    batches shows as one request here (the referee counts payments per request)."""
    custom_id, token = wire_id.rsplit("-", 1)
    assert len(token) == 12, wire_id
    return custom_id


def batchpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a person runs it: a new process, its output and exit status."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "batchpipe", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def pipeline(name: str = "product_descriptions"):
    """A pipeline file of the test's project (BATCHPIPE_PIPELINES), by name."""
    from batchpipe.loader import load_pipelines

    return next(pf for pf in load_pipelines() if pf.pipeline.name == name)


def resolve_problem(project: Path, path: Path) -> str:
    """`resolve.resolve` of a pipeline file on the writable connection a run uses: the
    ConfigError's message (the test then checks nothing ran)."""
    import duckdb
    import pytest

    from batchpipe.errors import ConfigError
    from batchpipe.loader import load_file
    from batchpipe.resolve import resolve

    pf = load_file(path)
    with (
        duckdb.connect(str(project / "warehouse.duckdb")) as con,
        pytest.raises(ConfigError) as caught,
    ):
        resolve(pf, con)
    return str(caught.value)


def query(project: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Read the test project's warehouse, read-only, as an analyst would: its DuckDB
    file, or the DuckLake that BATCHPIPE_DB names (through batchpipe's own attachment)."""
    import duckdb

    from batchpipe import warehouse

    if warehouse.is_lake():
        with warehouse.connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def execute(project: Path, sql: str, params: list | None = None) -> None:
    """Change the test project's warehouse as another writer would (an analyst's edit)."""
    import duckdb

    from batchpipe import warehouse

    if warehouse.is_lake():
        with warehouse.connect() as con:
            con.execute(sql, params or [])
        return
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute(sql, params or [])


def wait_ended(client, batch_id: str, timeout: float = 15):
    """Poll a batch through the SDK until it has ended, as a client without webhooks does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} did not end")


@contextlib.contextmanager
def dagster_dev(project: Path, emulator_url: str) -> Iterator[str]:
    """`batchpipe dev` (what `make dev` runs: webserver and daemon) on a free loopback port
    against the test's project, yielding its URL once it answers.

    Its output goes to `dagster_dev.log` in the project, so a failure can be read after
    the fact; the whole process group is stopped afterwards, so no daemon or code server
    outlives the test.
    """
    port = free_port()
    # Started in the project, not the repo, with paths relative to it: `batchpipe dev`
    # must work from any folder and hand its processes the same files.
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": emulator_url,
        "DAGSTER_HOME": "dagster_home",
        "BATCHPIPE_DB": "warehouse.duckdb",
        "BATCHPIPE_PIPELINES": "pipelines",
    }
    # The sensor polls every poll_interval seconds: make it the shortest allowed.
    for path in (project / "pipelines").glob("*.yaml"):
        path.write_text(
            path.read_text().replace("  max_tokens:", "  poll_interval: 5\n  max_tokens:", 1)
        )
    log = project / "dagster_dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchpipe", "dev", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As a script's `batchpipe dev &` starts it: SIGINT ignored. It must still
            # stop on SIGTERM (the teardown below), which took forever before.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
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
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"dagster dev did not start:\n{tail}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # leave no daemon behind, then fail
            raise


def graphql(url: str, document: str, variables: dict | None = None) -> dict:
    """One query or mutation against a Dagster webserver's GraphQL API: its `data`
    (a GraphQL error fails the caller with the server's messages)."""
    body = json.dumps({"query": document, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise AssertionError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def advance_emulator_clock(url: str, seconds: float) -> None:
    """Move the emulator's clock forward: batches older than its latency then end, at once,
    for every client (a test holds batches open with a long latency, then lets them go)."""
    request = urllib.request.Request(
        f"{url}/_emulator/clock",
        data=json.dumps({"advance_seconds": seconds}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def set_emulator_limits(url: str, **settings: object) -> None:
    """Change the emulator's limits or faults at run time (`None` turns one off), as an
    operator's account changes: a limit lifted, credit added."""
    body = json.dumps(settings).encode()
    post = urllib.request.Request(f"{url}/_emulator/faults", data=body, method="POST")
    with urllib.request.urlopen(post, timeout=5):
        pass


BULK_PIPELINE = """\
name: bulk
source:
  table: items
  key: item_id
  partition_column: added_on
request:
  model: claude-haiku-4-5
  max_tokens: 16
  prompt: "Name a colour for {{ word }}"
  max_batch_requests: PER_BATCH
EXTRA
output:
  table: bulk_out
  column: reply
partitions:
  start: 2026-11-01
"""


def bulk_project(
    project: Path, rows_per_day: int, days: int = 1, per_batch: int = 1000, extra: str = ""
) -> None:
    """The test's project holds one pipeline, `bulk`, over `rows_per_day` items on each of
    `days` days from 2026-11-03, sent `per_batch` requests a batch; `extra` is added to
    its `request:` settings (YAML lines, indented two spaces)."""
    import duckdb

    for other in (project / "pipelines").glob("*.yaml"):
        other.unlink()
    (project / "pipelines" / "bulk.yaml").write_text(
        BULK_PIPELINE.replace("PER_BATCH", str(per_batch)).replace("EXTRA\n", extra)
    )
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute(
            "CREATE TABLE items AS SELECT i AS item_id, 'word ' || i AS word, "
            "DATE '2026-11-03' + CAST(i % ? AS INTEGER) AS added_on "
            "FROM range(?) t(i)",
            [days, rows_per_day * days],
        )


def sensor_tick(defs, instance, cursor: str | None, resource, name: str):
    """One evaluation of pipeline `name`'s sensor, as the daemon makes it."""
    import dagster as dg

    sensor = defs.resolve_sensor_def(f"{name}__batches")
    return sensor(
        dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"batchpipe": resource},
            repository_def=defs.get_repository_def(),
        )
    )


def sensor_follow_ups(defs, instance, job, resource, name: str, timeout: float = 60) -> list:
    """Tick the sensor as the daemon would and run what it asks for, until it has
    nothing open or held: the runs it launched, in order."""
    import dagster as dg

    cursor, launched = None, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = sensor_tick(defs, instance, cursor, resource, name)
        if isinstance(result, dg.SkipReason):
            return launched
        cursor = result.cursor
        for run in result.run_requests:
            launched.append(
                job.execute_in_process(
                    partition_key=run.partition_key,
                    asset_selection=run.asset_selection,
                    instance=instance,
                    tags=run.tags,
                )
            )
        time.sleep(0.2)
    raise AssertionError(f"the sensor still had batches open or held after {timeout} s")
