"""Polling for batches (the API has no webhooks), and the daily schedules.

No `from __future__ import annotations`: Dagster inspects the sensor's parameter
types to pass it the context and the resource.

The sensor reads Dagster's own records, never the DuckDB file (a reader could
collide with a writing run): the batch ids still open after a step are in that
step's materialization metadata. It polls those batches, records their progress
as observations of `NAME/batch_status` (the progress view the API lacks), and
once every batch of a partition has ended it launches `NAME/results` and
`NAME/enriched` for that partition, as a run of the pipeline's job. Batches that end
before their partition's last are loaded at once, by such a run whose enriched step is
skipped while the others are still open.
"""

import datetime as dt
import hashlib
import inspect

import anthropic
import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from pydantic import BaseModel, field_validator

from batchpipe import batches
from batchpipe.defs import metadata as md
from batchpipe.defs import specs
from batchpipe.defs.failures import failing
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.specs import Placement
from batchpipe.errors import scrub
from batchpipe.loader import PipelineFile


class OpenPartition(BaseModel):
    batch_ids: list[str]
    run_id: str | None = None  # the run that recorded them: it submitted the batches
    held_until: str | None = None  # ISO UTC: requests held back go out from then on


class SensorCursor(BaseModel):
    after_storage_id: int = 0
    open: dict[str, OpenPartition] = {}  # partition key -> its batches still processing

    @field_validator("open", mode="before")
    @classmethod
    def _ids_only(cls, value: dict) -> dict:
        """Cursors written before the submitting run was kept hold plain lists of ids."""
        return {k: {"batch_ids": v} if isinstance(v, list) else v for k, v in value.items()}


def batch_sensor(
    pf: PipelineFile,
    job: UnresolvedAssetJobDefinition | None = None,
    placement: Placement | None = None,
) -> dg.SensorDefinition:
    """The pipeline's sensor; its runs are runs of `job` (the pipeline's own), limited to
    results and enriched, and tagged with where their batches came from."""
    placement = placement or Placement()
    job = job or partition_job(pf, placement)
    name = pf.pipeline.name
    status_key = placement.key(pf, "batch_status")
    watched = [status_key, placement.key(pf, "results")]
    finish = [placement.key(pf, "results"), placement.key(pf, "enriched")]

    def poll_batches(
        context: dg.SensorEvaluationContext, **resource: BatchpipeResource
    ) -> dg.SensorResult | dg.SkipReason:
        with failing():  # a failed tick is stored by Dagster: without the API key
            return _poll(context, resource[placement.resource_key])

    # Dagster passes a resource by parameter name, and the name is the placement's.
    poll_batches.__signature__ = _signature(placement.resource_key)
    poll_batches = dg.sensor(
        name=placement.translator.get_sensor_name(pf),
        description=f"Polls the open Message Batches of {name} and loads them once ended.",
        minimum_interval_seconds=pf.pipeline.request.poll_interval,
        jobs=[job],
        default_status=dg.DefaultSensorStatus.RUNNING,
    )(poll_batches)

    def _poll(
        context: dg.SensorEvaluationContext, batchpipe: BatchpipeResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = SensorCursor.model_validate_json(context.cursor or "{}")
        cursor = _track_new_records(context.instance, watched, status_key, cursor)
        if not cursor.open:
            return dg.SkipReason("no open batches and nothing held")
        api = batchpipe.client()
        observations, runs = [], []
        try:  # every partition's batches in one walk of the list endpoint (100 a call)
            seen = batches.retrieve_by_id(
                api, [b for known in cursor.open.values() for b in known.batch_ids]
            )
        except anthropic.APIError as err:
            context.log.warning(scrub(f"could not poll the open batches ({err}); trying next time"))
            return dg.SkipReason("the Batches API did not answer; trying next time")
        now = dt.datetime.now(dt.UTC)
        still: dict[str, list[str]] = {}  # partition -> its batches still open after a run
        for partition, known in sorted(cursor.open.items()):
            if known.batch_ids:
                states = [seen.get(b) for b in known.batch_ids]
                if any(s is None for s in states):
                    context.log.warning(f"not every batch of {partition} is listed yet; next time")
                    continue
                observations.append(_progress(status_key, partition, states))
                ended = [s.id for s in states if s.processing_status == "ended"]
                if not ended:
                    continue
                # Once any has ended, its results are copied now (safe from the 29-day
                # limit at once, and the last batch's load is all that is left when it
                # ends); the rest stay watched. Every such run holds enriched: it is
                # skipped while batches are open, and if the rest have ended by the time
                # the run gets there, it finishes the partition.
                still[partition] = [b for b in known.batch_ids if b not in ended]
                run_key = f"{name}:{partition}:{_digest(ended)}"  # once per set of batches
            elif known.held_until and now >= dt.datetime.fromisoformat(known.held_until):
                # Only held requests: the run's results step sends them (the sensor itself
                # never writes the warehouse); once per hold, as each hold has its time.
                run_key = f"{name}:{partition}:held:{known.held_until}"
            else:
                continue
            runs.append(
                dg.RunRequest(
                    job_name=job.name,
                    partition_key=partition,
                    asset_selection=finish,
                    run_key=run_key,
                    tags=_origin_tags(context.instance, name, partition, known),
                )
            )
        for run in runs:
            known = cursor.open.pop(run.partition_key)
            if still.get(run.partition_key):
                cursor.open[run.partition_key] = known.model_copy(
                    update={"batch_ids": still[run.partition_key]}
                )
        return dg.SensorResult(
            run_requests=runs, asset_events=observations, cursor=cursor.model_dump_json()
        )

    return poll_batches


def _digest(batch_ids: list[str]) -> str:
    """A run key's part for a set of batches: one run per set, whatever the order."""
    return hashlib.sha256(",".join(sorted(batch_ids)).encode()).hexdigest()[:16]


def _signature(resource_key: str) -> inspect.Signature:
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [
            inspect.Parameter("context", keyword, annotation=dg.SensorEvaluationContext),
            inspect.Parameter(resource_key, keyword, annotation=BatchpipeResource),
        ],
        return_annotation=dg.SensorResult | dg.SkipReason,
    )


def _origin_tags(
    instance: dg.DagsterInstance, name: str, partition: str, known: OpenPartition
) -> dict[str, str]:
    """Where a follow-up run comes from: the pipeline, the partition, the run that sent
    its batches and, when that run was part of a backfill, the backfill: as
    `batchpipe/backfill`, and as Dagster's own `dagster/backfill`, so the follow-up is
    listed on the backfill's page (and counts for it while the backfill is running)."""
    tags = {md.PIPELINE_TAG: name, md.PARTITION_TAG: partition}
    recorded_by = instance.get_run_by_id(known.run_id) if known.run_id else None
    if recorded_by is None:
        return tags
    origin = recorded_by.tags.get(md.SUBMITTED_BY_RUN_TAG)  # set on a retry round
    tags[md.SUBMITTED_BY_RUN_TAG] = origin or recorded_by.run_id
    backfill = recorded_by.tags.get(md.BACKFILL_TAG) or (
        None if origin else recorded_by.tags.get("dagster/backfill")
    )
    if backfill:
        tags[md.BACKFILL_TAG] = backfill
        tags["dagster/backfill"] = backfill
    return tags


def _track_new_records(
    instance: dg.DagsterInstance,
    materialized: list[dg.AssetKey],
    observed: dg.AssetKey,
    cursor: SensorCursor,
) -> SensorCursor:
    """Fold the open batch ids of every new record, oldest first, into the cursor: the
    materializations of batch_status and results, and the observations a results step
    makes when a retry round leaves batches open (it does not materialize then)."""
    records = []
    for key in materialized:
        records += instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=cursor.after_storage_id),
            limit=1000,
            ascending=True,
        ).records
    records += instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=observed, after_storage_id=cursor.after_storage_id),
        limit=1000,
        ascending=True,
    ).records
    open_batches = dict(cursor.open)
    after = cursor.after_storage_id
    for record in sorted(records, key=lambda r: r.storage_id):
        after = max(after, record.storage_id)
        event = record.asset_materialization or record.asset_observation
        metadata = event.metadata if event else {}
        if record.partition_key is None or md.OPEN_BATCHES not in metadata:
            continue  # the sensor's own progress observations carry no open ids
        ids = list(metadata[md.OPEN_BATCHES].value)
        held = md.HELD in metadata and metadata[md.HELD].value
        held_until = metadata[md.HELD_UNTIL].value if held and md.HELD_UNTIL in metadata else None
        if ids or held_until:
            open_batches[record.partition_key] = OpenPartition(
                batch_ids=ids, run_id=record.run_id, held_until=held_until
            )
        else:
            open_batches.pop(record.partition_key, None)
    return SensorCursor(after_storage_id=after, open=open_batches)


def _progress(key: dg.AssetKey, partition: str, batches: list) -> dg.AssetObservation:
    counts = {
        field: sum(getattr(b.request_counts, field) for b in batches)
        for field in md.REQUEST_COUNT_KEYS
    }
    return dg.AssetObservation(
        asset_key=key,
        partition=partition,
        metadata={
            **{md.REQUEST_COUNT_KEYS[field]: value for field, value in counts.items()},
            md.REQUEST_COUNTS: dg.MetadataValue.json(counts),
            md.BATCHES: dg.MetadataValue.json({b.id: b.processing_status for b in batches}),
        },
    )


def partition_job(
    pf: PipelineFile, placement: Placement | None = None
) -> UnresolvedAssetJobDefinition:
    """All four steps of a pipeline and its checks: what the schedule, `dagster job
    backfill` and the sensor's follow-up runs run."""
    placement = placement or Placement()
    return dg.define_asset_job(
        name=placement.translator.get_job_name(pf),
        selection=[placement.key(pf, step) for step in specs.STEPS],
        description=f"requests -> batch_status -> results -> enriched of {pf.pipeline.name}",
    )


def daily_schedule(
    pf: PipelineFile, job: UnresolvedAssetJobDefinition, placement: Placement | None = None
) -> dg.ScheduleDefinition | None:
    """The file's cron as a schedule of its job. It is created stopped (each tick spends
    money) unless partitions.schedule_enabled says otherwise, and a tick runs the day that
    has just ended in the pipeline's time zone, or schedule_offset_days back."""
    partitions = pf.pipeline.partitions
    if partitions.schedule is None:
        return None
    offset = partitions.schedule_offset_days
    which = {0: "the tick's own day", 1: "the day that has just ended"}.get(
        offset, f"the day {offset} days before the tick"
    )

    @dg.schedule(
        name=(placement or Placement()).translator.get_schedule_name(pf),
        cron_schedule=partitions.schedule,
        job=job,
        execution_timezone=partitions.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING
        if partitions.schedule_enabled
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Runs one daily partition of {pf.pipeline.name} at each tick: {which} "
        f"({partitions.timezone}); partitions are days from {partitions.start}.",
        metadata={
            md.PARTITIONS: f"daily from {partitions.start} ({partitions.timezone})",
            md.SCHEDULE_OFFSET_DAYS: offset,
        },
    )
    def run_that_day(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = context.scheduled_execution_time.date() - dt.timedelta(days=offset)
        if day < partitions.start:
            return dg.SkipReason(f"{day} is before the first partition ({partitions.start})")
        return dg.RunRequest(
            partition_key=day.isoformat(),
            run_key=f"{pf.pipeline.name}:{day.isoformat()}:scheduled",
            tags={md.PIPELINE_TAG: pf.pipeline.name, md.PARTITION_TAG: day.isoformat()},
        )

    return run_that_day
