"""Four partitioned assets per pipeline file, each a thin wrapper over steps.py, and its checks.

`results` and `enriched` materialize a partition only once every batch of it has
ended and its data is written: in a run whose batches are still open they yield
nothing, so Dagster records no materialization, evaluates no check and skips what
depends on them. The sensor's run materializes them later.

No `from __future__ import annotations` here: Dagster inspects the real type of
each asset's `context` parameter.
"""

import datetime as dt
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import dagster as dg

from batchpipe import state, steps, warehouse
from batchpipe.api import reaching
from batchpipe.defs import metadata as md
from batchpipe.defs import specs
from batchpipe.defs.failures import failing
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.specs import Placement
from batchpipe.errors import scrub
from batchpipe.loader import PipelineFile
from batchpipe.requests import RequestsSummary
from batchpipe.versions import code_version

T = TypeVar("T")


def _date(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _log(context: dg.AssetExecutionContext) -> steps.Log:
    """The step's log lines, which quote API errors, go to Dagster without the API key."""
    return lambda line: context.log.info(scrub(line))


def _resource(context: dg.AssetExecutionContext, placement: Placement) -> BatchpipeResource:
    return getattr(context.resources, placement.resource_key)


def _database(resource: BatchpipeResource, placement: Placement) -> str | None:
    return resource.database or placement.database


def _through_api(
    step: Callable[..., T],
    pf: PipelineFile,
    context: dg.AssetExecutionContext,
    placement: Placement,
) -> T:
    """A step that talks to the Batches API (steps.submit, steps.load_results), with the
    resource's waiting settings; its failure reaches Dagster without the API key, and an
    unreachable API as one clear message."""
    resource = _resource(context, placement)
    with failing(), warehouse.using(_database(resource, placement)):
        api = resource.client()
        with reaching(api):
            return step(
                pf,
                _date(context),
                api,
                _log(context),
                wait=resource.waits(pf.pipeline.request.wait),
                poll_seconds=resource.poll_interval(),
            )


def _usd(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), 6))


def warn_without_pool_limit(
    context: dg.AssetExecutionContext, pf: PipelineFile, placement: Placement, step: str
) -> None:
    """Once per run (in its first batchpipe step): a pool with no limit lets two runs write
    the DuckDB file at once, and the second fails on its lock."""
    selected = context.run.asset_selection
    ours = [s for s in specs.STEPS if selected is None or placement.key(pf, s) in selected]
    if not ours or ours[0] != step:
        return
    instance = context.instance
    storage = instance.event_log_storage
    if getattr(storage, "supports_global_concurrency_limits", False):
        if instance.global_op_concurrency_default_limit is not None:
            return
        if placement.pool in storage.get_concurrency_keys():
            return
    limit = warehouse.writer_limit(placement.database or warehouse.database())
    harm = (
        "two runs can write the DuckDB file at once and one of them fails on its lock"
        if limit == 1
        else "any number of runs write the DuckLake at once and mostly wait on each other"
    )
    context.log.warning(
        f"the Dagster pool {placement.pool!r} has no limit on this instance, so {harm}. "
        f"Set it once: `dagster instance concurrency set {placement.pool} {limit}` (or "
        f"`concurrency: pools: default_limit: {limit}` in dagster.yaml)."
    )


def pipeline_assets(
    pf: PipelineFile, placement: Placement | None = None
) -> list[dg.AssetsDefinition]:
    """requests -> batch_status -> results -> enriched, daily partitions from the file, and
    the enriched table's two checks."""
    placement = placement or Placement()
    requests = requests_asset(pf, placement)
    batch_status = batch_status_asset(pf, placement, requests)
    results = results_asset(pf, placement, batch_status)
    enriched = enriched_asset(pf, placement, results)
    return [requests, batch_status, results, enriched, *pipeline_checks(pf, placement)]


def _asset_args(pf: PipelineFile, placement: Placement, step: str) -> dict:
    """What every step's `@dg.asset` takes from the translator, the file and the placement."""
    translator = placement.translator
    description = translator.get_description(pf, step)
    if step == "requests":
        description += "\n\n" + specs.pool_advice(placement.pool, placement.database)
    return {
        "key": placement.key(pf, step),
        "description": description,
        "metadata": dict(translator.get_metadata(pf, step)),
        "tags": dict(translator.get_tags(pf, step)) or None,
        "owners": list(translator.get_owners(pf, step)) or None,
        "partitions_def": specs.partitions(pf),
        "group_name": translator.get_group_name(pf),
        "code_version": code_version(pf, step),
        "pool": placement.pool,
        "required_resource_keys": {placement.resource_key},
    }


def requests_asset(pf: PipelineFile, placement: Placement) -> dg.AssetsDefinition:
    """The partition's requests, built in DuckDB from the source rows."""
    source = placement.translator.get_source_asset_key(pf)

    @dg.asset(deps=[source], kinds={"duckdb"}, **_asset_args(pf, placement, "requests"))
    def requests(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warn_without_pool_limit(context, pf, placement, "requests")
        resource = _resource(context, placement)
        # every asset body: its failure reaches Dagster without the key
        with failing(), warehouse.using(_database(resource, placement)):
            summary = steps.build_requests(pf, _date(context), _log(context))
        return dg.MaterializeResult(metadata=_requests_metadata(summary))

    return requests


def _requests_metadata(summary: RequestsSummary) -> dict:
    return {
        md.REQUESTS: summary.requests,
        md.TO_SEND: summary.to_send,
        md.REUSED: summary.reused,
        md.ESTIMATED_USD: _usd(summary.estimate.whole.expected_usd),
        md.ESTIMATED_HIGH_USD: _usd(summary.estimate.whole.high_usd),
        **(
            {md.MEDIA_FILES: summary.media_files, md.MEDIA_TOKENS: summary.media_tokens}
            if summary.media_files
            else {}
        ),
    }


def batch_status_asset(
    pf: PipelineFile, placement: Placement, requests: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    """Sends the pending requests as Message Batches and records where they stand."""

    @dg.asset(deps=[requests], kinds={"anthropic"}, **_asset_args(pf, placement, "batch_status"))
    def batch_status(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warn_without_pool_limit(context, pf, placement, "batch_status")
        summary = _through_api(steps.submit, pf, context, placement)
        return dg.MaterializeResult(metadata=_batch_status_metadata(summary))

    return batch_status


def _batch_status_metadata(summary: steps.BatchesSummary) -> dict:
    return {
        md.SENT_NOW: summary.sent_now,
        md.BATCH_IDS: dg.MetadataValue.json(summary.batch_ids),
        md.OPEN_BATCHES: dg.MetadataValue.json(summary.open_batch_ids),
        md.REQUESTS: summary.requests,
        md.SUCCEEDED: summary.succeeded,
        md.ERRORED: summary.errored,
        md.CANCELED: summary.canceled,
        md.EXPIRED: summary.expired,
        md.ESTIMATED_USD: _usd(summary.estimated_usd),
        # Copied into DuckDB while this step waited, each batch as it ended.
        md.BATCHES_LOADED: summary.loaded.batches,
        md.RESULTS_LOADED: summary.loaded.lines,
        **_hold_metadata(summary.hold),
    }


def _hold_metadata(hold: state.Hold | None) -> dict:
    """What is held back and when it goes out: the sensor reads HELD and HELD_UNTIL."""
    if hold is None:
        return {md.HELD: 0}
    return {
        md.HELD: hold.requests,
        md.HELD_REASON: f"{hold.reason}: {hold.message}",
        md.HELD_UNTIL: hold.retry_at.replace(tzinfo=dt.UTC).isoformat(),
    }


def results_asset(
    pf: PipelineFile, placement: Placement, batch_status: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    """Copies the ended batches' results into DuckDB; materialized only once none is open."""
    args = _asset_args(pf, placement, "results")

    @dg.asset(deps=[batch_status], kinds={"duckdb"}, output_required=False, **args)
    def results(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        warn_without_pool_limit(context, pf, placement, "results")
        summary = _through_api(steps.load_results, pf, context, placement)
        if summary.open_batch_ids or summary.hold:
            # Not final (still processing, held, or a retry round just sent): no
            # materialization.
            _record_open_batches(context, pf, placement, summary)
            return
        yield dg.MaterializeResult(metadata=_results_metadata(summary))

    return results


def _results_metadata(summary: steps.ResultsSummary) -> dict:
    return {
        md.BATCHES_LOADED: summary.batches_loaded,
        md.RESULTS_LOADED: summary.lines_loaded,
        md.RETRIED: summary.retried,
        md.OPEN_BATCHES: dg.MetadataValue.json([]),
    }


def _record_open_batches(
    context: dg.AssetExecutionContext,
    pf: PipelineFile,
    placement: Placement,
    summary: steps.ResultsSummary,
) -> None:
    """The ids go on record for the sensor, which runs the results step again once they
    end; the run's log says why nothing was materialized."""
    key = {step: placement.key(pf, step) for step in specs.STEPS}
    context.log_event(
        dg.AssetObservation(
            asset_key=key["batch_status"],
            partition=context.partition_key,
            metadata={
                md.OPEN_BATCHES: dg.MetadataValue.json(summary.open_batch_ids),
                md.RESULTS_LOADED: summary.lines_loaded,
                md.RETRIED: summary.retried,
                **_hold_metadata(summary.hold),
            },
        )
    )
    held = f", {summary.hold.requests} request(s) held" if summary.hold else ""
    context.log.info(
        f"{len(summary.open_batch_ids)} batch(es) still open{held}: {key['results']} and "
        f"{key['enriched']} are not materialized for {context.partition_key} until "
        "they end; the sensor launches that run"
    )
    backfill = context.run.tags.get("dagster/backfill")
    if backfill:
        # Dagster's backfill daemon knows no work that ends outside its runs.
        context.log.warning(
            f"backfill {backfill}: if its runs all end before these batches do, "
            f"Dagster marks its {key['results']} and {key['enriched']} partitions "
            "failed. They are not: the sensor's run loads them once the batches "
            f"end, listed on the backfill's page (tag dagster/backfill={backfill})."
        )


def enriched_asset(
    pf: PipelineFile, placement: Placement, results: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    """The output table, written once the partition is final."""
    args = _asset_args(pf, placement, "enriched")
    args["metadata"]["dagster/table_name"] = placement.table_name(pf)
    key = args["key"]

    @dg.asset(deps=[results], kinds={"duckdb"}, output_required=False, **args)
    def enriched(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        warn_without_pool_limit(context, pf, placement, "enriched")
        date = _date(context)
        resource = _resource(context, placement)
        with failing(), warehouse.using(_database(resource, placement)):
            why = _not_final(context, pf, placement, date)
            if why is not None:
                context.log.info(f"{key} not materialized for {date}: {why}")
                return
            summary = steps.write_enriched(pf, date, _log(context))
        yield dg.MaterializeResult(metadata=_enriched_metadata(summary))

    return enriched


def _not_final(
    context: dg.AssetExecutionContext, pf: PipelineFile, placement: Placement, date: dt.date
) -> str | None:
    """steps.not_final, and the one thing only Dagster's records know: whether this
    partition's requests were ever built (a day with no rows is final with none)."""
    built = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=placement.key(pf, "requests"), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    if not built:
        return f"its requests were never built: materialize {placement.key(pf, 'requests')}"
    return steps.not_final(pf, date)


def _enriched_metadata(summary) -> dict:
    return {
        "dagster/row_count": summary.rows,
        "dagster/table_name": summary.table_name,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, kind) for name, kind in summary.columns.items()]
        ),
        md.SUCCEEDED: summary.succeeded,
        md.ERRORED: summary.errored,
        md.EXPIRED: summary.expired,
        md.CANCELED: summary.canceled,
        md.MISSING: summary.missing,
        md.WITHOUT_RESULT: summary.unfinished,
        md.PARSE_ERRORS: summary.parse_errors,
        md.INPUT_TOKENS: summary.input_tokens,
        md.OUTPUT_TOKENS: summary.output_tokens,
        md.CACHE_CREATION_INPUT_TOKENS: summary.cache_creation_input_tokens,
        md.CACHE_READ_INPUT_TOKENS: summary.cache_read_input_tokens,
        md.BATCH_IDS: dg.MetadataValue.json(summary.batch_ids),
        md.COST_USD: _usd(summary.cost_usd),
        md.STANDARD_COST_USD: _usd(summary.standard_cost_usd),
        # the estimate the batches were sent with, to plot against cost_usd
        md.ESTIMATED_USD: _usd(summary.estimated_usd),
        md.ESTIMATED_LOW_USD: _usd(summary.estimated_low_usd),
        md.ESTIMATED_HIGH_USD: _usd(summary.estimated_high_usd),
        md.PREVIEW: dg.MetadataValue.md(summary.preview),
    }


def pipeline_checks(pf: PipelineFile, placement: Placement) -> list[dg.AssetChecksDefinition]:
    """The enriched table's checks, partitioned like it. Each reads the partition's
    materialization, so it runs only after one: a run whose batches are still open
    skips them with the asset, and a retry round never evaluates them."""
    key = placement.key(pf, "enriched")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks, 1.13
        return [every_row_final_check(pf, key), error_rate_check(pf, key)]


def every_row_final_check(pf: PipelineFile, key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=key,
        name="every_row_final",
        partitions_def=specs.partitions(pf),
        description="Every source row of the partition has a final result: succeeded, "
        "errored, expired or canceled. Rows a budget refused, or never answered, fail it.",
    )
    def every_row_final(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        meta = _materialized(context, key)
        if meta is None:
            return _not_materialized(key, context.partition_key)
        rows, without = meta["dagster/row_count"], meta[md.WITHOUT_RESULT]
        return dg.AssetCheckResult(
            passed=without == 0,
            metadata={"rows": rows, "without_result": without},
            description=f"{without} of {rows} rows have no final result",
        )

    return every_row_final


def error_rate_check(pf: PipelineFile, key: dg.AssetKey) -> dg.AssetChecksDefinition:
    output = pf.pipeline.output

    @dg.asset_check(
        asset=key,
        name="error_rate",
        partitions_def=specs.partitions(pf),
        blocking=output.block_on_error_rate,
        description=f"At most {output.max_error_rate:.0%} of the partition's rows errored "
        "or failed the output schema (output.max_error_rate)"
        + ("; blocking (output.block_on_error_rate)." if output.block_on_error_rate else "."),
    )
    def error_rate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        meta = _materialized(context, key)
        if meta is None:
            return _not_materialized(key, context.partition_key)
        rows = meta["dagster/row_count"]
        failed = meta[md.ERRORED] + meta[md.PARSE_ERRORS]
        rate = failed / rows if rows else 0.0
        return dg.AssetCheckResult(
            passed=rate <= output.max_error_rate,
            metadata={
                "error_rate": dg.MetadataValue.float(rate),
                "max_error_rate": output.max_error_rate,
                "failed_rows": failed,
            },
            description=f"{failed} of {rows} rows errored or failed the output schema",
        )

    return error_rate


def _materialized(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> dict | None:
    """The metadata of the partition's latest materialization (this run's, in a run)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _not_materialized(key: dg.AssetKey, partition: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False, description=f"{key.to_user_string()} has no materialization for {partition}"
    )
