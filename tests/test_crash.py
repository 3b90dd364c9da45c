"""A run SIGKILLed at each dangerous moment, then run again: it completes, nothing is
lost, nothing is paid twice, and no reader sees a half-written output partition."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import duckdb
import pytest

from tests.support import ledger, query, request_of

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def run(env: dict[str, str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    extra = {"BATCHPIPE_KILL_AT": kill_at} if kill_at else {}
    return subprocess.run(
        [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", DAY],
        capture_output=True,
        text=True,
        env={**os.environ, **env, **extra},
        timeout=300,
    )


def rows(project: Path) -> list[tuple]:
    return query(
        project,
        "SELECT product_id, result_status, description FROM product_descriptions "
        "WHERE partition_date = ? ORDER BY 1",
        [DAY],
    )


@pytest.fixture
def emulator(demo_db: Path, private_emulator) -> tuple[str, dict[str, str]]:
    url = private_emulator()
    return url, {"ANTHROPIC_BASE_URL": url}


@pytest.mark.parametrize(
    ("warehouse_kind", "batches"),
    # On a DuckLake, three batches only: the second intent recorded at the kill covers the
    # one-batch case's moments too, and each DuckLake run costs a catalog attach.
    [("file", 1), ("file", 3), ("ducklake", 3)],
    indirect=["warehouse_kind"],
)
@pytest.mark.parametrize(
    "point", ["before_create", "after_create", "mid_download", "mid_results_load"]
)
def test_killed_run_recovers_without_paying_twice(
    demo_db: Path, emulator, point: str, batches: int
) -> None:
    """With three batches, the next batch's intent is already recorded (its body is built
    while the first uploads) when the kill comes: both intents are settled on the re-run."""
    url, env = emulator
    if batches > 1:
        path = demo_db / "pipelines" / "product_descriptions.yaml"
        text = path.read_text()
        path.write_text(
            text.replace("  max_tokens: 200\n", "  max_tokens: 200\n  max_batch_requests: 10\n")
        )
    killed = run(env, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    again = run(env)

    assert again.returncode == 0, again.stderr[-2000:]
    result = rows(demo_db)
    assert len(result) == 30 and {status for _, status, _ in result} == {"succeeded"}
    billed = [request_of(entry["custom_id"]) for entry in ledger(url)]
    assert sorted(billed) == sorted(set(billed)) and len(billed) == 30  # each paid once
    upstream = anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list()
    # the batch made before the kill was adopted, not resent
    assert len(upstream.data) == batches


def test_a_misspelt_kill_point_fails_the_run_before_it_sends_anything(
    demo_db: Path, emulator
) -> None:
    url, env = emulator
    misspelt = run(env, kill_at="after_craete")
    assert misspelt.returncode == 1, misspelt.stderr[-2000:]
    assert misspelt.stderr == (
        "error: BATCHPIPE_KILL_AT='after_craete' is not a kill point; known points: "
        "before_create, after_create, mid_download, mid_results_load, mid_enriched_write, "
        "after_conflict, after_upload\n"
    )
    assert ledger(url) == []
    assert anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list().data == []


# A reader in a process of its own, as an analyst's notebook would be: it opens the file
# read-only for each look (so it never holds the writer off for long), and writes down
# what it saw of the partition: `null` before the table exists, else a digest of its rows.
READER = """
import hashlib, json, os, sys, time, duckdb
db, out, stop, day = sys.argv[1:]
with open(out, "a") as log:
    while not os.path.exists(stop):
        try:
            with duckdb.connect(db, read_only=True) as con:
                rows = con.execute(
                    "SELECT product_id, result_status, description FROM product_descriptions "
                    "WHERE partition_date = ? ORDER BY 1", [day]).fetchall()
            seen = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        except duckdb.CatalogException:
            seen = None  # no output table yet
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            time.sleep(0.05)  # a run holds the file; look again
            continue
        log.write(json.dumps([time.time(), seen]) + "\\n")
        log.flush()
        time.sleep(0.5)
"""


def digest(found: list[tuple]) -> str:
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()


def looks(path: Path, after: float = 0.0) -> list[str | None]:
    """What the reader saw since `after` (a time.time())."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [seen for at, seen in entries if at > after]


def wait_for_a_look(path: Path, after: float) -> None:
    deadline = time.monotonic() + 20
    while not looks(path, after):
        assert time.monotonic() < deadline, "the reader could not read the warehouse"
        time.sleep(0.05)


def test_killed_output_write_leaves_the_old_partition_whole(demo_db: Path, emulator) -> None:
    """A run killed between deleting the partition and inserting its new rows; a reader
    process looks at the partition throughout, and after the kill, and during the run
    that follows: it only ever sees the old partition whole, or the new one whole."""
    url, env = emulator
    env = {**env, "BATCHPIPE_LOCK_WAIT": "60"}  # the runs wait out the reader's looks
    assert run(env).returncode == 0
    before = rows(demo_db)
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute("UPDATE products SET name = 'Renamed Lamp' WHERE product_id = 2")
    seen, stop = demo_db / "reader.jsonl", demo_db / "reader.stop"
    seen.touch()
    database = str(demo_db / "warehouse.duckdb")
    reader = subprocess.Popen([sys.executable, "-c", READER, database, str(seen), str(stop), DAY])
    try:
        wait_for_a_look(seen, 0)
        killed = run(env, kill_at="mid_enriched_write")
        killed_at = time.time()
        wait_for_a_look(seen, killed_at)  # a look at the file the killed run left

        assert killed.returncode == -signal.SIGKILL
        assert rows(demo_db) == before  # the deleted-but-uncommitted partition is back, whole
        assert run(env).returncode == 0
        finished_at = time.time()
        wait_for_a_look(seen, finished_at)
    finally:
        stop.touch()
        reader.wait(timeout=30)
    assert reader.returncode == 0
    after = rows(demo_db)
    assert len(after) == 30 and "Renamed Lamp" in after[0][2]
    assert len(ledger(url)) == 31  # only the renamed row's new request was paid for
    whole = {digest(before): "old", digest(after): "new"}
    labels = [whole.get(look, "neither") for look in looks(seen)]
    assert set(labels) == {"old", "new"}, labels  # never a partition half old, half gone
    assert labels == sorted(labels, key=["old", "new"].index)  # and once new, it stays new
    assert whole[looks(seen, killed_at)[0]] == "old"  # the killed write left the old one
    assert whole[looks(seen, finished_at)[-1]] == "new"
