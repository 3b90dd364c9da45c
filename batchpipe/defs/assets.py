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

from batchpipe import steps, warehouse
from batchpipe.api import reaching
from batchpipe.defs import specs
from batchpipe.defs.failures import failing
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.specs import Placement
from batchpipe.errors import scrub
from batchpipe.loader import PipelineFile

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
    context.log.warning(
        f"the Dagster pool {placement.pool!r} has no limit on this instance, so two runs can "
        "write the DuckDB file at once and one of them fails on its lock. Set it once: "
        f"`dagster instance concurrency set {placement.pool} 1` (or `concurrency: pools: "
        "default_limit: 1` in dagster.yaml)."
    )


def pipeline_assets(
    pf: PipelineFile, placement: Placement | None = None
) -> list[dg.AssetsDefinition]:
    """requests -> batch_status -> results -> enriched, daily partitions from the file, and
    the enriched table's two checks."""
    placement = placement or Placement()
    translator = placement.translator
    key = {step: placement.key(pf, step) for step in specs.STEPS}

    def common(step: str) -> dict:
        description = translator.get_description(pf, step)
        if step == "requests":
            description += "\n\n" + specs.pool_advice(placement.pool)
        return {
            "key": key[step],
            "description": description,
            "metadata": dict(translator.get_metadata(pf, step)),
            "tags": dict(translator.get_tags(pf, step)) or None,
            "owners": list(translator.get_owners(pf, step)) or None,
            "partitions_def": specs.partitions(pf),
            "group_name": translator.get_group_name(pf),
            "code_version": specs.code_version(pf, step),
            "pool": placement.pool,
            "required_resource_keys": {placement.resource_key},
        }

    @dg.asset(deps=[translator.get_source_asset_key(pf)], kinds={"duckdb"}, **common("requests"))
    def requests(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warn_without_pool_limit(context, pf, placement, "requests")
        resource = _resource(context, placement)
        # every asset body: its failure reaches Dagster without the key
        with failing(), warehouse.using(_database(resource, placement)):
            summary = steps.build_requests(pf, _date(context), _log(context))
        return dg.MaterializeResult(
            metadata={
                "batchpipe/requests": summary.requests,
                "batchpipe/to_send": summary.to_send,
                "batchpipe/reused": summary.reused,
                "batchpipe/estimated_usd": _usd(summary.estimate["expected_usd"]),
                "batchpipe/estimated_high_usd": _usd(summary.estimate["high_usd"]),
            }
        )

    @dg.asset(deps=[requests], kinds={"anthropic"}, **common("batch_status"))
    def batch_status(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warn_without_pool_limit(context, pf, placement, "batch_status")
        summary = _through_api(steps.submit, pf, context, placement)
        return dg.MaterializeResult(
            metadata={
                "batchpipe/sent_now": summary.sent_now,
                "batchpipe/batch_ids": dg.MetadataValue.json(summary.batch_ids),
                specs.OPEN_BATCHES: dg.MetadataValue.json(summary.open_batch_ids),
                "batchpipe/requests": summary.requests,
                "batchpipe/succeeded": summary.succeeded,
                "batchpipe/errored": summary.errored,
                "batchpipe/canceled": summary.canceled,
                "batchpipe/expired": summary.expired,
                "batchpipe/estimated_usd": _usd(summary.estimated_usd),
            }
        )

    @dg.asset(deps=[batch_status], kinds={"duckdb"}, output_required=False, **common("results"))
    def results(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        warn_without_pool_limit(context, pf, placement, "results")
        summary = _through_api(steps.load_results, pf, context, placement)
        if summary.open_batch_ids:
            # Not final (still processing, or a retry round just sent): no materialization.
            # The ids go on record for the sensor, which runs this step again once they end.
            context.log_event(
                dg.AssetObservation(
                    asset_key=key["batch_status"],
                    partition=context.partition_key,
                    metadata={
                        specs.OPEN_BATCHES: dg.MetadataValue.json(summary.open_batch_ids),
                        "batchpipe/results_loaded": summary.lines_loaded,
                        "batchpipe/retried": summary.retried,
                    },
                )
            )
            context.log.info(
                f"{len(summary.open_batch_ids)} batch(es) still open: {key['results']} and "
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
            return
        yield dg.MaterializeResult(
            metadata={
                "batchpipe/batches_loaded": summary.batches_loaded,
                "batchpipe/results_loaded": summary.lines_loaded,
                "batchpipe/retried": summary.retried,
                specs.OPEN_BATCHES: dg.MetadataValue.json([]),
            }
        )

    enriched_common = common("enriched")
    enriched_common["metadata"]["dagster/table_name"] = placement.table_name(pf)

    @dg.asset(deps=[results], kinds={"duckdb"}, output_required=False, **enriched_common)
    def enriched(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        warn_without_pool_limit(context, pf, placement, "enriched")
        date = _date(context)
        resource = _resource(context, placement)
        with failing(), warehouse.using(_database(resource, placement)):
            why = _not_final(context, pf, placement, date)
            if why is not None:
                context.log.info(f"{key['enriched']} not materialized for {date}: {why}")
                return
            summary = steps.write_enriched(pf, date, _log(context))
        yield dg.MaterializeResult(metadata=_enriched_metadata(summary))

    return [requests, batch_status, results, enriched, *pipeline_checks(pf, placement)]


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
        "batchpipe/succeeded": summary.succeeded,
        "batchpipe/errored": summary.errored,
        "batchpipe/expired": summary.expired,
        "batchpipe/canceled": summary.canceled,
        "batchpipe/missing": summary.missing,
        "batchpipe/without_result": summary.unfinished,
        "batchpipe/parse_errors": summary.parse_errors,
        "batchpipe/input_tokens": summary.input_tokens,
        "batchpipe/output_tokens": summary.output_tokens,
        "batchpipe/cache_creation_input_tokens": summary.cache_creation_input_tokens,
        "batchpipe/cache_read_input_tokens": summary.cache_read_input_tokens,
        "batchpipe/batch_ids": dg.MetadataValue.json(summary.batch_ids),
        "batchpipe/cost_usd": _usd(summary.cost_usd),
        "batchpipe/standard_cost_usd": _usd(summary.standard_cost_usd),
        # the estimate the batches were sent with, to plot against cost_usd
        "batchpipe/estimated_usd": _usd(summary.estimated_usd),
        "batchpipe/estimated_low_usd": _usd(summary.estimated_low_usd),
        "batchpipe/estimated_high_usd": _usd(summary.estimated_high_usd),
        "batchpipe/preview": dg.MetadataValue.md(summary.preview),
    }


def pipeline_checks(pf: PipelineFile, placement: Placement) -> list[dg.AssetChecksDefinition]:
    """The enriched table's checks, partitioned like it. Each reads the partition's
    materialization, so it runs only after one: a run whose batches are still open
    skips them with the asset, and a retry round never evaluates them."""
    key = placement.key(pf, "enriched")
    output = pf.pipeline.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks, 1.13

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
            rows, without = meta["dagster/row_count"], meta["batchpipe/without_result"]
            return dg.AssetCheckResult(
                passed=without == 0,
                metadata={"rows": rows, "without_result": without},
                description=f"{without} of {rows} rows have no final result",
            )

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
            failed = meta["batchpipe/errored"] + meta["batchpipe/parse_errors"]
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

    return [every_row_final, error_rate]


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
