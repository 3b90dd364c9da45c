"""The SQL a pipeline file holds (`source.query`, `source.where`), checked before it runs.

An analyst's SQL is legitimately SQL, but it is pasted into batchpipe's own statements,
which run on the warehouse's one writing connection. So before any of it reaches a
connection, it must be exactly what the file says it is: one read-only SELECT (a query),
or one expression (a filter). DuckDB runs every statement of a string it is given, so a
`;` inside a filter, or a `)` that closes batchpipe's parenthesis early, would otherwise
run the rest as statements of its own (DROP, ATTACH, COPY ... TO, INSTALL ...).

The checks use DuckDB's own parser, without a database: `extract_statements` for the
statements and their types, and `json_serialize_sql` for the tree of a SELECT, in which
every table function is named. A SELECT can still change state through a few table
functions (`enable_logging(storage_path => ...)` and `enable_profiling(save_location =>
...)` write files anywhere, `checkpoint()` writes the database, `query('...')` runs SQL
text this check cannot see), so only table functions that read are allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb

# Table functions that only read: files, ranges, JSON, catalog listings. Anything else,
# including an extension's (postgres_execute, ducklake_expire_snapshots, ...), is refused:
# a new function must be known to read before a pipeline may call it.
READING_TABLE_FUNCTIONS = frozenset(
    {
        "delta_scan",
        "ducklake_list_files",
        "ducklake_snapshots",
        "ducklake_table_changes",
        "ducklake_table_deletions",
        "ducklake_table_info",
        "ducklake_table_insertions",
        "generate_series",
        "glob",
        "iceberg_scan",
        "icu_calendar_names",
        "json_each",
        "json_tree",
        "parquet_bloom_probe",
        "parquet_file_metadata",
        "parquet_full_metadata",
        "parquet_kv_metadata",
        "parquet_metadata",
        "parquet_scan",
        "parquet_schema",
        "pg_timezone_names",
        "postgres_scan",
        "query_table",
        "range",
        "read_blob",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_json_objects_auto",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_parquet",
        "read_text",
        "read_xlsx",
        "repeat",
        "repeat_row",
        "sniff_csv",
        "sqlite_scan",
        "st_read",
        "unnest",
    }
)
# Catalog listings (duckdb_tables(), pragma_table_info('t'), ...) read; these two would
# put what is known of the warehouse's credentials into a prompt.
SECRET_LISTINGS = frozenset({"duckdb_secrets", "which_secret"})


def check_query(query: str) -> str | None:
    """Why `query` cannot be a pipeline's source, or None when it is one read-only SELECT
    that can stand as a subquery: `SELECT * FROM (<query>) AS s`."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        return f"the query fails in DuckDB: {_first_line(err)}"
    kinds = [s.type.name for s in statements]
    if kinds != ["SELECT"]:
        found = ", ".join(kinds) or "nothing"
        return (
            f"expected one SELECT statement, found {len(kinds)} ({found}); a source query "
            "only reads: no ';', ATTACH, COPY, CREATE, INSERT, SET, INSTALL, LOAD or PRAGMA"
        )
    return _check_select(f"SELECT * FROM ({query}) AS s", "the query")


def check_filter(where: str) -> str | None:
    """Why `where` cannot be a filter, or None when it is one expression over the rows.

    batchpipe writes it as `... AND (<where>)`: it must parse both alone and in that
    parenthesis, so it can neither close the parenthesis early (`true) OR (true`) nor
    add clauses or statements after it (`true LIMIT 1`, `true; DROP TABLE t`).
    """
    for sql in (f"SELECT * FROM s WHERE {where}", f"SELECT * FROM s WHERE TRUE AND ({where})"):
        problem = _check_select(sql, "the filter")
        if problem:
            return problem
    return None


def _check_select(sql: str, what: str) -> str | None:
    """One SELECT statement whose table functions all read, or why not."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        return f"{what} fails in DuckDB: {_first_line(err)}"
    kinds = [s.type.name for s in statements]
    if kinds != ["SELECT"]:
        return (
            f"{what} must be one SELECT, or one expression, that only reads: it may not end "
            f"batchpipe's statement or add one (DuckDB reads it as {', '.join(kinds)})"
        )
    with duckdb.connect() as con:  # the parser only: nothing of the warehouse is opened
        (serialized,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(serialized)
    if tree.get("error"):
        return f"{what} cannot be checked by DuckDB's parser: {tree.get('error_message')}"
    if len(tree["statements"]) != 1:
        return f"{what} must be one SELECT (or one expression): it may not add a statement"
    for name in sorted(set(_table_functions(tree))):
        if not _reads(name):
            return (
                f"{what} calls the table function {name}(), which batchpipe does not allow: "
                "a source only reads, and this function can write or run SQL that cannot be "
                "checked (allowed: read_csv, read_json, read_parquet, range, unnest, ...)"
            )
    return None


def _reads(name: str) -> bool:
    name = name.lower()
    if name in SECRET_LISTINGS:
        return False
    return name in READING_TABLE_FUNCTIONS or name.startswith(("duckdb_", "pragma_"))


def _table_functions(node: Any) -> Iterator[str]:
    """The name of every table function anywhere in a serialized statement."""
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION":
            function = node.get("function") or {}
            yield str(function.get("function_name", ""))
        for value in node.values():
            yield from _table_functions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _table_functions(value)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def sql_string(value: str) -> str:
    """A SQL string literal holding `value`, for the few places a value cannot be a
    parameter (DDL, a view, a statement DuckDB must fold)."""
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A SQL identifier: a column or table name as the file spells it, quoted."""
    return '"' + name.replace('"', '""') + '"'
