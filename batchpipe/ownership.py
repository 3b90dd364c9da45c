"""Which pipeline owns an output table, and whether this one may write it.

A run deletes its partition's rows from the output table and ALTERs the table to its
columns, so a table belongs to one pipeline (recorded in batchpipe_outputs): a copied
file or a typo naming someone else's table is refused before anything is sent.
"""

from __future__ import annotations

from typing import Literal

import duckdb

from batchpipe import state, warehouse
from batchpipe.loader import PipelineFile
from batchpipe.pipeline_sql import RESULT_COLUMNS, Resolved, output_types
from batchpipe.sqlcheck import quote_ident, sql_string

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
    output.adopt_existing; its columns are checked by `check_adoptable`).
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
    owner = state.output_owner(con, table)
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
            f"{table!r} is a view in {warehouse.label()}, not a table batchpipe can "
            "write: choose another output.table",
        )
    if _written_here(con, table, name):
        if not _read_only(con):
            record_owner(con, pf, adopted=False)
        return "proven"
    if not output.adopt_existing:
        raise pf.error(
            ("output", "table"),
            f"table {table!r} already exists in {warehouse.label()} and batchpipe did not "
            "create it (no pipeline owns it in batchpipe_outputs); a run would add columns "
            "to it and delete and insert its rows. Choose another output.table, or, to write "
            "into this table deliberately, set output.adopt_existing: true",
        )
    return "adopting"


def record_owner(con: duckdb.DuckDBPyConnection, pf: PipelineFile, *, adopted: bool) -> None:
    """Record the pipeline as its output table's owner (batchpipe_outputs)."""
    state.record_output_owner(con, pf.pipeline.output.table, pf.pipeline.name, adopted=adopted)


def _written_here(con: duckdb.DuckDBPyConnection, table: str, pipeline: str) -> bool:
    """Whether an unrecorded table is provably this pipeline's, written by a batchpipe
    from before batchpipe_outputs: it has batchpipe's result columns, and every batch id
    in it is a batch of this pipeline (at least one). Anyone else's table fails that."""
    have = {column.lower() for column in warehouse.describe(con, quote_ident(table))}
    if not set(RESULT_COLUMNS) <= have:
        return False
    return state.only_batches_of(con, quote_ident(table), pipeline)


def _read_only(con: duckdb.DuckDBPyConnection) -> bool:
    (read_only,) = con.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return bool(read_only)


def check_adoptable(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> None:
    """An adopted table must take the output's rows as they are: its key columns there
    (rows are replaced by key or date), and each column both have of the same type, or
    the INSERT would cast or fail a day later, after the batch was paid for."""
    pf = resolved.file
    table = pf.pipeline.output.table
    have = {c.lower(): (c, kind) for c, kind in warehouse.describe(con, quote_ident(table)).items()}
    try:
        want = output_types(con, resolved)
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
