"""What a person reads after a run: a few enriched rows and the partition's cost."""

from __future__ import annotations

import contextlib
import datetime as dt

import anthropic

from batchpipe import batches, state, warehouse
from batchpipe.errors import BatchpipeError
from batchpipe.loader import PipelineFile
from batchpipe.sqlcheck import quote_ident


def show_partition(pf: PipelineFile, date: dt.date, limit: int = 5) -> None:
    pipeline = pf.pipeline
    table = ".".join(quote_ident(p) for p in pipeline.output.table.split("."))
    keys = ", ".join(quote_ident(k) for k in pipeline.source.key_columns)
    shown = list(pipeline.output.fields or [pipeline.output.column])[:3]
    columns = ", ".join(
        f"left(CAST({quote_ident(c)} AS VARCHAR), {70 // len(shown)}) AS {quote_ident(c)}"
        for c in shown
    )
    with state.connect(read_only=True) as con:
        if pipeline.output.table.split(".")[-1] not in warehouse.table_names(con):
            raise BatchpipeError(
                f"{pipeline.output.table} does not exist yet: run "
                f"`batchpipe run {pipeline.name} --date {date}` first"
            )
        rows = con.sql(
            f"SELECT {keys}, {columns}, result_status, "
            f"CAST(cost_usd AS DECIMAL(12, 6)) AS cost_usd FROM {table} WHERE partition_date = ? "
            f"ORDER BY {keys} LIMIT {int(limit)}",
            params=[date],
        )
        print(f"{pipeline.output.table} on {date} (first {limit} rows):")
        rows.show(max_rows=limit, max_width=160)
        total, cost, standard = state.partition_bill(con, pipeline.name, date)
    print(
        f"cost of {date}: ${cost:.4f} for {total} batch request(s); the standard API would "
        f"have cost ${standard:.4f}\n",
        flush=True,
    )


def batch_status_lines(names: list[str] | None, api: anthropic.Anthropic | None) -> list[str]:
    """Open and recent batches, newest first, with counts, age and cost so far.

    Counts of open batches come live from the API when it answers (read-only: the
    warehouse is not written), else from the last poll recorded in DuckDB.
    """
    with state.connect(read_only=True) as con:
        rows = state.recent_batches(con, names)
        holds = state.holds(con, names)
    if not rows:
        return ["no open or recent batches"]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    live = {}
    # One list call per 100 batches, not a retrieve each; unanswered, the last poll's.
    if api is not None:
        with contextlib.suppress(anthropic.APIError):
            live = batches.retrieve_by_id(api, [r[2] for r in rows if r[3] == "submitted"])
    lines = [
        f"{'pipeline':<22} {'date':<10} {'batch':<34} {'state':<10} {'requests':>8} "
        f"{'done':>6} {'errored':>7} {'age':>6} {'cost $':>9}"
    ]
    for (
        pipeline,
        day,
        batch_id,
        status,
        count,
        ok,
        bad,
        canceled,
        expired,
        at,
        cost,
        estimate,
    ) in rows:
        if status == "submitted" and batch_id in live:
            c = live[batch_id].request_counts
            ok, bad, canceled, expired = c.succeeded, c.errored, c.canceled, c.expired
        done = ok + bad + canceled + expired
        spent = f"{cost:.4f}" if status == "loaded" else f"~{estimate or 0:.4f}"
        lines.append(
            f"{pipeline:<22} {day!s:<10} {batch_id:<34} {status:<10} {count:>8} {done:>6} "
            f"{bad:>7} {_age(now - at):>6} {spent:>9}"
        )
    return lines + _hold_lines(holds, now)


def _hold_lines(holds: list[tuple], now: dt.datetime) -> list[str]:
    """Partitions holding requests back, recorded and not sent, and why."""
    lines = []
    for pipeline, day, reason, message, count, held_at, retry_at in holds:
        due = "due now" if retry_at <= now else f"next try in {_age(retry_at - now)}"
        lines.append(
            f"held: {pipeline} {day}: {count} request(s) not sent yet, for "
            f"{_age(now - held_at)} ({reason}: {message}); {due}"
        )
    return lines


def _age(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
