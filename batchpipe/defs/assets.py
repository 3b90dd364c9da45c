"""Four partitioned assets per pipeline file, each a thin wrapper over steps.py.

No `from __future__ import annotations` here: Dagster inspects the real type of
each asset's `context` parameter.
"""

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

import dagster as dg

from batchpipe import steps
from batchpipe.defs import specs
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.errors import reaching, scrub, scrubbed
from batchpipe.loader import PipelineFile

T = TypeVar("T")


def _date(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _log(context: dg.AssetExecutionContext) -> steps.Log:
    """The step's log lines, which quote API errors, go to Dagster without the API key."""
    return lambda line: context.log.info(scrub(line))


def _through_api(
    step: Callable[..., T],
    pf: PipelineFile,
    context: dg.AssetExecutionContext,
    batchpipe: BatchpipeResource,
) -> T:
    """A step that talks to the Batches API (steps.submit, steps.load_results), with the
    resource's waiting settings; its failure reaches Dagster without the API key, and an
    unreachable API as one clear message."""
    with scrubbed():
        api = batchpipe.client()
        with reaching(api):
            return step(
                pf,
                _date(context),
                api,
                _log(context),
                wait=batchpipe.waits(pf.pipeline.request.wait),
                poll_seconds=batchpipe.poll_interval(),
            )


def _usd(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), 6))


def pipeline_assets(pf: PipelineFile) -> list[dg.AssetsDefinition]:
    """requests -> batch_status -> results -> enriched, daily partitions from the file."""
    common = {
        "partitions_def": specs.partitions(pf),
        "group_name": pf.pipeline.name,
        "code_version": specs.code_version(pf),
        "pool": specs.POOL,
        "kinds": {"duckdb"},
    }
    reference = {"dagster/code_references": specs.code_reference(pf)}

    @dg.asset(
        key=specs.asset_key(pf, "requests"),
        deps=[specs.source_key(pf)],
        description=specs.description(pf, "requests"),
        metadata=reference,
        **common,
    )
    def requests(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with scrubbed():  # every asset body: its failure reaches Dagster without the key
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

    @dg.asset(
        key=specs.asset_key(pf, "batch_status"),
        deps=[requests],
        description=specs.description(pf, "batch_status"),
        metadata=reference,
        **{**common, "kinds": {"anthropic"}},
    )
    def batch_status(
        context: dg.AssetExecutionContext, batchpipe: BatchpipeResource
    ) -> dg.MaterializeResult:
        summary = _through_api(steps.submit, pf, context, batchpipe)
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

    @dg.asset(
        key=specs.asset_key(pf, "results"),
        deps=[batch_status],
        description=specs.description(pf, "results"),
        metadata=reference,
        **common,
    )
    def results(
        context: dg.AssetExecutionContext, batchpipe: BatchpipeResource
    ) -> dg.MaterializeResult:
        summary = _through_api(steps.load_results, pf, context, batchpipe)
        return dg.MaterializeResult(
            metadata={
                "batchpipe/batches_loaded": summary.batches_loaded,
                "batchpipe/results_loaded": summary.lines_loaded,
                "batchpipe/retried": summary.retried,
                specs.OPEN_BATCHES: dg.MetadataValue.json(summary.open_batch_ids),
            }
        )

    @dg.asset(
        key=specs.asset_key(pf, "enriched"),
        deps=[results],
        description=specs.description(pf, "enriched"),
        metadata={**reference, "dagster/table_name": pf.pipeline.output.table},
        check_specs=[
            dg.AssetCheckSpec("every_row_final", asset=specs.asset_key(pf, "enriched")),
            dg.AssetCheckSpec("error_rate", asset=specs.asset_key(pf, "enriched")),
        ],
        **common,
    )
    def enriched(context: dg.AssetExecutionContext):
        with scrubbed():
            summary = steps.write_enriched(pf, _date(context), _log(context))
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": summary.rows,
                "batchpipe/succeeded": summary.succeeded,
                "batchpipe/errored": summary.errored,
                "batchpipe/expired": summary.expired,
                "batchpipe/canceled": summary.canceled,
                "batchpipe/missing": summary.missing,
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
        )
        unfinished = summary.unfinished
        yield dg.AssetCheckResult(
            check_name="every_row_final",
            passed=unfinished == 0,
            metadata={"rows": summary.rows, "without_result": unfinished},
            description="Every source row of the partition has a result.",
        )
        failed = summary.errored + summary.parse_errors
        rate = failed / summary.rows if summary.rows else 0.0
        limit = pf.pipeline.output.max_error_rate
        yield dg.AssetCheckResult(
            check_name="error_rate",
            passed=rate <= limit,
            metadata={"error_rate": dg.MetadataValue.float(rate), "max_error_rate": limit},
            description=f"At most {limit:.0%} of rows errored or failed the output schema.",
        )

    return [requests, batch_status, results, enriched]
