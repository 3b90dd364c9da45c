"""Run one partition of one pipeline through Dagster, in this process.

The CLI uses this so a `batchpipe run` is a real Dagster run: it shows in the UI
when DAGSTER_HOME is set, and it queues on the DuckDB writer pool like any other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from importlib import resources
from pathlib import Path

import dagster as dg

from batchpipe import lake, warehouse
from batchpipe.defs import metadata as md
from batchpipe.defs.assets import pipeline_assets
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.specs import source_spec
from batchpipe.errors import BatchpipeError
from batchpipe.loader import PipelineFile


def instance() -> dg.DagsterInstance:
    """The DAGSTER_HOME instance when there is one, so CLI runs show in the UI."""
    if os.environ.get("DAGSTER_HOME"):
        prepare_dagster_home(Path(os.environ["DAGSTER_HOME"]))
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def prepare_dagster_home(home: Path) -> None:
    """Give a new DAGSTER_HOME batchpipe's instance settings (the DuckDB writer pool, and
    on a DuckLake, Dagster's own storage in the catalog's PostgreSQL); one already there
    is the deployment's own and is left alone."""
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(dagster_settings(warehouse.database()), encoding="utf-8")


def dagster_settings(database: str) -> str:
    """The dagster.yaml for a warehouse. A file: its writer pool is limited to one run.
    A DuckLake: BATCHPIPE_WRITERS runs at once (default 4), queued by the daemon's
    QueuedRunCoordinator, and Dagster's runs, event log and schedules in the catalog's
    PostgreSQL database (dagster-postgres keeps them in tables of its own), so every
    machine running partitions shares one instance. A password is never written: it is
    read from PGPASSWORD, as libpq does."""
    template = resources.files("batchpipe").joinpath("dagster.yaml").read_text(encoding="utf-8")
    dsn = lake.catalog_dsn(database) if lake.is_lake(database) else None
    if dsn is None:
        return template
    writers = warehouse.writer_limit(database)
    fields = {k: v.strip("'") for k, v in re.findall(r"(\w+)\s*=\s*('[^']*'|\S+)", dsn)}
    db = {
        "username": fields.get("user", "postgres"),
        "hostname": fields.get("host", "localhost"),
        "db_name": fields.get("dbname", fields.get("user", "postgres")),
        "port": int(fields.get("port", 5432)),
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the lock holds psycopg2.
        "scheme": "postgresql+psycopg2",
    }
    lines = [f"      {key}: {json.dumps(value)}" for key, value in db.items()]
    if "password" in fields or os.environ.get("PGPASSWORD"):
        lines.append("      password:\n        env: PGPASSWORD")
    postgres = "\n".join(lines)
    limited = template.replace(
        "    default_limit: 1\n",
        f"    default_limit: {writers}\n  runs:\n    max_concurrent_runs: {writers}\n",
    )
    return f"""{limited}
# A DuckLake warehouse takes many writers: {writers} runs at once (BATCHPIPE_WRITERS),
# queued by the daemon; Dagster's own records in the catalog's PostgreSQL.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
storage:
  postgres:
    postgres_db:
{postgres}
"""


def run_partition(
    pf: PipelineFile, date: dt.date, resource: BatchpipeResource | None = None
) -> list[str]:
    """Materialize requests -> batch_status -> results -> enriched for one date.

    Returns what it did as lines for a person; raises BatchpipeError with the
    step's own message when a step fails.
    """
    check_date(pf, date)
    resource = resource or BatchpipeResource(wait=True)
    with instance() as dagster_instance:
        result = dg.materialize(
            [source_spec(pf), *pipeline_assets(pf)],
            partition_key=date.isoformat(),
            # The CLI waits for the batches to end, so one command does the whole partition.
            resources={"batchpipe": resource},
            instance=dagster_instance,
            raise_on_error=False,
            # The steps' own lines (and a failure's message) are printed by the caller;
            # Dagster's event log stays in the instance and the UI, not the terminal.
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags={md.PIPELINE_TAG: pf.pipeline.name},
        )
        if not result.success:
            raise BatchpipeError(_failure_message(result))
        lines = _describe(result)
        if resource.waits(pf.pipeline.request.wait) and not _wrote_enriched(result):
            # A run that waits ends with the partition written, or says why it is not:
            # exit 0 with no output partition would be a false mark.
            why = _not_materialized(dagster_instance, result.run_id)
            raise BatchpipeError(f"{pf.pipeline.name} {date} was not finished: {why}")
    return lines


def _wrote_enriched(result: dg.ExecuteInProcessResult) -> bool:
    return any(
        e.event_specific_data.materialization.asset_key.path[-1] == "enriched"
        for e in result.get_asset_materialization_events()
    )


def _not_materialized(dagster_instance: dg.DagsterInstance, run_id: str) -> str:
    """What the results or enriched step logged about not materializing."""
    said = [
        entry.user_message
        for entry in dagster_instance.all_logs(run_id)
        if " not materialized " in (entry.user_message or "")
    ]
    return said[-1] if said else "the enriched step wrote nothing; see the Dagster run logs"


def check_date(pf: PipelineFile, date: dt.date) -> None:
    start = pf.pipeline.partitions.start
    if date < start:
        raise BatchpipeError(
            f"{date} is before the first partition of {pf.pipeline.name} "
            f"({start}, set by partitions.start in {pf.path})"
        )


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description}"
        if data.error:
            cause = data.error.cause or data.error
            return f"{event.step_key}: {cause.message.strip()}"
    return "the run failed; see the Dagster run logs"


def _describe(result: dg.ExecuteInProcessResult) -> list[str]:
    lines = []
    early = (0, 0)  # batches and results batch_status loaded as each batch ended
    events = result.get_asset_materialization_events()
    steps = {e.event_specific_data.materialization.asset_key.path[-1] for e in events}
    for event in events:
        materialization = event.event_specific_data.materialization
        step = materialization.asset_key.path[-1]
        meta = {k: v.value for k, v in materialization.metadata.items()}
        if step == "requests":
            if meta[md.REQUESTS] == 0:
                day = result.dagster_run.tags.get("dagster/partition")
                lines.append(f"requests:     no source rows fall on {day}, so nothing was sent")
            lines.append(
                f"requests:     {meta[md.REQUESTS]} built, "
                f"{meta[md.TO_SEND]} to send, {meta[md.REUSED]} reused; "
                f"estimated ${meta[md.ESTIMATED_USD]:.4f}"
                + (
                    f"; {meta[md.MEDIA_FILES]} distinct media file(s), "
                    f"~{meta[md.MEDIA_TOKENS]:,} tokens"
                    if md.MEDIA_FILES in meta
                    else ""
                )
            )
        elif step == "batch_status":
            ids = ", ".join(meta[md.BATCH_IDS]) or "none needed"
            lines.append(
                f"batch_status: {meta[md.SENT_NOW]} sent; batches {ids}; "
                f"{meta[md.SUCCEEDED]} succeeded, {meta[md.ERRORED]} errored"
            )
            early = (meta.get(md.BATCHES_LOADED, 0), meta.get(md.RESULTS_LOADED, 0))
            if meta[md.OPEN_BATCHES] and "enriched" not in steps:
                lines.append(
                    f"results:      {len(meta[md.OPEN_BATCHES])} batch(es) still processing; "
                    "results and enriched are materialized by the sensor once they end"
                )
        elif step == "results":
            retried = meta[md.RETRIED]
            as_ended = f", {early[0]} of them as soon as each ended" if early[0] else ""
            lines.append(
                f"results:      {meta[md.RESULTS_LOADED] + early[1]} result(s) copied into "
                f"DuckDB from {meta[md.BATCHES_LOADED] + early[0]} batch(es){as_ended}"
                + (f"; {retried} retryable request(s) sent again" if retried else "")
            )
        elif step == "enriched":
            cost = meta[md.COST_USD]
            standard = meta[md.STANDARD_COST_USD]
            lines.append(
                f"enriched:     {meta['dagster/row_count']} rows "
                f"({meta[md.SUCCEEDED]} succeeded, {meta[md.ERRORED]} errored, "
                f"{meta[md.EXPIRED]} expired, {meta[md.CANCELED]} canceled, "
                f"{meta[md.MISSING]} missing)"
            )
            lines.append(
                f"cost:         ${cost:.4f} for this partition at batch prices; the standard API "
                f"would have cost ${standard:.4f} (saved ${standard - cost:.4f})"
            )
    return lines
