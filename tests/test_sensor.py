"""A partition run as Dagster runs it without `wait`: the submitting run claims nothing it does
not have, and the sensor's run (of the pipeline's job, tagged with where it comes from)
materializes results and enriched once the batches have ended, checks evaluated then."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import dagster as dg
import pytest

from batchpipe.dagster import build_definitions
from batchpipe.defs.resources import BatchpipeResource
from tests.support import query, sensor_follow_ups, sensor_tick

pytestmark = pytest.mark.slow

DAY = "2026-11-03"
NAME = "product_descriptions"


RESOURCE = BatchpipeResource(poll_seconds=0.1, wait=False)


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    """One evaluation of the pipeline's sensor, as the daemon makes it."""
    return sensor_tick(defs, instance, cursor, RESOURCE, NAME)


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [record.user_message for record in instance.all_logs(run_id)]


def _events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [
        record.event_log_entry.dagster_event
        for record in instance.get_records_for_run(run_id, of_type=kind).records
    ]


@pytest.mark.parametrize("warehouse_kind", ["file", "ducklake"], indirect=True)
def test_open_batches_leave_results_and_enriched_unmaterialized_until_the_sensors_run(
    demo_db: Path, private_emulator, warehouse_kind: str
) -> None:
    private_emulator(latency=3.0)  # batches end 3 s after they are created
    for other in demo_db.joinpath("pipelines").glob("*.yaml"):
        if other.stem != NAME:
            other.unlink()
    defs = build_definitions(demo_db / "pipelines")
    job = defs.resolve_job_def(f"{NAME}__job")
    results, enriched = dg.AssetKey([NAME, "results"]), dg.AssetKey([NAME, "enriched"])

    with dg.instance_for_test() as instance:
        # a backfill's run, as the daemon would launch it: the whole job, no waiting
        submitted = job.execute_in_process(
            partition_key=DAY, instance=instance, tags={"dagster/backfill": "bf-1"}
        )
        assert submitted.success
        materialized = {
            e.asset_key
            for e in _events(instance, submitted.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        }
        assert materialized == {
            dg.AssetKey([NAME, "requests"]),
            dg.AssetKey([NAME, "batch_status"]),
        }
        assert not _events(instance, submitted.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        skipped = {
            e.step_key
            for e in _events(instance, submitted.run_id, dg.DagsterEventType.STEP_SKIPPED)
        }
        assert f"{NAME}__enriched" in skipped
        status = instance.get_latest_materialization_event(enriched)
        assert status is None  # the partition is not green: its data is not there
        assert any(
            "Dagster marks its" in message and "bf-1" in message
            for message in _messages(instance, submitted.run_id)
        )  # the backfill's false "failed" is said in the run that causes it

        # enriched run on its own writes nothing that is not final: open batches, or a
        # partition whose requests were never built
        for day, why in (
            (DAY, "batch(es) of 2026-11-03 not ended yet"),
            ("2026-11-04", "never built"),
        ):
            alone = job.execute_in_process(
                partition_key=day, asset_selection=[enriched], instance=instance
            )
            assert alone.success
            assert instance.get_latest_materialization_event(enriched) is None
            assert not _events(instance, alone.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            assert any(why in message for message in _messages(instance, alone.run_id))

        cursor, runs = None, []
        deadline = time.monotonic() + 30
        while not runs and time.monotonic() < deadline:
            result = _tick(defs, instance, cursor)
            assert isinstance(result, dg.SensorResult)
            cursor, runs = result.cursor, result.run_requests
            time.sleep(0.1)

        (run,) = runs
        assert run.job_name == f"{NAME}__job"
        assert set(run.asset_selection) == {results, enriched}
        assert run.tags == {
            "batchpipe/pipeline": NAME,
            "batchpipe/partition": DAY,
            "batchpipe/submitted_by_run": submitted.run_id,
            "batchpipe/backfill": "bf-1",
            "dagster/backfill": "bf-1",  # listed on the backfill's page
        }
        finished = job.execute_in_process(
            partition_key=run.partition_key,
            asset_selection=run.asset_selection,
            instance=instance,
            tags=run.tags,
        )
        assert finished.success
        record = instance.get_latest_materialization_event(enriched)
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert record.run_id == finished.run_id
        assert meta["dagster/row_count"] == 30
        assert meta["batchpipe/without_result"] == 0
        assert meta["batchpipe/cost_usd"] > 0
        catalog = "warehouse" if warehouse_kind == "file" else "lake"
        assert meta["dagster/table_name"] == f"{catalog}.main.{NAME}"
        columns = {c.name: c.type for c in meta["dagster/column_schema"].columns}
        assert columns["description"] == "VARCHAR" and columns["partition_date"] == "DATE"
        checks = {
            e.event_specific_data.check_name: e.event_specific_data
            for e in _events(instance, finished.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        }
        assert set(checks) == {"every_row_final", "error_rate"}
        assert all(c.passed for c in checks.values())
        assert {c.partition for c in checks.values()} == {DAY}
        assert checks["every_row_final"].metadata["rows"].value == 30
        assert checks["every_row_final"].metadata["without_result"].value == 0

        after = _tick(defs, instance, cursor)
        assert isinstance(after, dg.SkipReason)  # nothing left open: no second run

    statuses = query(
        demo_db,
        f"SELECT result_status, count(*) FROM {NAME} WHERE partition_date = ? GROUP BY 1",
        [dt.date.fromisoformat(DAY)],
    )
    assert statuses == [("succeeded", 30)]


def test_a_retry_round_materializes_nothing_and_the_checks_run_once_when_final(
    demo_db: Path, private_emulator
) -> None:
    # a third of the lines expire: each round sends them again, up to max_attempts (3)
    private_emulator("--expired-rate", "0.34", latency=1.0)
    for other in demo_db.joinpath("pipelines").glob("*.yaml"):
        if other.stem != NAME:
            other.unlink()
    defs = build_definitions(demo_db / "pipelines")
    job = defs.resolve_job_def(f"{NAME}__job")
    enriched = dg.AssetKey([NAME, "enriched"])
    with dg.instance_for_test() as instance:
        submitted = job.execute_in_process(partition_key=DAY, instance=instance)
        runs = sensor_follow_ups(defs, instance, job, RESOURCE, NAME)
        assert len(runs) >= 2  # at least one retry round before the final one
        for run in runs:
            assert run.success
            assert run.dagster_run.tags["batchpipe/submitted_by_run"] == submitted.run_id
        *rounds, final = runs
        for run in rounds:  # batches still open after it: nothing claimed, nothing checked
            kinds = (
                dg.DagsterEventType.ASSET_MATERIALIZATION,
                dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            )
            assert not [e for kind in kinds for e in _events(instance, run.run_id, kind)]
        checks = _events(instance, final.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        assert sorted(e.event_specific_data.check_name for e in checks) == [
            "error_rate",
            "every_row_final",
        ]
        record = instance.get_latest_materialization_event(enriched)
        assert record.run_id == final.run_id
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        # each row counted once: the rows still expired after three sends are final too
        assert meta["dagster/row_count"] == 30
        assert meta["batchpipe/succeeded"] + meta["batchpipe/expired"] == 30
        assert meta["batchpipe/without_result"] == 0
