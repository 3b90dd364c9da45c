"""Every DuckDB connection, and the state tables that make runs recoverable.

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
from collections.abc import Iterator
from pathlib import Path

import duckdb

from batchpipe.errors import WarehouseError

LOCK_WAIT_SECONDS = float(os.environ.get("BATCHPIPE_LOCK_WAIT", "60"))

# A submission's states while its requests are in flight, in order: recorded, create
# called (outcome not yet known), a batch upstream that may be it (awaiting proof), its
# batch created, its batch ended. Then `loaded`, or `failed` (never sent, or refused).
OPEN_STATES = ("intent", "submitting", "provisional", "submitted", "ended")

STATE_TABLES = """
-- One row per request of a partition, rebuilt whenever the partition runs.
CREATE TABLE IF NOT EXISTS batchpipe_requests (
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,   -- md5 of params: identical requests are sent once
    params JSON NOT NULL,
    input_chars BIGINT NOT NULL,
    key_values JSON                  -- the row's key, whatever its custom_id looks like
);
ALTER TABLE batchpipe_requests ADD COLUMN IF NOT EXISTS key_values JSON;
-- One row per batch create call, written BEFORE the call (state 'intent'), marked
-- 'submitting' right before the call goes out and updated with the batch id right after
-- it: a crash between the two is reconciled through the list endpoint, and a batch found
-- there is only 'provisional' until its results prove it (batchpipe_candidates).
CREATE TABLE IF NOT EXISTS batchpipe_batches (
    submission_id VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    batch_id VARCHAR,
    state VARCHAR NOT NULL,          -- see OPEN_STATES; then loaded | failed
    request_count BIGINT NOT NULL,
    model VARCHAR NOT NULL,
    estimated_usd DOUBLE,
    processing_status VARCHAR,
    succeeded BIGINT,
    errored BIGINT,
    canceled BIGINT,
    expired BIGINT,
    intent_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP,
    ended_at TIMESTAMP,
    loaded_at TIMESTAMP,
    error VARCHAR,
    estimated_low_usd DOUBLE,
    reserved_usd DOUBLE,
    actual_usd DOUBLE
);
-- Which request went out in which submission, under which custom_id on the wire: the
-- request's own custom_id and the submission's token (wire_id), so a results file proves
-- which submission it answers, even against a copy of the pipeline on the same API key.
CREATE TABLE IF NOT EXISTS batchpipe_batch_requests (
    submission_id VARCHAR NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    wire_id VARCHAR
);
ALTER TABLE batchpipe_batch_requests ADD COLUMN IF NOT EXISTS wire_id VARCHAR;
-- Batches upstream that may be an interrupted submission's (same size, created after its
-- intent, claimed by no submission here). None is ours until its results carry the
-- submission's wire ids: verdict stays NULL until then, and a foreign one is released,
-- never canceled (teams share API keys: it is someone else's).
CREATE TABLE IF NOT EXISTS batchpipe_candidates (
    submission_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    found_at TIMESTAMP NOT NULL,
    verdict VARCHAR                  -- NULL (unproven) | ours | foreign | released
);
-- Every result line ever downloaded: paid results are never thrown away.
CREATE TABLE IF NOT EXISTS batchpipe_results (
    pipeline VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    result_type VARCHAR NOT NULL,    -- succeeded | errored | canceled | expired
    text VARCHAR,
    stop_reason VARCHAR,
    model VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cache_creation_input_tokens BIGINT,
    cache_read_input_tokens BIGINT,
    cost_usd DOUBLE,
    standard_cost_usd DOUBLE,
    error_type VARCHAR,
    error_message VARCHAR,
    loaded_at TIMESTAMP NOT NULL,
    uncached_cost_usd DOUBLE
);
-- What each line would have cost at batch prices had its cache tokens been plain input.
ALTER TABLE batchpipe_results ADD COLUMN IF NOT EXISTS uncached_cost_usd DOUBLE;
-- Each batch's estimate, recorded with its intent; reserved_usd (the high end) counts
-- against the budgets until the batch's results are loaded and actual_usd replaces it.
ALTER TABLE batchpipe_batches ADD COLUMN IF NOT EXISTS estimated_low_usd DOUBLE;
ALTER TABLE batchpipe_batches ADD COLUMN IF NOT EXISTS reserved_usd DOUBLE;
ALTER TABLE batchpipe_batches ADD COLUMN IF NOT EXISTS actual_usd DOUBLE;
-- Requests a budget stopped from being sent at the partition's latest attempt.
CREATE TABLE IF NOT EXISTS batchpipe_skipped (
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    limit_name VARCHAR NOT NULL,     -- max_usd_per_run, max_usd_per_day or the variable
    limit_usd DOUBLE NOT NULL,
    limit_set_at VARCHAR NOT NULL,   -- the file:line:col that sets it, or environment
    skipped_at TIMESTAMP NOT NULL
);
-- Which pipeline each output table belongs to, one pipeline a table: written in the
-- transaction that creates the table, or that first writes a table adopted with
-- output.adopt_existing. Names compare case-insensitively, as DuckDB's do.
CREATE TABLE IF NOT EXISTS batchpipe_outputs (
    table_name VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,   -- UTC
    adopted BOOLEAN NOT NULL         -- true: it existed before batchpipe wrote to it
);
"""

# Views over the state tables, for people: what each request cost, and each partition.
VIEWS = """
-- For every request of a partition: the result that answers it (its latest success, else
-- its latest result), from which batch, at which attempt, by which model, at what cost.
CREATE OR REPLACE VIEW batchpipe_request_costs AS
WITH results AS (
    SELECT r.*, b.partition_date AS billed_partition,
           row_number() OVER (PARTITION BY r.pipeline, r.request_hash ORDER BY r.loaded_at,
                              r.batch_id) AS attempt
    FROM batchpipe_results r JOIN batchpipe_batches b USING (batch_id)
),
answers AS (
    SELECT pipeline, request_hash,
           arg_max(results, (result_type = 'succeeded', loaded_at)) AS a
    FROM results GROUP BY ALL
)
SELECT q.pipeline, q.partition_date, q.custom_id, q.key_values, q.request_hash,
       a.batch_id, a.attempt, a.model, coalesce(a.result_type, 'missing') AS result_type,
       a.billed_partition, a.cost_usd, a.standard_cost_usd, a.input_tokens, a.output_tokens,
       a.cache_creation_input_tokens, a.cache_read_input_tokens
FROM batchpipe_requests q LEFT JOIN (SELECT pipeline, request_hash, unnest(a) FROM answers) a
USING (pipeline, request_hash);
-- One row per partition: its estimate (the sum of its batches') next to what it was billed.
CREATE OR REPLACE VIEW batchpipe_costs AS
WITH requests AS (
    SELECT pipeline, partition_date, count(*) AS requests FROM batchpipe_requests GROUP BY ALL
),
sent AS (
    SELECT b.pipeline, b.partition_date, arg_max(b.model, b.intent_at) AS model,
           count(DISTINCT r.request_hash) AS sent_requests
    FROM batchpipe_batches b JOIN batchpipe_batch_requests r USING (submission_id)
    WHERE b.state <> 'failed' GROUP BY ALL
),
estimates AS (
    SELECT pipeline, partition_date, count(*) AS batches, min(intent_at) AS first_sent_at,
           sum(estimated_low_usd) AS estimated_low_usd,
           sum(estimated_usd) AS estimated_expected_usd,
           sum(reserved_usd) AS estimated_high_usd
    FROM batchpipe_batches WHERE state <> 'failed' GROUP BY ALL
),
billed AS (
    SELECT b.pipeline, b.partition_date, sum(r.cost_usd) AS actual_usd,
           sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens,
           sum(r.cache_creation_input_tokens) AS cache_write_tokens,
           sum(r.cache_read_input_tokens) AS cache_read_tokens,
           sum(r.standard_cost_usd) AS standard_usd,
           sum(coalesce(r.uncached_cost_usd, r.cost_usd)) AS uncached_usd,
           sum(r.cost_usd) FILTER (r.result_type = 'succeeded') AS answers_billed_usd
    FROM batchpipe_results r JOIN batchpipe_batches b USING (batch_id) GROUP BY ALL
),
answered AS (  -- what the partition's answers cost wherever they were bought
    SELECT pipeline, partition_date, sum(cost_usd) AS answers_usd
    FROM batchpipe_request_costs WHERE result_type = 'succeeded' GROUP BY ALL
)
SELECT q.pipeline, q.partition_date, s.model, q.requests,
       q.requests - coalesce(s.sent_requests, 0) AS reused,
       coalesce(e.batches, 0) AS batches, e.first_sent_at,
       e.estimated_low_usd, e.estimated_expected_usd, e.estimated_high_usd,
       coalesce(b.actual_usd, 0) AS actual_usd,
       coalesce(b.input_tokens, 0) AS input_tokens,
       coalesce(b.output_tokens, 0) AS output_tokens,
       coalesce(b.cache_write_tokens, 0) AS cache_write_tokens,
       coalesce(b.cache_read_tokens, 0) AS cache_read_tokens,
       coalesce(b.standard_usd, 0) AS standard_usd,
       coalesce(b.uncached_usd, 0) - coalesce(b.actual_usd, 0) AS caching_saved_usd,
       greatest(coalesce(a.answers_usd, 0) - coalesce(b.answers_billed_usd, 0), 0)
           AS reuse_saved_usd
FROM requests q
LEFT JOIN sent s USING (pipeline, partition_date)
LEFT JOIN estimates e USING (pipeline, partition_date)
LEFT JOIN billed b USING (pipeline, partition_date)
LEFT JOIN answered a USING (pipeline, partition_date);
"""


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


@contextlib.contextmanager
def connect(*, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is always closed, waiting a bounded time for another writer."""
    db = database()
    # DuckDB's own default is 80% of RAM, and its buffer pool keeps what it read; a run's
    # memory should not grow with the partition, so it is capped and DuckDB spills instead.
    memory = os.environ.get("BATCHPIPE_MEMORY_LIMIT", "512MB")
    # A query naming an https:// path or another format would make DuckDB download and
    # install an extension into ~/.duckdb: a pipeline file must not change the machine.
    settings = {"memory_limit": memory, "autoinstall_known_extensions": False}
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
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
                raise WarehouseError(
                    f"the DuckDB database {db} is locked by another process "
                    f"({_lock_holder(err)}); waited {LOCK_WAIT_SECONDS:.0f} s. Close that "
                    "process's connection (a notebook, a DuckDB shell, another run) or wait "
                    "for it to finish, then run again."
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        # DuckDB starts in the process's zone (TZ), which would decide the day a
        # TIMESTAMPTZ falls on and how it prints: a rerun from another shell would build
        # other requests. UTC until a partition's rows are read in its pipeline's zone
        # (plan.bind_date). ICU, which SET TimeZone needs, is built into the wheel; it
        # cannot go in `settings`, which DuckDB applies before it loads ICU.
        set_timezone(con, "UTC")
        if not read_only:
            con.execute(STATE_TABLES)
            con.execute(VIEWS)
        yield con
    finally:
        con.close()


def set_timezone(con: duckdb.DuckDBPyConnection, zone: str) -> None:
    """DuckDB's TimeZone for this connection: the day a TIMESTAMPTZ falls on (CAST to
    DATE), its text (CAST to VARCHAR, to_json) and how a DATE compares with it. A
    connection's cursors do not inherit it: they start in the process's zone again."""
    con.execute("SET TimeZone = '" + zone.replace("'", "''") + "'")


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


def shadow_missing_state_tables(con: duckdb.DuckDBPyConnection) -> None:
    """On a read-only connection to a database no run has written yet, stand in empty
    temporary state tables, so read-only commands (plan, status) work from the start."""
    existing = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    # Split without the comments: a `;` in one would cut its statement in two.
    for statement in re.sub(r"--[^\n]*", "", STATE_TABLES).split(";"):
        name = statement.split("IF NOT EXISTS")[-1].split("(")[0].strip()
        if "CREATE TABLE" in statement and name not in existing:
            con.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE"))
    if "batchpipe_costs" not in existing:
        con.execute(VIEWS.replace("CREATE OR REPLACE VIEW", "CREATE OR REPLACE TEMP VIEW"))


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
