"""Every DuckDB connection: which database, its lock, its zone, and transactions.

One setting, `BATCHPIPE_DB`, names the database: a DuckDB file, or a DuckLake catalog
(`ducklake:postgres:dbname=... host=...`, its data under BATCHPIPE_DATA_PATH). DuckDB
allows one writing process per file, so a writer that finds the file locked waits a
bounded time and then says who holds it, instead of failing with the driver's text.
A DuckLake takes many writers, and a commit that loses a race to another is run
again as a whole (`transactions`; `lake.py` holds the catalog's side).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from batchpipe import lake
from batchpipe.errors import WarehouseError, WarehouseLocked
from batchpipe.failpoints import kill_point
from batchpipe.sqlcheck import quote_ident, sql_string

logger = logging.getLogger("batchpipe")

LOCK_WAIT_SECONDS = float(os.environ.get("BATCHPIPE_LOCK_WAIT", "60"))

# A Dagster Component or `build_definitions(database=...)` names its own database; its
# assets run their steps inside `using(path)`. Everything else reads BATCHPIPE_DB.
_database: contextvars.ContextVar[str | None] = contextvars.ContextVar("database", default=None)


def database() -> str:
    return _database.get() or os.environ.get("BATCHPIPE_DB", "batchpipe.duckdb")


def is_lake(db: str | None = None) -> bool:
    """Whether the warehouse is a DuckLake catalog (many writers) rather than a file."""
    return lake.is_lake(database() if db is None else db)


def label() -> str:
    """The database as a message may name it: a DuckLake DSN's password is left out."""
    return lake.redact(database())


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


def writer_limit(database: str) -> int:
    """How many runs may write the warehouse at once: one for a DuckDB file (one writing
    process), BATCHPIPE_WRITERS for a DuckLake (default 4; each commit that loses a race
    runs again, so more writers than cores mostly wait on each other)."""
    if not lake.is_lake(database):
        return 1
    text = os.environ.get("BATCHPIPE_WRITERS", "4")
    try:
        writers = int(text)
    except ValueError:
        writers = 0
    if writers < 1:
        raise WarehouseError(f"BATCHPIPE_WRITERS={text!r} is not a whole number of 1 or more")
    return writers


def duckdb_settings() -> dict[str, Any]:
    """The DuckDB instance's settings, for a file and a DuckLake alike."""
    # DuckDB's own default is 80% of RAM, and its buffer pool keeps what it read; a run's
    # memory should not grow with the partition, so it is capped and DuckDB spills instead.
    memory = os.environ.get("BATCHPIPE_MEMORY_LIMIT", "512MB")
    # A query naming an https:// path or another format would make DuckDB download and
    # install an extension into ~/.duckdb: a pipeline file must not change the machine.
    return {"memory_limit": memory, "autoinstall_known_extensions": False}


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
    settings = duckdb_settings()
    memory = settings["memory_limit"]
    if lake.is_lake(db):
        with _lake_connection(db, settings, read_only) as con:
            set_timezone(con, "UTC")
            if prepare is not None:
                prepare(con)
            yield con
        return
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


@contextlib.contextmanager
def _lake_connection(
    db: str, settings: dict[str, Any], read_only: bool
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection of its own (its temp tables, zone and transaction are its own) on the
    process's one DuckDB instance with the catalog attached: ATTACH reads the catalog from
    PostgreSQL, about a second, so it is done once a process, not once a step."""
    try:
        root = lake.attached(db, settings, read_only=read_only)
    except ValueError as err:
        raise WarehouseError(
            f"BATCHPIPE_MEMORY_LIMIT={settings['memory_limit']!r} is not a DuckDB memory "
            f"size such as 1GB or 512MB ({err})"
        ) from None
    con = root.cursor()
    try:
        con.execute(f"USE {lake.alias(read_only)}")
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def partition(pipeline: str, date: object) -> Iterator[None]:
    """One process at a time writes a partition's run state (its requests, intents,
    results, output rows). On a file the file's lock already makes it so; on a DuckLake
    this takes the catalog's advisory lock for the partition, waiting up to
    BATCHPIPE_LOCK_WAIT seconds like a locked file, and then says so."""
    db = database()
    if not lake.is_lake(db):
        yield
        return
    with lake.partition_lock(db, f"batchpipe:{pipeline}:{date}", LOCK_WAIT_SECONDS) as held:
        if not held:
            raise WarehouseLocked(
                f"another process is writing {pipeline} {date} on the DuckLake {label()}; "
                f"waited {LOCK_WAIT_SECONDS:.0f} s. It goes on where that run stops: run "
                "again once it has finished."
            )
        yield


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to the same database, for a second thread: on a DuckLake it
    uses the catalog as `con` does (a bare cursor would start in the in-memory one)."""
    (name,) = con.execute("SELECT current_database()").fetchone()
    other = con.cursor()
    other.execute(f"USE {quote_ident(name)}")
    set_timezone(other, "UTC")
    return other


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
    """BEGIN ... COMMIT, or ROLLBACK on any error: readers never see half a write.

    On a DuckLake, a commit can lose to another process's (both wrote one table): the
    whole transaction must then run again. Use `transactions` for that; this one raises."""
    con.execute("BEGIN TRANSACTION")
    _open.add(id(con))
    try:
        yield con
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already rolled back
            con.execute("ROLLBACK")
        raise
    finally:
        _open.discard(id(con))
    con.execute("COMMIT")


# The connections inside a transaction now (by id): `write` runs a statement there as it
# is, and elsewhere in a transaction of its own that a lost race runs again.
_open: set[int] = set()


# A DuckLake commit that loses to another writer's is run again, up to this many times in
# all, after a jittered pause: 8 writers at once all committed within 5 (ducklake_notes).
CONFLICT_ATTEMPTS = int(os.environ.get("BATCHPIPE_CONFLICT_ATTEMPTS", "10"))


def is_conflict(err: BaseException) -> bool:
    """A DuckLake commit that lost a race: nothing of it was written, so all of it may
    run again. A file's single writer never sees one."""
    return (
        isinstance(err, duckdb.Error)
        and not isinstance(err, duckdb.ConstraintException)  # a broken key is no race
        and "conflict" in str(err).lower()
    )


class _Attempt:
    """One try of a transaction (see `transactions`): a conflict ends it quietly."""

    def __init__(self, con: duckdb.DuckDBPyConnection, last: bool) -> None:
        self.con, self.last, self.committed = con, last, False
        self.conflict: BaseException | None = None

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con.execute("BEGIN TRANSACTION")
        _open.add(id(self.con))
        return self.con

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        _open.discard(id(self.con))
        if err is None:
            try:
                self.con.execute("COMMIT")
            except duckdb.Error as commit_err:
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
                if self.last or not is_conflict(commit_err):
                    raise
                self.conflict = commit_err
                return False
            self.committed = True
            return False
        with contextlib.suppress(duckdb.Error):
            self.con.execute("ROLLBACK")
        if self.last or not is_conflict(err):
            return False  # raised as it is
        self.conflict = err
        return True


# Where a retried transaction is reported: the step's log (the run's output, Dagster's
# event log) while `reporting` is in effect, else the `batchpipe` logger.
_report: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "batchpipe_report", default=None
)


@contextlib.contextmanager
def reporting(log: Callable[[str], None]) -> Iterator[None]:
    token = _report.set(log)
    try:
        yield
    finally:
        _report.reset(token)


def transactions(con: duckdb.DuckDBPyConnection, what: str) -> Iterator[_Attempt]:
    """A transaction that runs again as a whole when its commit loses a DuckLake race:

        for attempt in warehouse.transactions(con, "record the intent"):
            with attempt:
                ...statements...

    The body must do nothing but SQL on `con` (no API call, nothing kept in Python that
    a second try would add to again): a retry then never does anything twice. After the
    last attempt the conflict is raised."""
    for number in range(1, CONFLICT_ATTEMPTS + 1):
        attempt = _Attempt(con, last=number == CONFLICT_ATTEMPTS)
        yield attempt
        if attempt.committed:
            return
        pause = min(0.05 * 2**number, 2.0) * random.uniform(0.5, 1.5)
        report = _report.get() or logger.warning
        report(
            f"{what}: the DuckLake commit lost a race to another writer "
            f"({str(attempt.conflict).splitlines()[-1].strip()[:160]}); nothing of it was "
            f"written, running it again in {pause:.2f} s (attempt {number + 1} of "
            f"{CONFLICT_ATTEMPTS})"
        )
        kill_point("after_conflict")
        time.sleep(pause)


def write(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> None:
    """A statement that writes: inside the caller's transaction as it is; else in one of
    its own, run again when its DuckLake commit loses a race."""
    if id(con) in _open:
        con.execute(sql, params)
        return
    for attempt in transactions(con, sql.split(" WHERE ")[0][:80]):
        with attempt:
            con.execute(sql, params)


def describe(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, str]:
    """Column name -> DuckDB type of a table, view or query."""
    rows = con.execute(f"DESCRIBE {relation_sql}").fetchall()
    return {row[0]: row[1] for row in rows}


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database() "
        "AND table_name NOT LIKE 'batchpipe\\_%' ESCAPE '\\' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]
