"""The sensor, evaluated as Dagster would: it watches the partition's open batches through
Dagster's own records, reports progress, and launches results + enriched once they end."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from batchpipe.defs.assets import pipeline_assets
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.sensors import batch_sensor
from batchpipe.defs.specs import source_spec
from batchpipe.loader import load_pipelines

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def test_sensor_drives_a_partition_to_the_enriched_table(
    demo_db: Path, emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator_url)
    (pf,) = [f for f in load_pipelines() if f.pipeline.name == "product_descriptions"]
    assets = [source_spec(pf), *pipeline_assets(pf)]
    resource = BatchpipeResource(poll_seconds=0.1, wait=False)
    sensor = batch_sensor(pf)
    with dg.instance_for_test() as instance:
        submitted = dg.materialize(
            assets,
            selection=["product_descriptions/requests", "product_descriptions/batch_status"],
            partition_key=DAY,
            instance=instance,
            resources={"batchpipe": resource},
        )
        assert submitted.success  # returned at once, without waiting for the batch

        cursor, runs, observed = None, [], []
        deadline = time.monotonic() + 30
        while not runs and time.monotonic() < deadline:
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"batchpipe": resource}
            )
            result = sensor(context)
            assert isinstance(result, dg.SensorResult)
            cursor, runs = result.cursor, result.run_requests
            observed += result.asset_events
            time.sleep(0.1)

        assert observed and observed[0].partition == DAY
        assert observed[-1].metadata["batchpipe/succeeded"].value == 30
        (run,) = runs
        assert run.partition_key == DAY
        assert {k.to_user_string() for k in run.asset_selection} == {
            "product_descriptions/results",
            "product_descriptions/enriched",
        }
        finished = dg.materialize(
            assets,
            selection=run.asset_selection,
            partition_key=run.partition_key,
            instance=instance,
            resources={"batchpipe": resource},
        )
        assert finished.success
        after = sensor(
            dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"batchpipe": resource}
            )
        )
        assert isinstance(after, dg.SkipReason)  # nothing left open: no second run

    with duckdb.connect(str(demo_db / "warehouse.duckdb"), read_only=True) as con:
        statuses = con.execute(
            "SELECT result_status, count(*) FROM product_descriptions "
            "WHERE partition_date = ? GROUP BY 1",
            [dt.date.fromisoformat(DAY)],
        ).fetchall()
    assert statuses == [("succeeded", 30)]
