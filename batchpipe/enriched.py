"""The enriched output table: a partition's source rows beside their answers.

One INSERT ... SELECT writes a partition, inside a transaction that first deletes that
partition (or, in append mode, the rows written again), so a reader sees the old rows or
the new ones, never half of each. The table belongs to one pipeline (ownership.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb

from batchpipe import ownership, pipeline_sql, state, warehouse
from batchpipe.errors import WarehouseError
from batchpipe.failpoints import kill_point
from batchpipe.pipeline_sql import Resolved
from batchpipe.sqlcheck import quote_ident


@dataclass(frozen=True)
class EnrichedSummary:
    rows: int
    succeeded: int
    errored: int
    expired: int
    canceled: int
    missing: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    standard_cost_usd: float
    batch_ids: list[str]
    preview: str  # a markdown table of a few rows, for the asset's metadata
    parse_errors: int = 0  # succeeded replies that do not fit output.schema
    unfinished: int = 0  # rows without a final result: never answered, or budget-skipped
    columns: dict[str, str] = field(default_factory=dict)  # the output table's, name -> type
    table_name: str = ""  # database.schema.table
    # the partition's estimate, the sum of its batches' (batchpipe_costs), beside cost_usd
    estimated_low_usd: float = 0.0
    estimated_usd: float = 0.0
    estimated_high_usd: float = 0.0


def write_enriched(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date
) -> EnrichedSummary:
    """Replace the partition's rows of the output table in one transaction, then say
    what it holds: counts by status, tokens and cost, a preview and the estimate."""
    try:
        _replace_partition(con, resolved, date)
    except duckdb.OutOfMemoryException as err:
        # Nothing is lost (the transaction rolled back; the answers stay in the state
        # tables): the same step succeeds with more room.
        limit = warehouse.duckdb_settings()["memory_limit"]
        raise WarehouseError(
            f"the output partition {resolved.file.pipeline.output.table} {date} did not fit "
            f"in DuckDB's memory limit (BATCHPIPE_MEMORY_LIMIT={limit}): raise it, e.g. "
            "BATCHPIPE_MEMORY_LIMIT=2GB, and materialize the enriched step again; the "
            f"answers are kept and nothing is sent again ({str(err).splitlines()[0]})"
        ) from None
    return _summarize(con, resolved, date)


def _replace_partition(con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date) -> None:
    """The partition's output rows, written in one transaction; the one that creates the
    table (or first writes an adopted one) also records the pipeline as its owner."""
    pipeline = resolved.file.pipeline
    out = _table_sql(resolved)
    select, params = pipeline_sql.enriched_select(resolved, date)
    pipeline_sql.bind_date(con, date, pipeline.partitions.timezone)
    pipeline_sql.register_templates(con, resolved)
    for attempt in warehouse.transactions(con, "write the output partition"):
        with attempt:
            # Again here, in the writing transaction: resolve ran before the batches were sent.
            hold = ownership.check_output_table(con, resolved.file)
            con.execute(f"CREATE TABLE IF NOT EXISTS {out} AS {select} LIMIT 0", params)
            if hold in ("new", "adopting"):
                ownership.record_owner(con, resolved.file, adopted=hold == "adopting")
            _add_new_columns(con, out, select, params)
            if pipeline.output.mode == "replace_partition":
                con.execute(f"DELETE FROM {out} WHERE partition_date = ?", [date])
            else:  # append: keep every other row; a row written again replaces itself by key
                keys = ", ".join(quote_ident(k) for k in pipeline.source.key_columns)
                con.execute(
                    f"DELETE FROM {out} WHERE ({keys}) IN (SELECT ({keys}) FROM ({select}))", params
                )
            kill_point("mid_enriched_write")
            con.execute(f"INSERT INTO {out} BY NAME {select}", params)


def _table_sql(resolved: Resolved) -> str:
    return ".".join(quote_ident(p) for p in resolved.file.pipeline.output.table.split("."))


def _summarize(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date
) -> EnrichedSummary:
    pipeline = resolved.file.pipeline
    spent = state.partition_spend(con, resolved.name, date)
    shown = list(pipeline.output.fields or [pipeline.output.column])[:3]
    low, expected, high = state.partition_estimate(con, resolved.name, date)
    return EnrichedSummary(
        *_status_counts(con, resolved, date),
        *(int(v) for v in spent[:4]),
        cost_usd=float(spent[4]),
        standard_cost_usd=float(spent[5]),
        batch_ids=list(spent[6] or []),
        preview=_markdown(
            [*pipeline.source.key_columns, *shown, "status"],
            _preview_rows(con, resolved, date, shown),
        ),
        parse_errors=_parse_errors(con, resolved, date),
        estimated_low_usd=low,
        estimated_usd=expected,
        estimated_high_usd=high,
    )


def _status_counts(con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date) -> tuple:
    """Rows of the partition, then by result_status: succeeded, errored (for lack of
    credit too, once its resends are spent), expired, canceled, missing."""
    statuses = (
        "'succeeded'",
        "'errored', 'errored_billing'",
        "'expired'",
        "'canceled'",
        "'missing'",
    )
    return con.execute(
        "SELECT count(*), "
        + ", ".join(f"count(*) FILTER (result_status IN ({s}))" for s in statuses)
        + f" FROM {_table_sql(resolved)} WHERE partition_date = ?",
        [date],
    ).fetchone()


def _preview_rows(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date, shown: list[str]
) -> list[tuple]:
    """The partition's first five rows by key: key, a few output columns, status."""
    keys = ", ".join(quote_ident(k) for k in resolved.key_columns)
    return con.execute(
        f"SELECT {keys}, "
        + ", ".join(f"left(CAST({quote_ident(c)} AS VARCHAR), 80)" for c in shown)
        + f", result_status FROM {_table_sql(resolved)} WHERE partition_date = ? "
        f"ORDER BY {keys} LIMIT 5",
        [date],
    ).fetchall()


def _parse_errors(con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date) -> int:
    """Succeeded replies of the partition that do not fit output.schema."""
    if not resolved.file.pipeline.output.fields:
        return 0
    (count,) = con.execute(
        f"SELECT count(*) FROM {_table_sql(resolved)} "
        "WHERE partition_date = ? AND parse_error IS NOT NULL",
        [date],
    ).fetchone()
    return int(count)


def _add_new_columns(con: duckdb.DuckDBPyConnection, table: str, select: str, params: list) -> None:
    """A column added to the source (or by a newer batchpipe) is added to the output table,
    so an existing table keeps working; old partitions hold NULL there."""
    have = set(warehouse.describe(con, table))
    want = con.execute(f"DESCRIBE {select}", params).fetchall()
    for column, kind, *_ in want:
        if column not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(column)} {kind}")


def _markdown(header: list[str], rows: list[tuple]) -> str:
    def cell(value: object) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
