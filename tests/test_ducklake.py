"""A DuckLake warehouse (catalog in a real PostgreSQL, data in Parquet files): set up by
`batchpipe warehouse init`, written by many processes at once, each lost commit race run
again as a whole, and a process killed after losing one recovered by running again."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from batchpipe import lake, state, warehouse
from tests.support import batchpipe, ledger, query, request_of

DAY = "2026-11-03"
DAYS = ["2026-11-04", "2026-11-05", "2026-11-06", "2026-11-07"]


def dagster_log_lines(home: Path) -> list[str]:
    """Every message of every run in the Dagster instance at `home`."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [
            entry.user_message
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id)
        ]


def test_a_run_before_init_says_to_init_and_sends_nothing(
    project: Path, lake_dsn: str, private_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = private_emulator()
    monkeypatch.setenv("BATCHPIPE_DB", f"ducklake:postgres:{lake_dsn}")
    monkeypatch.setenv("BATCHPIPE_DATA_PATH", str(project / "lake"))

    ran = batchpipe("run", "product_descriptions", "--date", DAY)

    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr
    assert "there is no DuckLake catalog at ducklake:postgres:" in ran.stderr
    assert "run `batchpipe warehouse init` once" in ran.stderr
    assert ledger(url) == []


def test_init_makes_the_catalog_once_and_says_so(
    project: Path, lake_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A password in the DSN (trust auth ignores it) never reaches output.
    monkeypatch.setenv("BATCHPIPE_DB", f"ducklake:postgres:{lake_dsn} password=s3cret-pw")
    monkeypatch.delenv("BATCHPIPE_DATA_PATH", raising=False)

    refused = batchpipe("warehouse", "init")
    assert refused.returncode == 1
    assert "BATCHPIPE_DATA_PATH is not set" in refused.stderr

    monkeypatch.setenv("BATCHPIPE_DATA_PATH", str(project / "lake"))
    first = batchpipe("warehouse", "init")
    again = batchpipe("warehouse", "init")

    assert first.returncode == 0, first.stderr[-2000:]
    assert "DuckLake catalog created" in first.stdout
    assert f"data files in {project / 'lake'}/" in first.stdout
    assert "state tables" in first.stdout and "created or brought up to date" in first.stdout
    assert "DuckLake catalog found" in again.stdout and "already current" in again.stdout
    for out in (refused, first, again):
        assert "s3cret-pw" not in out.stdout + out.stderr
        assert "password=***" in out.stdout + out.stderr


def test_a_lost_commit_race_runs_the_whole_transaction_again(lake_project: Path) -> None:
    """Two writers read the turn and write it plus one; the second to commit loses the race,
    runs again on a snapshot holding the first's write, and no increment is lost."""
    tries = []
    with state.connect() as con, state.connect() as other:
        for attempt in warehouse.transactions(con, "count a turn"):
            with attempt:
                tries.append(1)
                (turn,) = con.execute(
                    "SELECT turn FROM batchpipe_turns WHERE name = 'send'"
                ).fetchone()
                if len(tries) == 1:  # another writer commits in between
                    other.execute("UPDATE batchpipe_turns SET turn = turn + 1")
                con.execute("UPDATE batchpipe_turns SET turn = ?", [turn + 1])
        (final,) = con.execute("SELECT turn FROM batchpipe_turns").fetchone()
    assert len(tries) == 2
    assert final == 2


def test_a_race_lost_every_time_is_raised_after_the_last_attempt(
    lake_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "CONFLICT_ATTEMPTS", 3)
    tries = []
    with state.connect() as con, state.connect() as other:
        with pytest.raises(duckdb.Error, match=r"(?i)conflict"):
            for attempt in warehouse.transactions(con, "count a turn"):
                with attempt:
                    tries.append(1)
                    con.execute("UPDATE batchpipe_turns SET turn = turn + 1")
                    other.execute("UPDATE batchpipe_turns SET turn = turn + 1")
        (final,) = con.execute("SELECT turn FROM batchpipe_turns").fetchone()
    assert len(tries) == 3
    assert final == 3  # the other writer's three; none of the lost attempts'


@pytest.mark.slow
def test_four_partitions_at_once_and_two_runs_of_one(lake_project: Path, private_emulator) -> None:
    url = private_emulator(latency=1.0)
    env = {"BATCHPIPE_LOCK_WAIT": "300"}
    days = [*DAYS, DAYS[-1]]  # the last partition twice: one run waits for the other
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", day],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for day in days
    ]
    outcomes = [run.communicate(timeout=600) for run in runs]

    for run, (_, err) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, err[-3000:]
    billed = collections.Counter(request_of(e["custom_id"]) for e in ledger(url))
    assert len(billed) == 4 * 30 and set(billed.values()) == {1}  # each request paid once
    per_day = query(
        lake_project,
        "SELECT partition_date::VARCHAR, count(*), count(DISTINCT product_id), "
        "count(*) FILTER (result_status = 'succeeded') FROM product_descriptions "
        "GROUP BY 1 ORDER BY 1",
    )
    assert per_day == [(day, 30, 30, 30) for day in DAYS]
    batches = query(
        lake_project,
        "SELECT partition_date::VARCHAR, count(*) FROM batchpipe_batches "
        "WHERE state <> 'failed' GROUP BY 1 ORDER BY 1",
    )
    assert batches == [(day, 1) for day in DAYS]  # one set of batches per partition
    (results, distinct) = query(
        lake_project,
        "SELECT count(*), count(DISTINCT request_hash) FROM batchpipe_results",
    )[0]
    assert results == distinct == 4 * 30  # no result loaded twice


@pytest.mark.slow
def test_plan_show_status_and_costs_read_a_ducklake(lake_project: Path, private_emulator) -> None:
    """The commands an analyst reads with work on a DuckLake as on a file, and agree with
    the emulator's ledger; each is read-only, so none of them takes the writer's lock."""
    url = private_emulator()
    plan = batchpipe("plan", "product_descriptions", "--date", DAY)
    assert plan.returncode == 0, plan.stderr
    assert "30 requests" in plan.stdout, plan.stdout
    assert ledger(url) == []  # a plan costs nothing

    ran = batchpipe("run", "product_descriptions", "--date", DAY)
    assert ran.returncode == 0, ran.stderr[-3000:]

    shown = batchpipe("show", "product_descriptions", "--date", DAY)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("│ succeeded ") == 5  # its first five rows
    assert "for 30 batch request(s)" in shown.stdout, shown.stdout
    (batch_id,) = [r[0] for r in query(lake_project, "SELECT batch_id FROM batchpipe_batches")]
    status = batchpipe("status")
    assert status.returncode == 0, status.stderr
    assert batch_id in status.stdout and "loaded" in status.stdout
    costs = batchpipe("costs", "--by", "pipeline", "--format", "json")
    assert costs.returncode == 0, costs.stderr
    (row,) = json.loads(costs.stdout)
    billed = sum(line["usd"] for line in ledger(url))
    assert row["pipeline"] == "product_descriptions" and row["partitions"] == 1
    assert row["spent_usd"] == pytest.approx(billed, abs=1e-6)


@pytest.mark.slow
def test_a_run_killed_after_losing_a_commit_race_recovers_without_paying_twice(
    lake_project: Path, private_emulator
) -> None:
    """Another writer keeps committing to the turn row, so the run's intent loses a race;
    the run is killed right after that rollback. Nothing of it was committed, so the rerun
    sends each request once and writes the whole partition."""
    url = private_emulator()
    # A file-backed Dagster instance: the run's event log outlives the kill.
    home = lake_project / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    stop = threading.Event()

    def rival() -> None:  # another machine's writer, as fast as it can commit
        with state.connect() as con:
            while not stop.is_set():
                warehouse.write(con, "UPDATE batchpipe_turns SET turn = turn + 1")
                time.sleep(0.002)

    thread = threading.Thread(target=rival, daemon=True)
    thread.start()
    try:
        killed = batchpipe(
            "run",
            "product_descriptions",
            "--date",
            DAY,
            env={"BATCHPIPE_KILL_AT": "after_conflict", "DAGSTER_HOME": str(home)},
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert killed.returncode == -9, killed.stderr[-3000:]
    said = dagster_log_lines(home)
    assert any(
        "record the intent: the DuckLake commit lost a race to another writer" in line
        for line in said
    ), said[-20:]  # the retry is in the run's event log, where the UI shows it
    assert ledger(url) == []  # the intent rolled back: nothing was sent

    again = batchpipe("run", "product_descriptions", "--date", DAY)

    assert again.returncode == 0, again.stderr[-3000:]
    billed = collections.Counter(request_of(e["custom_id"]) for e in ledger(url))
    assert len(billed) == 30 and set(billed.values()) == {1}
    rows = query(
        lake_project,
        "SELECT count(*), count(*) FILTER (result_status = 'succeeded') "
        "FROM product_descriptions WHERE partition_date = ?",
        [DAY],
    )
    assert rows == [(30, 30)]


def test_maintain_expires_old_snapshots_and_merges_small_files(lake_project: Path) -> None:
    with state.connect() as con:
        for i in range(5):  # five commits, five small files
            con.execute("INSERT INTO products SELECT * FROM products WHERE product_id = ?", [i + 1])
        (before,) = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()

    done = batchpipe("warehouse", "maintain", "--keep-days", "0")

    assert done.returncode == 0, done.stderr[-2000:]
    with state.connect() as con:
        (after,) = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()
        (rows,) = con.execute("SELECT count(*) FROM products").fetchone()
    assert after < before
    assert rows == 305  # nothing a table holds now is lost
    assert "expired" in done.stdout and "merged" in done.stdout


def test_a_file_warehouse_needs_no_upkeep(demo_db: Path) -> None:
    done = batchpipe("warehouse", "maintain")
    assert done.returncode == 0
    assert "is a DuckDB file: it needs no upkeep" in done.stdout


def test_extensions_come_from_the_wheels_not_the_network(lake_project: Path) -> None:
    root = lake.extension_directory()
    links = sorted(p.name for p in root.glob("v*/*/*.duckdb_extension"))
    assert links == [
        "ducklake.duckdb_extension",
        "httpfs.duckdb_extension",
        "postgres_scanner.duckdb_extension",
    ]
    for link in root.glob("v*/*/*.duckdb_extension"):
        assert "site-packages" in str(link.resolve())  # the installed wheel's own file
