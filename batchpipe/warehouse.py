"""Every DuckDB connection: which database, its lock, its zone, and transactions.

One setting, `BATCHPIPE_DB`, names the database. DuckDB allows one writing
process per file, so a writer that finds the file locked waits a bounded time
and then says who holds it, instead of failing with the driver's text.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from batchpipe.errors import WarehouseError, WarehouseLocked
from batchpipe.sqlcheck import sql_string

LOCK_WAIT_SECONDS = float(os.environ.get("BATCHPIPE_LOCK_WAIT", "60"))

# A Dagster Component or `build_definitions(database=...)` names its own database; its
# assets run their steps inside `using(path)`. Everything else reads BATCHPIPE_DB.
_database: contextvars.ContextVar[str | None] = contextvars.ContextVar("database", default=None)


def database() -> str:
    return _database.get() or os.environ.get("BATCHPIPE_DB", "batchpipe.duckdb")


@contextlib.contextmanager
def using(path: str | None) -> Iterator[None]:
    """Steps run inside this open `path` (None: BATCHPIPE_DB), and so do the state files
    kept beside it; a thread of its own starts with BATCHPIPE_DB again."""
    token = _database.set(path)
    try:
        yield
    finally:
        _database.reset(token)


def state_dir() -> Path:
    """Files that belong beside the database: downloaded results, the emulator's state."""
    configured = os.environ.get("BATCHPIPE_STATE")
    if configured:
        return Path(configured)
    db = database()
    base = Path(db).resolve().parent if ":" not in db and db != "" else Path.cwd()
    return base / ".batchpipe"


Connection = contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]


@contextlib.contextmanager
def connect(
    *,
    read_only: bool = False,
    prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    lock_wait: float | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is always closed, waiting a bounded time for another writer
    (`lock_wait` seconds, default BATCHPIPE_LOCK_WAIT; 0: not at all, for a reader that
    comes back anyway); `prepare` runs on it first (state.connect creates batchpipe's
    tables there)."""
    db = database()
    # DuckDB's own default is 80% of RAM, and its buffer pool keeps what it read; a run's
    # memory should not grow with the partition, so it is capped and DuckDB spills instead.
    memory = os.environ.get("BATCHPIPE_MEMORY_LIMIT", "512MB")
    # A query naming an https:// path or another format would make DuckDB download and
    # install an extension into ~/.duckdb: a pipeline file must not change the machine.
    settings = {"memory_limit": memory, "autoinstall_known_extensions": False}
    wait = LOCK_WAIT_SECONDS if lock_wait is None else lock_wait
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(db, read_only=read_only, config=settings)
            break
        except duckdb.ParserException as err:
            raise WarehouseError(
                f"BATCHPIPE_MEMORY_LIMIT={memory!r} is not a DuckDB memory size "
                f"such as 1GB or 512MB ({err})"
            ) from None
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise WarehouseError(f"cannot open the DuckDB database {db}: {err}") from None
            if time.monotonic() >= deadline:
                raise WarehouseLocked(
                    f"the DuckDB database {db} is locked by another process "
                    f"({_lock_holder(err)}); waited {wait:.0f} s. Close that "
                    "process's connection (a notebook, a DuckDB shell, another run) or wait "
                    "for it to finish, then run again."
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        # DuckDB starts in the process's zone (TZ), which would decide the day a
        # TIMESTAMPTZ falls on and how it prints: a rerun from another shell would build
        # other requests. UTC until a partition's rows are read in its pipeline's zone
        # (pipeline_sql.bind_date). ICU, which SET TimeZone needs, is built into the wheel; it
        # cannot go in `settings`, which DuckDB applies before it loads ICU.
        set_timezone(con, "UTC")
        if prepare is not None:
            prepare(con)
        yield con
    finally:
        con.close()


def set_timezone(con: duckdb.DuckDBPyConnection, zone: str) -> None:
    """DuckDB's TimeZone for this connection: the day a TIMESTAMPTZ falls on (CAST to
    DATE), its text (CAST to VARCHAR, to_json) and how a DATE compares with it. A
    connection's cursors do not inherit it: they start in the process's zone again."""
    con.execute(f"SET TimeZone = {sql_string(zone)}")


def _lock_holder(err: duckdb.IOException) -> str:
    """`PID 123: /usr/bin/python3` from DuckDB's lock error, for a person to find it."""
    found = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", str(err))
    return f"PID {found[2]}: {found[1]}" if found else "which one, DuckDB did not say"


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK on any error: readers never see half a write."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def describe(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, str]:
    """Column name -> DuckDB type of a table, view or query."""
    rows = con.execute(f"DESCRIBE {relation_sql}").fetchall()
    return {row[0]: row[1] for row in rows}


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name NOT LIKE 'batchpipe\\_%' ESCAPE '\\' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]
