"""Production behaviour against a faulty emulator: retries, cancel, status, no double pay."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from batchpipe import api, steps
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.runs import run_partition
from tests.support import batchpipe, ledger, pipeline, query

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 3)


@pytest.fixture
def faulty(demo_db: Path, private_emulator):
    return private_emulator


def billed_twice(project: Path, url: str) -> list[str]:
    """Request hashes the ledger charged more than once."""
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        owner = dict(
            con.execute(
                "SELECT b.batch_id || '/' || coalesce(r.wire_id, r.custom_id), r.request_hash "
                "FROM batchpipe_batch_requests r JOIN batchpipe_batches b USING (submission_id)"
            ).fetchall()
        )
    charges = Counter(owner[f"{e['batch_id']}/{e['custom_id']}"] for e in ledger(url))
    return [h for h, n in charges.items() if n > 1]


def test_a_fault_heavy_run_accounts_for_every_row_and_pays_once(demo_db: Path, faulty) -> None:
    url = faulty(
        "--seed", "7", "--http-error-rate", "0.05", "--stream-cut-rate", "0.3",
        "--errored-rate", "0.1", "--expired-rate", "0.05",
    )  # fmt: skip
    resource = BatchpipeResource(poll_seconds=0.05, wait=True)
    days = [DAY + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        run_partition(pipeline(), day, resource)

    statuses = dict(
        query(demo_db, "SELECT result_status, count(*) FROM product_descriptions GROUP BY 1")
    )
    source = query(
        demo_db, "SELECT count(*) FROM products WHERE added_on BETWEEN ? AND ?", [days[0], days[-1]]
    )[0][0]
    assert sum(statuses.values()) == source  # every source row has its row
    assert "missing" not in statuses
    # Each request ended answered, with a final error, or with its attempts used up.
    unsettled = query(
        demo_db,
        """
        WITH latest AS (
            SELECT request_hash, arg_max(result_type, loaded_at) AS type,
                   arg_max(error_type, loaded_at) AS error, count(*) AS attempts
            FROM batchpipe_results GROUP BY 1
        )
        SELECT * FROM latest WHERE type <> 'succeeded'
          AND coalesce(error, '') <> 'invalid_request_error' AND attempts < 3
        """,
    )
    assert unsettled == []
    assert (
        query(demo_db, "SELECT count(*) FROM batchpipe_batches WHERE request_count < 30")[0][0] > 0
    )  # follow-up batches carried the retries
    assert billed_twice(demo_db, url) == []
    mismatched = query(
        demo_db,
        "SELECT product_id FROM product_descriptions WHERE result_status = 'succeeded' "
        "AND NOT contains(description, name || ' (' || category || ')')",
    )
    assert mismatched == []  # each answer belongs to its own row, whatever the order
    # A request that failed and then succeeded on a retry shows its success.
    retried = query(
        demo_db,
        "SELECT request_hash FROM batchpipe_results GROUP BY 1 "
        "HAVING count(*) > 1 AND bool_or(result_type = 'succeeded')",
    )
    assert retried  # the faults made some
    shown = query(
        demo_db,
        "SELECT DISTINCT p.result_status FROM product_descriptions p JOIN batchpipe_requests r "
        "ON r.custom_id = CAST(p.product_id AS VARCHAR) AND r.partition_date = p.partition_date "
        "WHERE r.request_hash IN ?",
        [[h for (h,) in retried]],
    )
    assert shown == [("succeeded",)]


def test_cancel_records_what_became_of_each_request(demo_db: Path, faulty) -> None:
    url = faulty("--requests-per-second", "2")
    pf = pipeline()
    steps.build_requests(pf, DAY, print)
    submitted = steps.submit(pf, DAY, api.client(), print, wait=False, poll_seconds=0.1)
    (batch_id,) = submitted.open_batch_ids
    run = batchpipe("cancel", "product_descriptions", "--date", str(DAY))
    assert run.returncode == 0, run.stderr
    assert f"asked the API to cancel {batch_id}" in run.stdout
    outcomes = dict(
        query(demo_db, "SELECT result_type, count(*) FROM batchpipe_results GROUP BY 1")
    )
    assert outcomes.get("canceled", 0) > 0 and sum(outcomes.values()) == 30
    assert len(ledger(url)) == outcomes.get("succeeded", 0)  # canceled ones cost nothing

    status = batchpipe("status")
    assert batch_id in status.stdout and "loaded" in status.stdout


def test_asset_checks_report_coverage_and_the_error_rate(demo_db: Path, faulty) -> None:
    import dagster as dg

    from batchpipe.defs.assets import pipeline_assets
    from batchpipe.defs.specs import source_spec

    # Every line errors, on each of its max_attempts sends: a rate below 1 would leave a
    # share that depends on the wire ids, which carry a random token per submission.
    faulty("--errored-rate", "1")
    pf = pipeline()
    result = dg.materialize(
        [source_spec(pf), *pipeline_assets(pf)],
        partition_key=str(DAY),
        resources={"batchpipe": BatchpipeResource(poll_seconds=0.05, wait=True)},
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["every_row_final"].passed  # errors are final statuses too
    assert not checks["error_rate"].passed
    assert checks["error_rate"].metadata["error_rate"].value > 0.05
    materialized = result.asset_materializations_for_node("product_descriptions__enriched")[0]
    assert (
        "| product_id | description | status |" in materialized.metadata["batchpipe/preview"].value
    )
