"""A check of the pipeline file against the warehouse: the second phase of checking it.

The first phase is the schema (loader.py). Here tables, columns and templates are
checked against the real database, and every error still names the file and line.
It runs before anything is sent, so a mistake costs nothing. What comes out is a
`Resolved` (pipeline_sql.py): the SQL fragments every step composes.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import re

import duckdb

from batchpipe import models, ownership, sqlcheck, templates, warehouse
from batchpipe.errors import ConfigError
from batchpipe.loader import PipelineFile
from batchpipe.pipeline_sql import (
    DATE_TYPES,
    RESULT_COLUMNS,
    RUN_DATE,
    Block,
    Content,
    Resolved,
    bind_date,
)
from batchpipe.sqlcheck import quote_ident


def resolve(pf: PipelineFile, con: duckdb.DuckDBPyConnection) -> Resolved:
    """Check a pipeline against the warehouse; raise one ConfigError listing every problem,
    each naming file and line."""
    problems: list[str] = []

    def problem(key: tuple, message: str) -> None:
        problems.extend(pf.error(key, message).problems)

    request = pf.pipeline.request
    try:
        models.model(request.model)
    except ValueError as err:
        problem(("request", "model"), str(err))
    else:
        # What the API would refuse, refused here for free (it would fail a day later, per row).
        for refusal in models.check_request(
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
    hold: ownership.OutputHold | None = None
    source_table = pf.pipeline.source.table
    # Writing the source is refused above, with a better reason than its ownership.
    if source_table is None or not _same_table(con, source_table, pf.pipeline.output.table):
        try:
            hold = ownership.check_output_table(con, pf)
        except ConfigError as err:
            problems.extend(err.problems)

    messages: list[tuple[str, Content]] = []
    system: list[tuple[templates.Template, bool | str]] | None = None
    try:
        messages, system = _templates(pf, available if columns else None, columns)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    resolved = Resolved(pf, source_sql, columns, messages, system)
    if hold == "adopting":
        ownership.check_adoptable(
            con, resolved
        )  # needs the output's columns, so the whole pipeline
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
                f"table {source.table!r} does not exist in {warehouse.label()}{hint} "
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


def _hint(name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"{guess} (columns: {', '.join(available)})"


def _templates(
    pf: PipelineFile, available: list[str] | None, columns: dict[str, str]
) -> tuple[list, list | None]:
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
        messages = []
        slots = itertools.count()  # each media block's column in the staging
        for i, m in enumerate(request.prompt or []):
            key = ("request", "prompt", i, "content")
            if isinstance(m.content, str):
                messages.append((m.role, template(key, m.content)))
                continue
            blocks = []
            for j, b in enumerate(m.content):
                where = (*key, j, b.kind)
                parsed = template(where, b.source)
                title = template((*key, j, "title"), b.title) if b.title is not None else None
                context = (
                    template((*key, j, "context"), b.context) if b.context is not None else None
                )
                if parsed is None:
                    continue
                blocks.append(
                    Block(
                        b.kind,
                        parsed,
                        where,
                        b.cache,
                        title,
                        context,
                        slot=-1 if b.kind == "text" else next(slots),
                        blob_column=_blob_column(parsed, columns) if b.kind != "text" else None,
                    )
                )
            messages.append((m.role, tuple(blocks)))
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


def _blob_column(template: templates.Template, columns: dict[str, str]) -> str | None:
    """The column a media template is, alone, when it holds bytes (BLOB): then the bytes
    are the media, not text naming it."""
    parts = template.parts
    if parts and len(parts) == 1 and parts[0][0] == "expr" and parts[0][1][0] == "column":
        name = parts[0][1][1]
        if columns.get(name, "").upper() == "BLOB":
            return name
    return None


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
