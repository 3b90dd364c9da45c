"""Issue 18: partitions larger than the room in the API's processing queue go out as far as
the room goes, the rest held and sent as batches end, by a waiting run or by the sensor's
runs; a requests-per-minute limit is waited out as the API asks. The emulator is the
referee: it refuses what would pass its limits and records the queue's peak and any call
made before a 429's retry-after had passed."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from batchpipe.dagster import build_definitions
from batchpipe.defs.resources import BatchpipeResource
from tests.support import (
    batchpipe,
    bulk_project,
    ledger,
    query,
    request_of,
    sensor_follow_ups,
    set_emulator_limits,
)

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 3)
NAME = "bulk"


def _record(url: str) -> dict:
    """The emulator's own account of its limits: 429s, early calls, the queue's peak."""
    with urllib.request.urlopen(f"{url}/_emulator/limits", timeout=5) as response:
        return json.loads(response.read())


def _billed(url: str) -> Counter:
    """How many times the emulator billed each request."""
    return Counter(request_of(entry["custom_id"]) for entry in ledger(url))


def _statuses(project: Path) -> list[tuple]:
    return query(project, f"SELECT result_status, count(*) FROM {NAME}_out GROUP BY ALL")


def test_a_partition_four_times_the_queue_limit_completes_unattended(
    project: Path, private_emulator
) -> None:
    """12,000 rows, 1,000 a batch, under a queue limit of 3,000: the run sends three
    batches, is refused the fourth (429, retry-after), holds the rest and sends them as
    the first ones end. It completes without a person; the queue never held more than
    3,000; each row was billed once."""
    bulk_project(project, 12_000)
    url = private_emulator("--queue-limit", "3000", latency=1.0)
    run = batchpipe("run", NAME, "--date", DAY.isoformat())
    assert run.returncode == 0, run.stdout + run.stderr
    assert _statuses(project) == [("succeeded", 12_000)]
    billed = _billed(url)
    assert len(billed) == 12_000 and set(billed.values()) == {1}
    record = _record(url)
    assert record["refused"] >= 1  # the limit was met, and lived with
    assert 2_000 < record["peak_queued"] <= 3_000
    assert record["refused_early"] == 0
    assert query(project, "SELECT count(*) FROM batchpipe_holds") == [(0,)]


def test_a_cap_of_our_own_keeps_open_requests_under_it_without_a_429(
    project: Path, private_emulator
) -> None:
    """BATCHPIPE_MAX_QUEUED_REQUESTS=2500 under a queue limit of 3000: batchpipe never
    asks for more than its cap, so the API never has to refuse a create."""
    bulk_project(project, 6_000)
    url = private_emulator("--queue-limit", "3000", latency=1.0)
    run = batchpipe(
        "run", NAME, "--date", DAY.isoformat(), env={"BATCHPIPE_MAX_QUEUED_REQUESTS": "2500"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert _statuses(project) == [("succeeded", 6_000)]
    record = _record(url)
    assert record["refused"] == 0
    assert record["peak_queued"] <= 2_500
    assert set(_billed(url).values()) == {1}


@pytest.mark.parametrize(
    ("rows", "days", "extra", "held_for"),
    [(12_000, 1, "", "canary: a canary batch"), (2_000, 5, "  canary: 0\n", "rate_limit: This")],
    # Batches of the backfill start being processed 8 s after their create: the five
    # submitting runs (about two seconds each) meet a full queue.
    ids=["one", "backfill"],
)
def test_the_sensor_sends_held_batches_as_room_appears(
    project: Path, private_emulator, rows: int, days: int, extra: str, held_for: str
) -> None:
    """Through Dagster without waiting, as the daemon runs it: one partition of 12,000
    rows, or a backfill of five partitions of 2,000 started one after the other with
    nothing waiting, under a queue limit of 3,000. Each submitting run sends what fits
    and records the rest as held; the sensor's runs send it as batches end. Every
    partition ends materialized, no run fails, each row is billed once. The single
    partition's request side is new, so a canary of 10 goes first: held behind it, the
    rest then meets the queue limit too."""
    bulk_project(project, rows, days, extra=extra)
    url = private_emulator("--queue-limit", "3000", latency=2.0 if days == 1 else 8.0)
    resource = BatchpipeResource(poll_seconds=0.2, wait=False)  # the sensor's
    defs = build_definitions(project / "pipelines")
    job = defs.resolve_job_def(f"{NAME}__job")
    partitions = [(DAY + dt.timedelta(days=n)).isoformat() for n in range(days)]
    with dg.instance_for_test() as instance:
        submitted = [job.execute_in_process(partition_key=p, instance=instance) for p in partitions]
        assert all(run.success for run in submitted)
        status_key = dg.AssetKey([NAME, "batch_status"])
        records = instance.fetch_materializations(status_key, limit=100).records
        reasons = [
            r.asset_materialization.metadata["batchpipe/held_reason"].value
            for r in records
            if "batchpipe/held_reason" in r.asset_materialization.metadata
        ]
        assert any(reason.startswith(held_for) for reason in reasons), reasons
        if days == 1:  # the canary's hold lasts past the run: `status` shows it
            status = batchpipe("status")
            assert "held: bulk 2026-11-03: 11990 request(s) not sent yet" in status.stdout
            assert "(canary: a canary batch of 10 request(s) goes first" in status.stdout
        runs = sensor_follow_ups(defs, instance, job, resource, NAME, timeout=120)
        assert runs and all(run.success for run in runs)
        enriched = dg.AssetKey([NAME, "enriched"])
        done = instance.get_materialized_partitions(enriched)
    assert done == set(partitions)
    assert _statuses(project) == [("succeeded", rows * days)]
    billed = _billed(url)
    assert len(billed) == rows * days and set(billed.values()) == {1}
    record = _record(url)
    assert record["refused"] >= 1 and record["peak_queued"] <= 3_000  # met, and lived with


def test_a_batch_rpm_limit_is_waited_out_as_the_api_asks(project: Path, private_emulator) -> None:
    """20 one-request batches under 30 calls a minute on the batch endpoints (20 creates
    and 20 downloads at least, so the limit is met within the first minute): calls are
    refused along the way, and the run completes; the emulator saw no call refused before
    the previous refusal's retry-after had passed."""
    bulk_project(project, 20, per_batch=1)
    url = private_emulator("--batch-rpm", "30", latency=0.0)
    run = batchpipe("run", NAME, "--date", DAY.isoformat())
    assert run.returncode == 0, run.stdout + run.stderr
    assert _statuses(project) == [("succeeded", 20)]
    record = _record(url)
    assert record["refused"] >= 1
    assert record["refused_early"] == 0, record["early_calls"]
    assert set(_billed(url).values()) == {1}


def test_a_queue_no_batch_of_ours_drains_fails_naming_the_limit_and_sends_once_later(
    project: Path, private_emulator
) -> None:
    """A batch of 10 under a queue limit of 5, with nothing of this warehouse processing:
    no wait makes room, so once BATCHPIPE_API_PATIENCE has passed the run fails in the
    API's words, naming max_batch_requests, with nothing created. With the limit lifted,
    the same command sends the held requests, each once."""
    bulk_project(project, 10, per_batch=10, extra="  canary: 0\n")
    url = private_emulator("--queue-limit", "5", latency=0.0)
    stuck = batchpipe("run", NAME, "--date", DAY.isoformat(), env={"BATCHPIPE_API_PATIENCE": "3"})
    assert stuck.returncode == 1, stuck.stdout + stuck.stderr
    assert "no batch of this warehouse is processing to make room" in stuck.stderr
    assert "This request would exceed your organization's rate limit of 5" in stuck.stderr
    assert "request.max_batch_requests" in stuck.stderr
    assert _record(url)["refused"] >= 2 and not _billed(url)

    set_emulator_limits(url, queue_limit=None)
    resumed = batchpipe("run", NAME, "--date", DAY.isoformat())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _statuses(project) == [("succeeded", 10)]
    assert set(_billed(url).values()) == {1} and len(_billed(url)) == 10
