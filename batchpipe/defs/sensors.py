"""Polling for batches (the API has no webhooks), and the daily schedules.

No `from __future__ import annotations`: Dagster inspects the sensor's parameter
types to pass it the context and the resource.

The sensor reads Dagster's own records, never the DuckDB file (a reader could
collide with a writing run): the batch ids still open after a step are in that
step's materialization metadata. It polls those batches, records their progress
as observations of `NAME/batch_status` (the progress view the API lacks), and
once every batch of a partition has ended it launches `NAME/results` and
`NAME/enriched` for that partition.
"""

import hashlib

import anthropic
import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from pydantic import BaseModel

from batchpipe.defs import specs
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.errors import scrub, scrubbed
from batchpipe.loader import PipelineFile


class SensorCursor(BaseModel):
    after_storage_id: int = 0
    open: dict[str, list[str]] = {}  # partition key -> batch ids still processing


def batch_sensor(pf: PipelineFile) -> dg.SensorDefinition:
    name = pf.pipeline.name
    watched = [specs.asset_key(pf, "batch_status"), specs.asset_key(pf, "results")]
    finish = [specs.asset_key(pf, "results"), specs.asset_key(pf, "enriched")]

    @dg.sensor(
        name=f"{name}__batches",
        description=f"Polls the open Message Batches of {name} and loads them once ended.",
        minimum_interval_seconds=pf.pipeline.request.poll_interval,
        asset_selection=finish,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def poll_batches(
        context: dg.SensorEvaluationContext, batchpipe: BatchpipeResource
    ) -> dg.SensorResult | dg.SkipReason:
        with scrubbed():  # a failed tick is stored by Dagster: without the API key
            return _poll(context, batchpipe)

    def _poll(
        context: dg.SensorEvaluationContext, batchpipe: BatchpipeResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = SensorCursor.model_validate_json(context.cursor or "{}")
        cursor = _track_new_materializations(context.instance, watched, cursor)
        if not cursor.open:
            return dg.SkipReason("no open batches")
        api = batchpipe.client()
        observations, runs = [], []
        for partition, batch_ids in sorted(cursor.open.items()):
            try:
                states = [api.messages.batches.retrieve(b) for b in batch_ids]
            except anthropic.APIError as err:
                context.log.warning(scrub(f"could not poll {partition} ({err}); trying next time"))
                continue
            observations.append(_progress(watched[0], partition, states))
            if all(s.processing_status == "ended" for s in states):
                digest = hashlib.sha256(",".join(sorted(batch_ids)).encode()).hexdigest()[:16]
                runs.append(
                    dg.RunRequest(
                        partition_key=partition,
                        asset_selection=finish,
                        run_key=f"{name}:{partition}:{digest}",  # once per set of batches
                        tags={"batchpipe/pipeline": name},
                    )
                )
        for run in runs:
            cursor.open.pop(run.partition_key, None)
        return dg.SensorResult(
            run_requests=runs, asset_events=observations, cursor=cursor.model_dump_json()
        )

    return poll_batches


def _track_new_materializations(
    instance: dg.DagsterInstance, keys: list[dg.AssetKey], cursor: SensorCursor
) -> SensorCursor:
    """Fold the open batch ids of every new materialization, oldest first, into the cursor."""
    records = []
    for key in keys:
        records += instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=cursor.after_storage_id),
            limit=1000,
            ascending=True,
        ).records
    open_batches = dict(cursor.open)
    after = cursor.after_storage_id
    for record in sorted(records, key=lambda r: r.storage_id):
        after = max(after, record.storage_id)
        metadata = record.asset_materialization.metadata
        if record.partition_key is None or specs.OPEN_BATCHES not in metadata:
            continue
        ids = list(metadata[specs.OPEN_BATCHES].value)
        if ids:
            open_batches[record.partition_key] = ids
        else:
            open_batches.pop(record.partition_key, None)
    return SensorCursor(after_storage_id=after, open=open_batches)


def _progress(key: dg.AssetKey, partition: str, batches: list) -> dg.AssetObservation:
    counts = {
        field: sum(getattr(b.request_counts, field) for b in batches)
        for field in ("processing", "succeeded", "errored", "canceled", "expired")
    }
    return dg.AssetObservation(
        asset_key=key,
        partition=partition,
        metadata={
            **{f"batchpipe/{field}": value for field, value in counts.items()},
            "batchpipe/request_counts": dg.MetadataValue.json(counts),
            "batchpipe/batches": dg.MetadataValue.json(
                {b.id: b.processing_status for b in batches}
            ),
        },
    )


def partition_job(pf: PipelineFile) -> UnresolvedAssetJobDefinition:
    """All four steps of a pipeline: what the schedule and `dagster job backfill` run."""
    return dg.define_asset_job(
        name=f"{pf.pipeline.name}__job",
        selection=[specs.asset_key(pf, step) for step in specs.STEPS],
    )


def daily_schedule(
    pf: PipelineFile, job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition | None:
    cron = pf.pipeline.partitions.schedule
    if cron is None:
        return None

    @dg.schedule(
        name=f"{pf.pipeline.name}__daily",
        cron_schedule=cron,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def run_that_day(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        day = context.scheduled_execution_time.date().isoformat()
        return dg.RunRequest(partition_key=day, run_key=f"{pf.pipeline.name}:{day}:scheduled")

    return run_that_day
