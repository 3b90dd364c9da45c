"""A partition of several batches loads each batch's results as soon as that batch ends,
not once the last has: the paid answers are in DuckDB at once (safe from the 29-day
limit) and the last batch's load is all that is left when it ends. Both ways a
partition waits: a run that waits (`batchpipe run`), and the sensor's runs.

The emulator at 1 request a second (per batch, once its latency has passed) makes
the partition's batches of 10, 10 and 5 end at about 5.5 s and 10.5 s after they were
created: the batch of 5 first. Its results must be loaded before the others end."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import anthropic
import dagster as dg
import pytest

from batchpipe.dagster import build_definitions
from batchpipe.defs.resources import BatchpipeResource
from tests.support import batchpipe, bulk_project, ledger, query, request_of, sensor_follow_ups

pytestmark = pytest.mark.slow

DAY = "2026-11-03"
NAME = "bulk"


def _slow_emulator(private_emulator) -> str:
    return private_emulator("--requests-per-second", "1", latency=0.5)


def _loaded_before_the_last_ended(project: Path, url: str) -> list[tuple[str, int]]:
    """The partition's batches loaded before its last batch ended, with their sizes."""
    loaded = query(project, "SELECT batch_id, loaded_at FROM batchpipe_batches ORDER BY 1")
    assert len(loaded) == 3 and all(at is not None for _, at in loaded)
    client = anthropic.Anthropic(base_url=url, api_key="test")
    upstream = {b: client.messages.batches.retrieve(b) for b, _ in loaded}
    last_end = max(b.ended_at for b in upstream.values()).astimezone(dt.UTC).replace(tzinfo=None)
    return [(b, upstream[b].request_counts.succeeded) for b, at in loaded if at < last_end]


def _each_row_once(project: Path, url: str, rows: int = 25) -> None:
    assert query(project, f"SELECT result_status, count(*) FROM {NAME}_out GROUP BY ALL") == [
        ("succeeded", rows)
    ]
    billed = Counter(request_of(entry["custom_id"]) for entry in ledger(url))
    assert len(billed) == rows and set(billed.values()) == {1}


def test_a_waiting_run_loads_each_batch_as_it_ends(project: Path, private_emulator) -> None:
    bulk_project(project, 25, per_batch=10)
    url = _slow_emulator(private_emulator)

    run = batchpipe("run", NAME, "--date", DAY)

    assert run.returncode == 0, run.stdout + run.stderr
    _each_row_once(project, url)
    (early,) = _loaded_before_the_last_ended(project, url)
    assert early[1] == 5  # the small batch, loaded while the other two still ran
    assert "25 result(s) copied into DuckDB from 3 batch(es), 3 of them as soon as" in run.stdout


def test_the_sensor_loads_ended_batches_before_the_partitions_last(
    project: Path, private_emulator
) -> None:
    bulk_project(project, 25, per_batch=10)
    url = _slow_emulator(private_emulator)
    defs = build_definitions(project / "pipelines")
    job = defs.resolve_job_def(f"{NAME}__job")
    resource = BatchpipeResource(poll_seconds=0.1, wait=False)
    results, enriched = dg.AssetKey([NAME, "results"]), dg.AssetKey([NAME, "enriched"])

    with dg.instance_for_test() as instance:
        submitted = job.execute_in_process(
            partition_key=DAY, instance=instance, resources={"batchpipe": resource}
        )
        assert submitted.success
        runs = sensor_follow_ups(defs, instance, job, resource, NAME)

        assert len(runs) == 2 and all(r.success for r in runs)
        assert all(set(r.dagster_run.asset_selection) == {results, enriched} for r in runs)
        # The first run loaded the ended batch and materialized nothing: not final yet.
        assert not runs[0].get_asset_materialization_events()
        assert instance.get_latest_materialization_event(enriched) is not None

    _each_row_once(project, url)
    (early,) = _loaded_before_the_last_ended(project, url)
    assert early[1] == 5


def test_batches_that_end_while_the_rest_are_sent_are_loaded_meanwhile(
    project: Path, private_emulator
) -> None:
    """At latency 0 each batch ends as its create is answered. A waiting run that polls
    between creates (a poll interval of 0 here; 100 creates take minutes) loads the
    first batch before the last is even sent, not after."""
    bulk_project(project, 30, per_batch=10)
    url = private_emulator(latency=0.0)
    defs = build_definitions(project / "pipelines")
    job = defs.resolve_job_def(f"{NAME}__job")
    resource = BatchpipeResource(poll_seconds=0.0, wait=True)

    with dg.instance_for_test() as instance:
        run = job.execute_in_process(
            partition_key=DAY, instance=instance, resources={"batchpipe": resource}
        )
    assert run.success

    _each_row_once(project, url, rows=30)
    sent = query(
        project,
        "SELECT intent_at, loaded_at FROM batchpipe_batches ORDER BY intent_at",
    )
    assert len(sent) == 3
    first_loaded, last_sent = sent[0][1], sent[-1][0]
    assert first_loaded < last_sent
