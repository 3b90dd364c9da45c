"""Results files -> DuckDB, and the enriched output table.

Both steps are single SQL statements: `read_json` bulk-loads a results file
and one INSERT ... SELECT writes a partition of the output, inside a
transaction that first deletes that partition, so a reader sees the old rows
or the new ones, never half of each.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from batchpipe import budget, plan, pricing, schema, warehouse
from batchpipe.config import Pipeline
from batchpipe.errors import BatchApiError
from batchpipe.failpoints import kill_point
from batchpipe.plan import Resolved
from batchpipe.templates import quote_ident

# One results line as DuckDB parses it: read_json turns each line into these structs in
# one pass, ignoring the fields batchpipe does not keep (ids, thinking, tool input).
LINE_COLUMNS = (
    "{custom_id: 'VARCHAR', result: 'STRUCT("
    "type VARCHAR, "
    "message STRUCT(model VARCHAR, stop_reason VARCHAR, "
    f"content STRUCT(type VARCHAR, text VARCHAR)[], usage {pricing.USAGE_TYPE}), "
    "error STRUCT(error STRUCT(type VARCHAR, message VARCHAR)))'}"
)
# The text of a reply is its text blocks joined; thinking blocks (which come first on
# models that always think) and tool blocks are skipped by type, never by position.
TEXT_SQL = (
    "array_to_string(list_transform(list_filter(j.result.message.content, "
    "lambda b: b.type = 'text'), lambda b: b.text), '')"
)
USAGE = "j.result.message.usage"
# The same usage with every cache token billed as plain input: what caching saved.
UNCACHED = (
    f"{{'input_tokens': coalesce({USAGE}.input_tokens, 0) "
    f"+ coalesce({USAGE}.cache_creation_input_tokens, 0) "
    f"+ coalesce({USAGE}.cache_read_input_tokens, 0), "
    f"'output_tokens': {USAGE}.output_tokens, 'cache_creation_input_tokens': 0, "
    "'cache_read_input_tokens': 0, 'cache_creation': {'ephemeral_1h_input_tokens': 0}}"
)


def _usage(field: str) -> str:
    return f"coalesce({USAGE}.{field}, 0)"


@dataclass(frozen=True)
class ResultsFile:
    """A downloaded results file, the submission whose batch it answers, and how many
    lines it holds (the download checked that, so loading need not read it again)."""

    submission_id: str
    batch_id: str
    path: Path
    lines: int


def load_results_files(
    con: duckdb.DuckDBPyConnection, pipeline: str, model: str, files: list[ResultsFile]
) -> int:
    """Bulk-load ended batches' results, matched to requests by their wire custom_id (the
    request's custom_id and its submission's token), never by order.

    One statement parses every file (in parallel) and inserts what batchpipe keeps, and
    one transaction marks the batches loaded. A line for a request its batch was not
    sent makes the insert fall short of the files' line count, and it is all rolled
    back before anything is visible.
    """
    if not files:
        return 0
    lines = sum(f.lines for f in files)
    sources = [[str(f.path), f.submission_id, f.batch_id] for f in files]
    with warehouse.transaction(con):
        loaded = con.execute(
            f"""
            WITH source AS (
                SELECT s[1] AS path, s[2] AS submission_id, s[3] AS batch_id
                FROM (SELECT unnest(?::VARCHAR[][]) AS s)
            )
            INSERT INTO batchpipe_results
            SELECT ?, f.batch_id, b.custom_id, b.request_hash, j.result.type,
                   CASE WHEN j.result.type = 'succeeded' THEN {TEXT_SQL} END,
                   j.result.message.stop_reason, j.result.message.model,
                   {_usage("input_tokens")}, {_usage("output_tokens")},
                   {_usage("cache_creation_input_tokens")}, {_usage("cache_read_input_tokens")},
                   {pricing.cost_sql(model, USAGE, batch=True)},
                   {pricing.cost_sql(model, USAGE, batch=False)},
                   j.result.error.error.type, j.result.error.error.message, timezone('UTC', now()),
                   {pricing.cost_sql(model, UNCACHED, batch=True)}
            FROM {_lines("?")}
            JOIN source f ON f.path = j.filename
            JOIN batchpipe_batch_requests b
              ON b.submission_id = f.submission_id
             AND coalesce(b.wire_id, b.custom_id) = j.custom_id
            """,
            [sources, pipeline, [f[0] for f in sources]],
        ).fetchone()[0]
        if loaded != lines:
            raise _strangers(con, files)
        kill_point("mid_results_load")
        # A loaded batch counts against the budgets at what it cost, not its reservation.
        con.execute(
            "UPDATE batchpipe_batches b SET state = 'loaded', loaded_at = timezone('UTC', now()), "
            "actual_usd = (SELECT coalesce(sum(r.cost_usd), 0) FROM batchpipe_results r "
            "WHERE r.batch_id = b.batch_id) WHERE submission_id IN ?",
            [[f.submission_id for f in files]],
        )
    return loaded


def _lines(paths: str) -> str:
    return (
        f"read_json({paths}, format = 'newline_delimited', filename = true, "
        f"columns = {LINE_COLUMNS}) AS j"
    )


def _strangers(con: duckdb.DuckDBPyConnection, files: list[ResultsFile]) -> BatchApiError:
    for f in files:
        count, example = con.execute(
            f"SELECT count(*), any_value(j.custom_id) FROM {_lines('?')} ANTI JOIN "
            "batchpipe_batch_requests b ON b.submission_id = ? "
            "AND coalesce(b.wire_id, b.custom_id) = j.custom_id",
            [str(f.path), f.submission_id],
        ).fetchone()
        if count:
            return BatchApiError(
                f"batch {f.batch_id} returned {count} result(s) for requests it was not sent "
                f"(e.g. {example}); nothing of it was loaded"
            )
    return BatchApiError("the results files' lines do not match their batches' requests one to one")


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
    """Replace the partition's rows of the output table in one transaction; the one that
    creates the table (or first writes an adopted one) also records the pipeline as its
    owner in batchpipe_outputs."""
    pipeline = resolved.file.pipeline
    out = ".".join(quote_ident(p) for p in pipeline.output.table.split("."))
    name = resolved.name
    select, params = _enriched_select(resolved, date)
    plan.bind_date(con, date, pipeline.partitions.timezone)
    plan.register_templates(con, resolved)
    with warehouse.transaction(con):
        # Again here, in the writing transaction: resolve ran before the batches were sent.
        hold = plan.check_output_table(con, resolved.file)
        con.execute(f"CREATE TABLE IF NOT EXISTS {out} AS {select} LIMIT 0", params)
        if hold in ("new", "adopting"):
            plan.record_output_owner(con, resolved.file, adopted=hold == "adopting")
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
    counts = con.execute(
        "SELECT count(*), "
        + ", ".join(
            f"count(*) FILTER (result_status = '{status}')"
            for status in ("succeeded", "errored", "expired", "canceled", "missing")
        )
        + f" FROM {out} WHERE partition_date = ?",
        [date],
    ).fetchone()
    spent = con.execute(
        "SELECT coalesce(sum(r.input_tokens), 0), coalesce(sum(r.output_tokens), 0), "
        "coalesce(sum(r.cache_creation_input_tokens), 0), "
        "coalesce(sum(r.cache_read_input_tokens), 0), "
        "coalesce(sum(r.cost_usd), 0), coalesce(sum(r.standard_cost_usd), 0), "
        "list(DISTINCT b.batch_id ORDER BY b.batch_id) "
        "FROM batchpipe_batches b LEFT JOIN batchpipe_results r ON r.batch_id = b.batch_id "
        "WHERE b.pipeline = ? AND b.partition_date = ? AND b.batch_id IS NOT NULL",
        [name, date],
    ).fetchone()
    keys = ", ".join(quote_ident(k) for k in pipeline.source.key_columns)
    shown = list(pipeline.output.fields or [pipeline.output.column])[:3]
    preview = con.execute(
        f"SELECT {keys}, "
        + ", ".join(f"left(CAST({quote_ident(c)} AS VARCHAR), 80)" for c in shown)
        + f", result_status FROM {out} WHERE partition_date = ? ORDER BY {keys} LIMIT 5",
        [date],
    ).fetchall()
    parse_errors = 0
    if pipeline.output.fields:
        (parse_errors,) = con.execute(
            f"SELECT count(*) FROM {out} WHERE partition_date = ? AND parse_error IS NOT NULL",
            [date],
        ).fetchone()
    # As batchpipe_costs adds them up, without that view's pass over every result.
    estimated = con.execute(
        "SELECT coalesce(sum(estimated_low_usd), 0), coalesce(sum(estimated_usd), 0), "
        "coalesce(sum(reserved_usd), 0) FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND state <> 'failed'",
        [name, date],
    ).fetchone()
    return EnrichedSummary(
        *counts,
        *(int(v) for v in spent[:4]),
        cost_usd=float(spent[4]),
        standard_cost_usd=float(spent[5]),
        batch_ids=list(spent[6] or []),
        preview=_markdown([*pipeline.source.key_columns, *shown, "status"], preview),
        parse_errors=parse_errors,
        estimated_low_usd=float(estimated[0]),
        estimated_usd=float(estimated[1]),
        estimated_high_usd=float(estimated[2]),
    )


def _enriched_select(resolved: Resolved, date: dt.date) -> tuple[str, list]:
    """The SELECT of a partition's output rows (the date bound by plan.bind_date), and
    its parameters."""
    pipeline = resolved.file.pipeline
    name = resolved.name
    select = f"""
        WITH req AS (
            SELECT r.custom_id, r.request_hash, k.limit_name IS NOT NULL AS skipped
            FROM batchpipe_requests r LEFT JOIN batchpipe_skipped k
            USING (pipeline, partition_date, custom_id)
            WHERE r.pipeline = ? AND r.partition_date = ?
        ),
        res AS (  -- a request's answer: its latest success, else its latest result
            SELECT * FROM batchpipe_results WHERE rowid IN (
                SELECT arg_max(rowid, (result_type = 'succeeded', loaded_at))
                FROM batchpipe_results
                WHERE pipeline = ? AND request_hash IN (SELECT request_hash FROM req)
                GROUP BY request_hash
            )
        )
        SELECT {resolved.output_columns_sql("s")},
               CAST(? AS DATE) AS partition_date,
               {_reply_columns(pipeline)},
               coalesce(res.result_type, CASE WHEN req.skipped THEN '{budget.STATUS}' END,
                        'missing') AS result_status,
               res.error_message,
               res.input_tokens, res.output_tokens, res.cost_usd, res.batch_id,
               req.custom_id
        FROM ({resolved.partition_rows_sql()}) AS s
        JOIN req ON req.custom_id = {resolved.custom_id_sql("s")}
        LEFT JOIN res ON res.request_hash = req.request_hash
    """
    # The typed fields read the reply once, as valid JSON or NULL.
    select = select.replace("SELECT * FROM batchpipe_results", _RESULTS_WITH_JSON, 1)
    return select, [name, date, name, date]


def output_types(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> dict[str, str]:
    """Column -> DuckDB type of the rows the pipeline writes (any date: types do not
    depend on it), to check a table it would adopt before anything is sent."""
    select, params = _enriched_select(resolved, resolved.file.pipeline.partitions.start)
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {select}", params).fetchall()}


_RESULTS_WITH_JSON = (
    f"SELECT *, {schema.valid_json_sql('text')} AS reply_json FROM batchpipe_results"
)


def _reply_columns(pipeline: Pipeline) -> str:
    """The reply's text in output.column, or one typed column per field and parse_error."""
    fields = pipeline.output.fields
    if not fields:
        return f"res.text AS {quote_ident(pipeline.output.column)}"
    columns = [
        f"{schema.column_sql(name, field, 'res.reply_json')} AS {quote_ident(name)}"
        for name, field in fields.items()
    ]
    error = schema.error_sql(fields, "res.text", "res.reply_json", "res.stop_reason")
    columns.append(f"CASE WHEN res.result_type = 'succeeded' THEN {error} END AS parse_error")
    return ",\n               ".join(columns)


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
