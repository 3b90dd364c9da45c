"""`batchpipe new`: a starter pipeline file written from a table's columns.

An analyst starts from a file that already validates against their table, then
edits the prompt; guessing the key and the date column from the types saves the
two lookups everyone gets wrong first.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from batchpipe import warehouse
from batchpipe.config import NAME_PATTERN, json_schema
from batchpipe.errors import BatchpipeError
from batchpipe.sqlcheck import quote_ident

SCHEMA_FILE = "schema.json"  # what the first line of a starter file points editors at
TEXT_TYPES = ("VARCHAR",)
DATE_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")


def write_starter(name: str, table: str, directory: Path) -> Path:
    if not re.match(NAME_PATTERN, name):
        raise BatchpipeError(f"{name!r} is not a pipeline name: use [a-z][a-z0-9_]*")
    path = directory / f"{name}.yaml"
    if path.exists():
        raise BatchpipeError(f"{path} already exists; choose another name or edit it")
    with warehouse.connect(read_only=True) as con:
        if table not in warehouse.table_names(con):
            known = ", ".join(warehouse.table_names(con)) or "none"
            raise BatchpipeError(f"no table {table!r} in {warehouse.label()} (tables: {known})")
        relation = quote_ident(table)  # a real table's name, but any name a table can have
        columns = warehouse.describe(con, relation)
        dated = next((c for c, t in columns.items() if t.upper() in DATE_TYPES), None)
        first = None
        if dated:  # partitions start on the table's first date, so its history can backfill
            first = con.execute(
                f"SELECT CAST(min({quote_ident(dated)}) AS DATE) FROM {relation}"
            ).fetchone()[0]
    key = _guess_key(table, columns)
    texts = [c for c, t in columns.items() if t.upper() in TEXT_TYPES and c != key][:3]
    shown = ", ".join(f"{c}: {{{{ {c} }}}}" for c in (texts or [key]))
    partition = (
        f"  partition_column: {dated}    # the rows of run date D are those falling on D\n"
        if dated
        else "  # no DATE or TIMESTAMP column: each run takes the rows no earlier run took\n"
    )
    path.write_text(
        f"# yaml-language-server: $schema=./{SCHEMA_FILE}\n"
        f"name: {name}\n"
        f"description: Written by `batchpipe new` from table {table}; edit the prompt\n"
        "source:\n"
        f"  table: {table}\n"
        f"  key: {key}                  # unique per row\n"
        f"{partition}"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 300\n"
        f'  prompt: "Summarise in one sentence. {shown}"\n'
        "output:\n"
        f"  table: {name}\n"
        "  column: answer\n"
        "partitions:\n"
        f"  start: {(first or dt.date.today()).isoformat()}\n",
        encoding="utf-8",
    )
    write_schema(directory)
    return path


def write_schema(directory: Path) -> Path:
    """The JSON Schema the starter's `$schema=./schema.json` line names, beside it.

    A pipelines folder made outside this repo has none, and an editor told to use a
    missing schema flags the whole file. One that is there is left alone: it may be
    the copy the project keeps in version control (`batchpipe schema` refreshes it).
    """
    path = directory / SCHEMA_FILE
    if not path.exists():
        path.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    return path


def _guess_key(table: str, columns: dict[str, str]) -> str:
    names = list(columns)
    for candidate in ("id", f"{table}_id", f"{table.rstrip('s')}_id"):
        if candidate in names:
            return candidate
    return next((c for c in names if c.endswith("_id")), names[0])
