"""A pipeline resolved against the warehouse, and the requests of one partition.

Resolution is the second phase of checking a pipeline file (the first is the
schema, in loader.py): tables, columns and templates are checked against the
real database, and every error still names the file and line. It runs before
anything is sent, so a mistake costs nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import duckdb

from batchpipe import estimates, pricing, schema, sqlcheck, templates, warehouse
from batchpipe.errors import ConfigError
from batchpipe.loader import PipelineFile
from batchpipe.templates import quote_ident, sql_string

# The run date inside SQL: a session variable, so every statement over a partition's rows
# reads the same date without threading a parameter through each of them.
RUN_DATE = "getvariable('batchpipe_date')"


def bind_date(con: duckdb.DuckDBPyConnection, date: dt.date, timezone: str) -> None:
    """Set the run date and the pipeline's `partitions.timezone` on the connection.

    Every statement over a partition's rows comes after this, and the zone decides what
    they see: the day a TIMESTAMPTZ partition column falls on, and the text a TIMESTAMPTZ
    puts in a prompt on both template paths (CAST to VARCHAR, and to_json for Jinja). Set
    together, a rerun builds the same requests whatever the TZ of the shell. The session
    stays in that zone, so timestamps batchpipe stores say UTC explicitly.
    """
    con.execute("SET VARIABLE batchpipe_date = CAST(? AS DATE)", [date])
    warehouse.set_timezone(con, timezone)


# Columns batchpipe adds to every output table, beside the source columns.
RESULT_COLUMNS = (
    "partition_date",
    "result_status",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "batch_id",
)
CUSTOM_ID_PATTERN = "[a-zA-Z0-9_-]{1,64}"
DATE_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS")


@dataclass(frozen=True)
class Resolved:
    """SQL fragments for one pipeline, checked against the warehouse's real columns."""

    file: PipelineFile
    source_sql: str  # a relation: a table name or a parenthesized query
    columns: dict[str, str]
    messages: list[tuple[str, templates.Template]]  # (role, content)
    system: list[tuple[templates.Template, bool | str]] | None  # (text, cache)

    @property
    def name(self) -> str:
        return self.file.pipeline.name

    def partition_rows_sql(self) -> str:
        """The source rows of the run date set by `bind_date` on the connection."""
        source = self.file.pipeline.source
        where = f" AND ({source.where})" if source.where else ""
        if source.partition_column:
            column = quote_ident(source.partition_column)
            return (
                f"SELECT * FROM {self.source_sql} AS s "
                f"WHERE CAST(s.{column} AS DATE) = {RUN_DATE}{where}"
            )
        # Incremental: the rows no other run date has taken yet (and those this date took).
        return (
            f"SELECT * FROM {self.source_sql} AS s WHERE {self.custom_id_sql('s')} NOT IN ("
            "SELECT custom_id FROM batchpipe_requests "
            f"WHERE pipeline = {sql_string(self.name)} AND partition_date <> {RUN_DATE}){where}"
        )

    def output_columns_sql(self, relation: str = "s") -> str:
        """The source columns the output table carries: `columns`, plus the key."""
        chosen = self.file.pipeline.source.columns
        if chosen is None:
            return f"{relation}.*"
        keep = list(dict.fromkeys([*self.key_columns, *chosen]))
        return ", ".join(f"{relation}.{quote_ident(c)}" for c in keep)

    def custom_id_sql(self, relation: str = "s") -> str:
        """custom_id from the key: readable when it fits the API's rule, else a stable hash.

        One key column: its value when it matches ^[a-zA-Z0-9_-]{1,64}$. Several: the values
        joined by `_` when none contains `_` (so the join is unambiguous) and all fit.
        batchpipe_requests keeps each id's key values either way.
        """
        keys = [f"CAST({relation}.{quote_ident(k)} AS VARCHAR)" for k in self.key_columns]
        hashed = f"'h-' || md5(CAST(to_json(list_value({', '.join(keys)})) AS VARCHAR))"
        if len(keys) == 1:
            readable, fits = keys[0], f"regexp_full_match({keys[0]}, '{CUSTOM_ID_PATTERN}')"
        else:
            readable = " || '_' || ".join(keys)
            parts = " AND ".join(f"regexp_full_match({k}, '[a-zA-Z0-9-]+')" for k in keys)
            fits = f"({parts} AND length({readable}) <= 64)"
        return f"CASE WHEN coalesce({fits}, false) THEN {readable} ELSE {hashed} END"

    def key_values_sql(self, relation: str = "s") -> str:
        pairs = ", ".join(
            f"{quote_ident(k)} := {relation}.{quote_ident(k)}" for k in self.key_columns
        )
        return f"to_json(struct_pack({pairs}))"

    @property
    def key_columns(self) -> list[str]:
        return self.file.pipeline.source.key_columns

    def params_sql(self, relation: str = "s") -> str:
        """The Messages API params of a row as JSON text, written by concatenation.

        The text is exactly what `json_object` over the same fields gives (DuckDB writes
        the constant parts, folded once per statement; `to_json` escapes each row's
        strings), so request hashes stay what they always were, at a quarter of the cost
        of building a JSON document per row.
        """
        request = self.file.pipeline.request
        head = json_text(
            f"'model', {sql_string(request.model)}, 'max_tokens', {int(request.max_tokens)}"
        )
        parts = [f"left({head}, -1)"]  # without its closing brace
        if self.system is not None:
            parts += ["',\"system\":'", _json_value(self.system_sql(relation))]
        messages = " || ',' || ".join(
            f"'{{\"role\":' || {_json_value(sql_string(role))} || ',\"content\":' || "
            f"{_json_value(templates.to_sql(content, relation))} || '}}'"
            for role, content in self.messages
        )
        parts += ["',\"messages\":['", messages, "']'"]
        constant = constant_params(self.file)
        if constant:
            fields = ", ".join(
                f"{sql_string(key)}, {sql_string(json.dumps(value))}::JSON"
                for key, value in constant.items()
            )
            parts.append(f"',' || substr({json_text(fields)}, 2)")  # without its opening brace
        else:
            parts.append("'}'")
        return "(" + " || ".join(parts) + ")"

    def system_sql(self, relation: str = "s") -> str:
        """A plain string when the file gave text, else text blocks with cache_control."""
        assert self.system is not None
        request = self.file.pipeline.request
        if len(self.system) == 1 and not isinstance(request.system, list):
            return templates.to_sql(self.system[0][0], relation)
        blocks = []
        for template, cache in self.system:
            parts = f"'type', 'text', 'text', {templates.to_sql(template, relation)}"
            if cache:
                control = {"type": "ephemeral", **({"ttl": cache} if cache == "1h" else {})}
                parts += f", 'cache_control', {sql_string(json.dumps(control))}::JSON"
            blocks.append(f"json_object({parts})")
        return f"json_array({', '.join(blocks)})"

    @property
    def templates(self) -> list[templates.Template]:
        return [t for _, t in self.messages] + [t for t, _ in self.system or []]


def json_text(fields: str) -> str:
    """`json_object(fields)` as VARCHAR: constant fields make a literal DuckDB folds."""
    return f"CAST(json_object({fields}) AS VARCHAR)"


def _json_value(expression: str) -> str:
    """A value as JSON text, the way json_object writes it (NULL as null)."""
    return f"coalesce(CAST(to_json({expression}) AS VARCHAR), 'null')"


def constant_params(pf: PipelineFile) -> dict[str, Any]:
    """The request options that are the same for every row, as API version 2026-10-21
    names them."""
    request = pf.pipeline.request
    params: dict[str, Any] = {}
    output_config: dict[str, Any] = {}
    fields = pf.pipeline.output.fields
    if fields:
        output_config["format"] = {"type": "json_schema", "schema": schema.json_schema(fields)}
    if request.effort:
        output_config["effort"] = request.effort
    if output_config:
        params["output_config"] = output_config
    for option in ("thinking", "stop_sequences", "inference_geo", "metadata"):
        value = getattr(request, option)
        if value is not None:
            params[option] = value
    return params


def resolve(pf: PipelineFile, con: duckdb.DuckDBPyConnection) -> Resolved:
    """Check a pipeline against the warehouse; raise one ConfigError listing every problem,
    each naming file and line."""
    problems: list[str] = []

    def problem(key: tuple, message: str) -> None:
        problems.extend(pf.error(key, message).problems)

    request = pf.pipeline.request
    try:
        pricing.model(request.model)
    except ValueError as err:
        problem(("request", "model"), str(err))
    else:
        # What the API would refuse, refused here for free (it would fail a day later, per row).
        for refusal in pricing.check_request(
            request.model,
            max_tokens=request.max_tokens,
            betas=request.betas or (),
            thinking=request.thinking,
        ):
            problem(
                ("request", "max_tokens" if refusal.startswith("max_tokens") else "thinking"),
                refusal,
            )

    source_sql, columns = _describe_source(pf, con, problem)
    available = list(columns)
    if columns:
        _check_source_columns(pf, con, source_sql, columns, problem)
    hold: OutputHold | None = None
    source_table = pf.pipeline.source.table
    # Writing the source is refused above, with a better reason than its ownership.
    if source_table is None or not _same_table(con, source_table, pf.pipeline.output.table):
        try:
            hold = check_output_table(con, pf)
        except ConfigError as err:
            problems.extend(err.problems)

    messages: list[tuple[str, templates.Template]] = []
    system: list[tuple[templates.Template, bool | str]] | None = None
    try:
        messages, system = _templates(pf, available if columns else None)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    resolved = Resolved(pf, source_sql, columns, messages, system)
    if hold == "adopting":
        _check_adoptable(con, resolved)  # needs the output's columns, so the whole pipeline
    return resolved


def _describe_source(pf: PipelineFile, con: duckdb.DuckDBPyConnection, problem) -> tuple[str, dict]:
    """The source as a SQL relation and its columns ({} when it cannot be read)."""
    source = pf.pipeline.source
    if source.table is not None:
        source_sql = ".".join(quote_ident(p) for p in source.table.split("."))
        try:
            return source_sql, warehouse.describe(con, source_sql)
        except duckdb.CatalogException:
            known = warehouse.table_names(con)
            close = difflib.get_close_matches(source.table, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problem(
                ("source", "table"),
                f"table {source.table!r} does not exist in {warehouse.database()}{hint} "
                f"(tables: {', '.join(known) or 'none'})",
            )
            return source_sql, {}
    query = re.sub(r"\{\{\s*partition_date\s*\}\}", RUN_DATE, source.query or "")
    source_sql = f"({query})"
    # Checked before it runs: DuckDB would run every statement a `)` or `;` let in.
    if unsafe := sqlcheck.check_query(query):
        problem(("source", "query"), unsafe)
        return source_sql, {}
    try:
        if not con.execute("SELECT getvariable('batchpipe_date')").fetchone()[0]:
            # Any date will do to describe.
            bind_date(con, pf.pipeline.partitions.start, pf.pipeline.partitions.timezone)
        return source_sql, warehouse.describe(con, source_sql)
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        problem(("source", "query"), f"the query fails in DuckDB: {first}")
        return source_sql, {}


def _check_source_columns(
    pf: PipelineFile, con: duckdb.DuckDBPyConnection, source_sql: str, columns: dict, problem
) -> None:
    source = pf.pipeline.source
    available = list(columns)
    for index, key in enumerate(source.key_columns):
        if key not in columns:
            where = ("source", "key") if isinstance(source.key, str) else ("source", "key", index)
            problem(where, f"key column {key!r} is not in the source{_hint(key, available)}")
    for index, column in enumerate(source.columns or []):
        if column not in columns:
            problem(
                ("source", "columns", index),
                f"column {column!r} is not in the source{_hint(column, available)}",
            )
    if source.where and (unsafe := sqlcheck.check_filter(source.where)):
        problem(("source", "where"), unsafe)  # never run: it could end the statement
    elif source.where:
        try:
            con.execute(f"EXPLAIN SELECT * FROM {source_sql} AS s WHERE ({source.where})")
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            problem(("source", "where"), f"the filter fails in DuckDB: {first}")
    partition = source.partition_column
    if partition is not None and partition not in columns:
        problem(
            ("source", "partition_column"),
            f"column {partition!r} is not in the source{_hint(partition, available)}",
        )
    elif partition is not None and columns[partition].upper() not in DATE_TYPES:
        problem(
            ("source", "partition_column"),
            f"column {partition!r} is {columns[partition]}; expected DATE or TIMESTAMP",
        )
    output = pf.pipeline.output
    added = list(output.fields or [output.column])
    if output.fields:
        added.append("parse_error")
    clashes = [c for c in (*RESULT_COLUMNS, *added) if c in columns]
    if clashes:
        problem(
            ("output", "column"),
            f"the source already has column(s) {', '.join(clashes)}, which the output "
            f"table adds; rename them in a query, or choose another output.column",
        )
    if source.table is not None and _same_table(con, source.table, output.table):
        problem(
            ("output", "table"),
            f"{output.table!r} is the source table; the output replaces rows of its table, "
            "so it needs a table of its own: choose another output.table",
        )


def _same_table(con: duckdb.DuckDBPyConnection, source_table: str, output_table: str) -> bool:
    """Whether the source names the table the output is written to (main schema)."""
    *prefix, name = source_table.lower().split(".")
    (catalog,) = con.execute("SELECT current_database()").fetchone()
    return name == output_table.lower() and prefix in ([], ["main"], [catalog.lower(), "main"])


# How a pipeline holds its output table; see check_output_table.
OutputHold = Literal["new", "owned", "proven", "adopting"]


def check_output_table(con: duckdb.DuckDBPyConnection, pf: PipelineFile) -> OutputHold:
    """Whether this pipeline may write its output table; a ConfigError at output.table if not.

    An output table belongs to one pipeline (batchpipe_outputs), because a run deletes the
    rows of its date and ALTERs the table to its columns: a copied file (a v2 prompt) or
    a typo naming someone's table must be refused before anything is sent, not discovered
    as lost rows. Returns "new" (no such table: the first write creates it and records
    the owner), "owned" (recorded as this pipeline's), "proven" (written by an earlier
    batchpipe for this pipeline, see `_written_here`: recorded now when the connection is
    writable) or "adopting" (a table batchpipe did not create, which the file adopts with
    output.adopt_existing; its columns are checked by `_check_adoptable`).
    """
    output, name = pf.pipeline.output, pf.pipeline.name
    found = con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main' "
        "AND lower(table_name) = lower(?)",
        [output.table],
    ).fetchone()
    if found is None:
        return "new"
    table, kind = found
    owner = _owner(con, table)
    if owner is not None and owner[0] == name:
        return "owned"
    if owner is not None:
        holder, adopted = owner
        raise pf.error(
            ("output", "table"),
            f"table {table!r} belongs to pipeline {holder!r}, which "
            f"{'adopted' if adopted else 'created'} it (batchpipe_outputs); an output table "
            "belongs to one pipeline, even with output.adopt_existing, since a run of this "
            f"one would delete that one's rows. Choose another output.table (if {holder!r} "
            "no longer writes it, say it was renamed to this one, hand the table over: "
            f"DELETE FROM batchpipe_outputs WHERE table_name = {sql_string(table)}, then "
            "set output.adopt_existing: true)",
        )
    if kind != "BASE TABLE":
        raise pf.error(
            ("output", "table"),
            f"{table!r} is a view in {warehouse.database()}, not a table batchpipe can "
            "write: choose another output.table",
        )
    if _written_here(con, table, name):
        if not _read_only(con):
            record_output_owner(con, pf, adopted=False)
        return "proven"
    if not output.adopt_existing:
        raise pf.error(
            ("output", "table"),
            f"table {table!r} already exists in {warehouse.database()} and batchpipe did not "
            "create it (no pipeline owns it in batchpipe_outputs); a run would add columns "
            "to it and delete and insert its rows. Choose another output.table, or, to write "
            "into this table deliberately, set output.adopt_existing: true",
        )
    return "adopting"


def record_output_owner(con: duckdb.DuckDBPyConnection, pf: PipelineFile, *, adopted: bool) -> None:
    """Record the pipeline as its output table's owner. A row left by a table since
    dropped (and now created again) is replaced: ownership follows the table."""
    table = pf.pipeline.output.table
    con.execute("DELETE FROM batchpipe_outputs WHERE lower(table_name) = lower(?)", [table])
    con.execute(
        "INSERT INTO batchpipe_outputs VALUES (?, ?, timezone('UTC', now()), ?)",
        [table, pf.pipeline.name, adopted],
    )


def _owner(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str, bool] | None:
    """(pipeline, adopted) recorded for a table, or None."""
    try:
        return con.execute(
            "SELECT pipeline, adopted FROM batchpipe_outputs "
            "WHERE lower(table_name) = lower(?) ORDER BY created_at DESC LIMIT 1",
            [table],
        ).fetchone()
    except duckdb.CatalogException:  # a connection opened without batchpipe's state tables
        return None


def _written_here(con: duckdb.DuckDBPyConnection, table: str, pipeline: str) -> bool:
    """Whether an unrecorded table is provably this pipeline's, written by a batchpipe
    from before batchpipe_outputs: it has batchpipe's result columns, and every batch id
    in it is a batch of this pipeline (at least one). Anyone else's table fails that."""
    have = {column.lower() for column in warehouse.describe(con, quote_ident(table))}
    if not set(RESULT_COLUMNS) <= have:
        return False
    try:
        (proven,) = con.execute(
            "SELECT count(*) > 0 AND bool_and(batch_id IN (SELECT batch_id FROM "
            "batchpipe_batches WHERE pipeline = ? AND batch_id IS NOT NULL)) "
            "FROM (SELECT DISTINCT CAST(batch_id AS VARCHAR) AS batch_id "
            f"FROM {quote_ident(table)} WHERE batch_id IS NOT NULL)",
            [pipeline],
        ).fetchone()
    except duckdb.CatalogException:  # no batchpipe_batches: nothing was ever sent here
        return False
    return bool(proven)


def _read_only(con: duckdb.DuckDBPyConnection) -> bool:
    (read_only,) = con.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return bool(read_only)


def _check_adoptable(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> None:
    """An adopted table must take the output's rows as they are: its key columns there
    (rows are replaced by key or date), and each column both have of the same type, or
    the INSERT would cast or fail a day later, after the batch was paid for."""
    from batchpipe import results  # results imports this module

    pf = resolved.file
    table = pf.pipeline.output.table
    have = {c.lower(): (c, kind) for c, kind in warehouse.describe(con, quote_ident(table)).items()}
    try:
        want = results.output_types(con, resolved)
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        raise pf.error(
            ("output", "table"), f"cannot compare {table!r} with the output's columns: {first}"
        ) from None
    reasons = []
    missing = [k for k in resolved.key_columns if k.lower() not in have]
    if missing:
        reasons.append(f"key column(s) {', '.join(missing)} are not in the table")
    for column, kind in want.items():
        existing = have.get(column.lower())
        if existing is not None and existing[1] != kind:
            reasons.append(
                f"column {existing[0]} is {existing[1]} in the table but {kind} in the output"
            )
    if reasons:
        raise pf.error(
            ("output", "table"),
            f"table {table!r} cannot be adopted (output.adopt_existing): {'; '.join(reasons)}. "
            "Choose another output.table, or change the table's columns to match",
        )


def _hint(name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"{guess} (columns: {', '.join(available)})"


def _templates(pf: PipelineFile, available: list[str] | None) -> tuple[list, list | None]:
    """Parse every template; with `available` None (no readable source), syntax only."""
    request = pf.pipeline.request
    problems: list[str] = []

    def template(key: tuple, text: str) -> templates.Template | None:
        try:
            return _template(pf, key, text, available)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    if request.prompt_file is not None:
        text = _read(pf, ("request", "prompt_file"), request.prompt_file)
        messages = [("user", template(("request", "prompt_file"), text))]
    elif isinstance(request.prompt, str):
        messages = [("user", template(("request", "prompt"), request.prompt))]
    else:
        messages = [
            (m.role, template(("request", "prompt", i, "content"), m.content))
            for i, m in enumerate(request.prompt or [])
        ]
    system = None
    if request.system_file is not None:
        text = _read(pf, ("request", "system_file"), request.system_file)
        system = [(template(("request", "system_file"), text), False)]
    elif isinstance(request.system, str):
        system = [(template(("request", "system"), request.system), False)]
    elif request.system is not None:
        system = []
        for i, block in enumerate(request.system):
            where = ("request", "system", i, "text" if block.text is not None else "file")
            try:
                text = block.text if block.text is not None else _read(pf, where, block.file or "")
            except ConfigError as err:
                problems.extend(err.problems)
                continue
            system.append((template(where, text), block.cache))
    if problems:
        raise ConfigError(problems)
    return messages, system


def _read(pf: PipelineFile, key: tuple, name: str) -> str:
    """A template file, named relative to the pipeline file."""
    path = pf.path.parent / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise pf.error(key, f"cannot read {path}: {err.strerror}") from None


def _template(
    pf: PipelineFile, key: tuple, text: str, available: list[str] | None
) -> templates.Template:
    try:
        template = templates.parse(text)
        if available is not None:
            templates.check_columns(template, available)
    except templates.TemplateError as err:
        raise pf.error(key, str(err)) from None
    return template


@dataclass(frozen=True)
class RequestsSummary:
    requests: int
    to_send: int
    estimate: dict[str, float]

    @property
    def reused(self) -> int:
        return self.requests - self.to_send


def register_templates(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> None:
    """Templates that need Jinja render through a function registered on the connection."""
    for template in resolved.templates:
        templates.register(con, template)


def build_requests(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date
) -> RequestsSummary:
    """Rebuild the partition's requests in one SQL statement, after checking its keys."""
    name = resolved.name
    register_templates(con, resolved)
    bind_date(con, date, resolved.file.pipeline.partitions.timezone)
    check_keys(con, resolved, date)
    with warehouse.transaction(con):
        con.execute(
            "DELETE FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
            [name, date],
        )
        _insert_requests(con, resolved, date)
        # Inside the transaction: a refused partition keeps the requests it had.
        check_context(
            con,
            resolved,
            f"(SELECT * FROM batchpipe_requests WHERE pipeline = {sql_string(name)} "
            f"AND partition_date = {RUN_DATE})",
            date,
        )
    (requests,) = con.execute(
        "SELECT count(*) FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
        [name, date],
    ).fetchone()
    to_send, estimate = estimate_pending(con, resolved.file, date)
    return RequestsSummary(requests=requests, to_send=to_send, estimate=estimate)


def _insert_requests(con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date) -> None:
    with rendering(resolved):
        con.execute(
            f"""
            INSERT INTO batchpipe_requests
                (pipeline, partition_date, custom_id, request_hash, params, input_chars,
                 key_values)
            SELECT ?, ?, custom_id, md5(CAST(params AS VARCHAR)), params,
                   length(CAST(params AS VARCHAR)), key_values
            FROM (
                SELECT {resolved.custom_id_sql()} AS custom_id,
                       {resolved.params_sql()} AS params,
                       {resolved.key_values_sql()} AS key_values
                FROM ({resolved.partition_rows_sql()}) AS s
            )
            """,
            [resolved.name, date],
        )


def _prompt_key(resolved: Resolved) -> tuple[str, ...]:
    """Where a problem of the rendered prompt points: `request.prompt` when the file has
    one, else the `request` mapping (a prompt_file or messages)."""
    return ("request", "prompt") if resolved.file.pipeline.request.prompt else ("request",)


@contextlib.contextmanager
def rendering(resolved: Resolved) -> Iterator[None]:
    """A statement that renders requests; a Jinja template that fails on one row's values
    (a comparison with NULL, say) becomes the file's error, not DuckDB's UDF traceback."""
    try:
        yield
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        first = first.split("TemplateError: ", 1)[-1]  # DuckDB's UDF wrapping says nothing
        raise resolved.file.error(
            _prompt_key(resolved), f"rendering the requests failed: {first}"
        ) from None


def check_context(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, relation: str, date: dt.date
) -> None:
    """Refuse requests over the model's context window before they are sent.

    The API takes such a request into a batch and answers it a day later with an error;
    here it costs nothing and names the row. `relation` holds the partition's requests
    (input_chars, key_values). Input tokens are estimated at CHARS_PER_TOKEN characters
    a token of the request's JSON, as the cost estimate is; the window holds input and
    max_tokens together.
    """
    request = resolved.file.pipeline.request
    info = pricing.model(request.model)
    room = info.context_window - request.max_tokens
    rows = con.execute(
        f"SELECT count(*) OVER (), CAST(key_values AS VARCHAR), input_chars FROM {relation} "
        "WHERE input_chars > ? ORDER BY input_chars DESC LIMIT 3",
        [room * pricing.CHARS_PER_TOKEN],
    ).fetchall()
    if not rows:
        return
    examples = "; ".join(
        f"key {key} is about {math.ceil(chars / pricing.CHARS_PER_TOKEN):,} input tokens"
        for _, key, chars in rows
    )
    raise resolved.file.error(
        _prompt_key(resolved),
        f"{rows[0][0]} request(s) of {date} would not fit {info.id}'s context window of "
        f"{info.context_window:,} tokens (input plus max_tokens {request.max_tokens:,}): "
        f"{examples} (estimated at {pricing.CHARS_PER_TOKEN} characters a token). Shorten "
        "the prompt, leave such rows out with source.where, or choose a model with a larger "
        "window; nothing was sent",
    )


# Errors worth sending again: the request was fine, the service was not.
RETRYABLE_ERRORS = ("api_error", "overloaded_error")

# Requests of a partition that still need sending, one per distinct request (identical
# rows share one answer): no succeeded result for the identical request anywhere in the
# pipeline's history, and either no result yet or a retryable one (expired, api_error,
# overloaded_error) with attempts left. invalid_request and other errors are final, and
# so is a cancel. Requests in an open batch are not pending. Params: see pending_params.
PENDING_SQL = f"""
WITH latest AS (
    SELECT request_hash,
           bool_or(result_type = 'succeeded') AS answered,
           arg_max(result_type, loaded_at) AS result_type,
           arg_max(error_type, loaded_at) AS error_type
    FROM batchpipe_results WHERE pipeline = $pipeline GROUP BY request_hash
),
attempts AS (
    SELECT r.request_hash, count(*) AS sent
    FROM batchpipe_batch_requests AS r JOIN batchpipe_batches AS b USING (submission_id)
    WHERE b.pipeline = $pipeline AND b.state <> 'failed'
    GROUP BY r.request_hash
)
SELECT min(r.custom_id) AS custom_id, r.request_hash,
       any_value(r.input_chars) AS input_chars
FROM batchpipe_requests AS r
LEFT JOIN latest AS l USING (request_hash)
LEFT JOIN attempts AS a USING (request_hash)
WHERE r.pipeline = $pipeline AND r.partition_date = $date
  AND NOT coalesce(l.answered, false)
  AND (l.result_type IS NULL OR l.result_type = 'expired'
       OR l.error_type IN {RETRYABLE_ERRORS})
  AND coalesce(a.sent, 0) < $max_attempts
  AND r.request_hash NOT IN (  -- in flight: an open batch will answer it
      SELECT r2.request_hash
      FROM batchpipe_batch_requests AS r2 JOIN batchpipe_batches AS b2 USING (submission_id)
      WHERE b2.pipeline = $pipeline AND b2.state IN {warehouse.OPEN_STATES}
  )
GROUP BY r.request_hash
"""


def pending_params(pf: PipelineFile, date: dt.date) -> dict:
    return {
        "pipeline": pf.pipeline.name,
        "date": date,
        "max_attempts": pf.pipeline.request.max_attempts,
    }


def pending_size(
    con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date
) -> tuple[int, int]:
    """How many requests would be sent now, and their characters of params."""
    count, chars = con.execute(
        f"SELECT count(*), coalesce(sum(input_chars), 0) FROM ({PENDING_SQL})",
        pending_params(pf, date),
    ).fetchone()
    return int(count), int(chars)


def estimate_pending(
    con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date
) -> tuple[int, dict[str, float]]:
    """How many requests would be sent now, and what they would cost."""
    count, chars = pending_size(con, pf, date)
    # Characters only: counting tokens needs the API, which the send step asks.
    request = pf.pipeline.request
    *_, priced = estimates.for_requests(con, pf.pipeline.name, request, None, (), count)
    batches = -(-count // request.max_batch_requests)
    return count, priced(count, chars, batches).as_dict()


def undated_rows_note(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date
) -> str | None:
    """A note when source rows have a NULL partition column, else None.

    Such a row falls on no date, so no partition ever sends it, and no error would say
    so: validate and plan report the count (rows source.where drops are not counted).
    `date` binds a query's {{ partition_date }}; any date will do for validate.
    """
    source = resolved.file.pipeline.source
    if source.partition_column is None:
        return None
    column = quote_ident(source.partition_column)
    where = f" AND ({source.where})" if source.where else ""
    bind_date(con, date, resolved.file.pipeline.partitions.timezone)
    try:
        (count,) = con.execute(
            f"SELECT count(*) FROM {resolved.source_sql} AS s WHERE s.{column} IS NULL{where}"
        ).fetchone()
    except duckdb.Error:
        return None  # reading the rows fails in the run too, which says why
    if not count:
        return None
    kept = " that source.where keeps" if source.where else ""
    return (
        f"{resolved.file.where('source', 'partition_column')}: source.partition_column: "
        f"{count} source row(s){kept} have no {source.partition_column} (NULL) and fall on "
        "no date: they are never sent"
    )


def check_keys(con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date) -> None:
    """NULL or duplicate keys would merge rows; show a few examples and stop."""
    keys = ", ".join(f"s.{quote_ident(k)}" for k in resolved.key_columns)
    null_test = " OR ".join(f"s.{quote_ident(k)} IS NULL" for k in resolved.key_columns)
    rows_sql = resolved.partition_rows_sql()
    nulls = con.execute(
        f"SELECT count(*) OVER (), CAST(to_json(s) AS VARCHAR) FROM ({rows_sql}) s "
        f"WHERE {null_test} LIMIT 3"
    ).fetchall()
    if nulls:
        examples = "; ".join(row[1][:120] for row in nulls)
        raise resolved.file.error(
            ("source", "key"),
            f"{nulls[0][0]} row(s) of {date} have a NULL key; keys must be set. "
            f"For example: {examples}",
        )
    dupes = con.execute(
        f"SELECT {keys}, count(*) AS n FROM ({rows_sql}) s GROUP BY ALL HAVING n > 1 "
        "ORDER BY n DESC LIMIT 3",
    ).fetchall()
    if dupes:
        examples = "; ".join(f"{', '.join(map(str, row[:-1]))} ({row[-1]} rows)" for row in dupes)
        raise resolved.file.error(
            ("source", "key"),
            f"the key is not unique on {date}: {examples}. Choose columns unique per row",
        )
    # A key outside the API's custom_id rule is sent as h-<md5 of the key>, so two keys
    # share an id only when one of them is itself such a hash: refused, never renamed.
    collisions = con.execute(
        f"SELECT {resolved.custom_id_sql()} AS id, "
        f"string_agg(CAST({resolved.key_values_sql()} AS VARCHAR), ' and ' ORDER BY {keys}) "
        f"FROM ({rows_sql}) s GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 3",
    ).fetchall()
    if collisions:
        examples = "; ".join(f"{key_values} would both be {id_}" for id_, key_values in collisions)
        raise resolved.file.error(
            ("source", "key"),
            f"different keys of {date} would be sent with the same custom_id: {examples}. "
            f"A key that does not fit the API's rule ^{CUSTOM_ID_PATTERN}$ is sent as "
            "h-<md5 of the key>, so a key value must not look like one",
        )
