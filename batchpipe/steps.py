"""The four steps of a partition, each a plain function the Dagster assets call.

Keeping them free of Dagster lets the CLI, the assets and the tests share one
implementation; each step opens the warehouse as the single writer, does its
work in SQL, and returns a small summary that becomes asset metadata.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import anthropic
import duckdb

from batchpipe import batches, plan, results, warehouse
from batchpipe.errors import BatchApiError
from batchpipe.loader import PipelineFile

Log = Callable[[str], None]


def build_requests(pf: PipelineFile, date: dt.date, log: Log) -> plan.RequestsSummary:
    with warehouse.connect() as con:
        resolved = plan.resolve(pf, con)
        summary = plan.build_requests(con, resolved, date)
    log(
        f"{summary.requests} rows on {date}: {summary.to_send} request(s) to send, "
        f"{summary.reused} already answered; estimated ${summary.estimate['expected_usd']:.4f} "
        f"(at most ${summary.estimate['high_usd']:.4f})"
    )
    return summary


@dataclass(frozen=True)
class BatchesSummary:
    batch_ids: list[str]
    requests: int
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    estimated_usd: float


def submit_and_wait(
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    poll_seconds: float,
    log: Log,
) -> BatchesSummary:
    name = pf.pipeline.name
    with warehouse.connect() as con:
        if not con.execute(
            "SELECT count(*) FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
            [name, date],
        ).fetchone()[0]:
            plan.build_requests(con, plan.resolve(pf, con), date)
        _, estimate = plan.estimate_pending(con, pf, date)
        batches.submit_partition(
            con,
            api,
            name,
            date,
            pf.pipeline.request.model,
            plan.PENDING_SQL,
            plan.pending_params(pf, date),
            log,
        )
        con.execute(
            "UPDATE batchpipe_batches SET estimated_usd = ? "
            "WHERE pipeline = ? AND partition_date = ? AND estimated_usd IS NULL",
            [estimate["expected_usd"], name, date],
        )
        batches.wait_until_ended(con, api, name, date, poll_seconds, log)
        return _batches_summary(con, name, date)


def _batches_summary(con: duckdb.DuckDBPyConnection, name: str, date: dt.date) -> BatchesSummary:
    row = con.execute(
        "SELECT list(batch_id ORDER BY intent_at), coalesce(sum(request_count), 0), "
        "coalesce(sum(CASE WHEN state = 'submitted' THEN request_count END), 0), "
        "coalesce(sum(succeeded), 0), coalesce(sum(errored), 0), coalesce(sum(canceled), 0), "
        "coalesce(sum(expired), 0), coalesce(sum(estimated_usd), 0) FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND batch_id IS NOT NULL "
        "AND loaded_at IS NULL",
        [name, date],
    ).fetchone()
    return BatchesSummary(list(row[0] or []), *row[1:])


@dataclass(frozen=True)
class ResultsSummary:
    batches_loaded: int
    lines_loaded: int


def load_results(
    pf: PipelineFile, date: dt.date, api: anthropic.Anthropic, log: Log
) -> ResultsSummary:
    """Copy every ended batch's results into DuckDB at once: upstream keeps them 29 days."""
    name = pf.pipeline.name
    loaded_batches = lines = 0
    with warehouse.connect() as con:
        for sub in batches.open_submissions(con, name, date):
            if sub.state == "submitted":
                batches.record_status(
                    con, sub.submission_id, api.messages.batches.retrieve(sub.batch_id)
                )
        open_now = batches.open_submissions(con, name, date)
        unfinished = [s.batch_id or s.submission_id for s in open_now if s.state != "ended"]
        if unfinished:
            raise BatchApiError(
                f"{len(unfinished)} batch(es) of {name} {date} have not ended yet "
                f"({', '.join(unfinished)}); materialize {name}/batch_status first, or wait"
            )
        for sub in open_now:
            expected = con.execute(
                "SELECT succeeded + errored + canceled + expired FROM batchpipe_batches "
                "WHERE submission_id = ?",
                [sub.submission_id],
            ).fetchone()[0]
            path = batches.download_results(api, sub.batch_id, expected)
            count = results.load_results_file(
                con, name, pf.pipeline.request.model, sub.submission_id, sub.batch_id, path
            )
            log(f"loaded {count} results of batch {sub.batch_id}")
            loaded_batches += 1
            lines += count
    return ResultsSummary(loaded_batches, lines)


def write_enriched(pf: PipelineFile, date: dt.date, log: Log) -> results.EnrichedSummary:
    with warehouse.connect() as con:
        resolved = plan.resolve(pf, con)
        summary = results.write_enriched(con, resolved, date)
    log(
        f"wrote {summary.rows} rows of {date} to {pf.pipeline.output.table} "
        f"({summary.succeeded} succeeded, {summary.errored} errored, {summary.missing} missing)"
    )
    return summary
