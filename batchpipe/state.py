"""The run state: the `batchpipe_*` tables, and every statement batchpipe runs on them.

These tables are what makes a run recoverable and money traceable: each request of a
partition, each batch create call (recorded before and after it goes out), which request
went in which batch under which wire id, the batches upstream that may be an interrupted
create's, every result line ever paid for, the requests a budget stopped, and which
pipeline owns each output table. This module is their one owner: no other module writes
SQL against them. A statement here has a name that says what it records or reads; the
steps compose those names, and a change of schema is a change of this file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import duckdb

from batchpipe import warehouse
from batchpipe.pricing import CHARS_PER_TOKEN
from batchpipe.sqlcheck import sql_string

# A submission's states while its requests are in flight, in order: recorded (`intent`),
# create called with its outcome not yet known (`submitting`), a batch upstream that may
# be it, awaiting proof (`provisional`), its batch created (`submitted`), its batch ended
# (`ended`). Then `loaded`, or `failed` (never sent, or refused).
State = Literal["intent", "submitting", "provisional", "submitted", "ended", "loaded", "failed"]
OPEN_STATES: tuple[State, ...] = ("intent", "submitting", "provisional", "submitted", "ended")
UNSENT_STATES: tuple[State, ...] = ("intent", "submitting")  # no batch known; maybe sent
# A candidate batch's verdict: NULL (unproven), ours, foreign (its results answer other
# requests), released (another candidate proved ours) or gone (deleted upstream).
Verdict = Literal["ours", "foreign", "released", "gone"]
# errored_billing: errored because the credit ran out (results.py tells them apart); not
# billed, and not the request's fault: sent again, its sends counted apart.
ResultType = Literal["succeeded", "errored", "errored_billing", "canceled", "expired"]
HoldReason = Literal["rate_limit", "queue_cap", "canary"]
# result_status of a row a budget stopped from being sent (budget.py says why).
SKIPPED_STATUS = "skipped_budget"
assert set(OPEN_STATES) | {"loaded", "failed"} == set(get_args(State))

# name -> columns. CREATE TABLE IF NOT EXISTS, in this order; a read-only connection to a
# database no run has written yet gets them as empty TEMP tables (`shadow_missing`).
TABLES: dict[str, str] = {
    # One row per request of a partition, rebuilt whenever the partition runs.
    "batchpipe_requests": """
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,   -- md5 of params: identical requests are sent once
    params JSON NOT NULL,
    input_chars BIGINT NOT NULL,     -- what tokens are estimated from: the params' characters,
                                     -- each media token counted as CHARS_PER_TOKEN of them
    key_values JSON,                 -- the row's key, whatever its custom_id looks like
    media_tokens BIGINT,             -- estimated tokens of its images and documents
    media_bytes BIGINT               -- what its body gains when the media's base64 is put in
""",
    # One row per batch create call, written BEFORE the call (state 'intent'), marked
    # 'submitting' right before the call goes out and updated with the batch id right after
    # it: a crash between the two is reconciled through the list endpoint, and a batch found
    # there is only 'provisional' until its results prove it (batchpipe_candidates). Each
    # batch's estimate is recorded with its intent; reserved_usd (the high end) counts
    # against the budgets until its results are loaded and actual_usd replaces it.
    "batchpipe_batches": """
    submission_id VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    batch_id VARCHAR,
    state VARCHAR NOT NULL,          -- see State
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
    actual_usd DOUBLE,
    request_version VARCHAR          -- the request side it was sent under (versions.py)
""",
    # Which request went out in which submission, under which custom_id on the wire: the
    # request's own custom_id and the submission's token (wire_id), so a results file
    # proves which submission it answers, even against a copy of the pipeline on the same
    # API key.
    "batchpipe_batch_requests": """
    submission_id VARCHAR NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    wire_id VARCHAR
""",
    # Batches upstream that may be an interrupted submission's (same size, created after
    # its intent, claimed by no submission here). None is ours until its results carry the
    # submission's wire ids: verdict stays NULL until then, and a foreign one is released,
    # never canceled (teams share API keys: it is someone else's).
    "batchpipe_candidates": """
    submission_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    found_at TIMESTAMP NOT NULL,
    verdict VARCHAR                  -- NULL (unproven) or a Verdict
""",
    # Every result line ever downloaded: paid results are never thrown away.
    # uncached_cost_usd: what the line would have cost had its cache tokens been input.
    "batchpipe_results": """
    pipeline VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    result_type VARCHAR NOT NULL,    -- see ResultType
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
""",
    # The bytes of each distinct image or document a request names (media_build.py): a
    # request holds `bp-media:<sha256>` in their place, filled in when its batch's body is
    # written, so what is sent is what was hashed, whatever happened to the file since.
    "batchpipe_media": """
    sha256 VARCHAR NOT NULL,
    media_type VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL,
    width INTEGER,
    height INTEGER,
    pages INTEGER,
    tokens BIGINT,
    data BLOB NOT NULL,
    stored_at TIMESTAMP NOT NULL     -- UTC
""",
    # Files uploaded through the Files API (media.upload: files_api), one live upload a
    # content: reused by every request naming the content (`bp-file:<sha256>`) until it
    # expires or is found deleted upstream.
    "batchpipe_uploads": """
    sha256 VARCHAR NOT NULL,
    file_id VARCHAR NOT NULL,
    uploaded_at TIMESTAMP NOT NULL,  -- UTC
    expires_at TIMESTAMP,            -- UTC; NULL: never
    gone_at TIMESTAMP                -- UTC: found expired or deleted, not to be named again
""",
    # Requests a budget stopped from being sent at the partition's latest attempt.
    "batchpipe_skipped": """
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    custom_id VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    limit_name VARCHAR NOT NULL,     -- max_usd_per_run, max_usd_per_day or the variable
    limit_usd DOUBLE NOT NULL,
    limit_set_at VARCHAR NOT NULL,   -- the file:line:col that sets it, or environment
    skipped_at TIMESTAMP NOT NULL
""",
    # Which pipeline each output table belongs to, one pipeline a table: written in the
    # transaction that creates the table, or that first writes a table adopted with
    # output.adopt_existing. Names compare case-insensitively, as DuckDB's do.
    "batchpipe_outputs": """
    table_name VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,   -- UTC
    adopted BOOLEAN NOT NULL         -- true: it existed before batchpipe wrote to it
""",
    # Requests of a partition held back at its latest send, and why: the API's queue or
    # rate limit answered 429 (`rate_limit`), BATCHPIPE_MAX_QUEUED_REQUESTS would be passed
    # (`queue_cap`), or a canary batch goes first (`canary`). Held requests are recorded
    # (pending, or an intent known never sent), not failed: the next send, by a waiting
    # run or the sensor's, from retry_at on, sends them. One row a partition at most.
    "batchpipe_holds": """
    pipeline VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    reason VARCHAR NOT NULL,         -- see HoldReason
    message VARCHAR NOT NULL,        -- the API's own words, or batchpipe's
    requests BIGINT NOT NULL,
    held_at TIMESTAMP NOT NULL,      -- UTC
    retry_at TIMESTAMP NOT NULL      -- UTC: not sent again before (retry-after)
""",
    # One row that every intent's transaction updates first: on a DuckLake, two intents
    # (and the budget checks in them) committed at once then conflict, and the later one
    # runs again on a snapshot that holds the earlier one (take_turn).
    "batchpipe_turns": """
    name VARCHAR NOT NULL,
    turn BIGINT NOT NULL
""",
    # The SCHEMA_VERSION the tables and views were last brought up to (state.create).
    "batchpipe_schema": """
    version VARCHAR NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL
""",
}
# Columns added after a table's first release: a database an older batchpipe wrote gains
# them (NULL in its old rows) the first time a newer one opens it for writing.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("batchpipe_requests", "key_values", "JSON"),
    ("batchpipe_batch_requests", "wire_id", "VARCHAR"),
    ("batchpipe_results", "uncached_cost_usd", "DOUBLE"),
    ("batchpipe_batches", "estimated_low_usd", "DOUBLE"),
    ("batchpipe_batches", "reserved_usd", "DOUBLE"),
    ("batchpipe_batches", "actual_usd", "DOUBLE"),
    ("batchpipe_batches", "request_version", "VARCHAR"),
    ("batchpipe_requests", "media_tokens", "BIGINT"),
    ("batchpipe_requests", "media_bytes", "BIGINT"),
)

# Views over the state tables, for people: what each request cost, and each partition.
VIEWS: dict[str, str] = {
    # For every request of a partition: the result that answers it (its latest success,
    # else its latest result), from which batch, at which attempt, by which model, at what
    # cost.
    "batchpipe_request_costs": """
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
USING (pipeline, request_hash)
""",
    # One row per partition: its estimate (the sum of its batches') next to its bill.
    "batchpipe_costs": """
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
LEFT JOIN answered a USING (pipeline, partition_date)
""",
}


# The schema's fingerprint: it changes with any table, added column or view, and a
# database whose batchpipe_schema holds it needs nothing created.
SCHEMA_VERSION = hashlib.md5(repr((TABLES, ADDED_COLUMNS, VIEWS)).encode()).hexdigest()[:16]


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> Any:
    """The one value a statement returns (a count, a sum, a flag)."""
    (value,) = con.execute(sql, params).fetchone()
    return value


def _create_table(name: str, *, temp: bool = False) -> str:
    return f"CREATE {'TEMP ' if temp else ''}TABLE IF NOT EXISTS {name} ({TABLES[name]})"


def _create_view(name: str, *, temp: bool = False) -> str:
    return f"CREATE OR REPLACE {'TEMP ' if temp else ''}VIEW {name} AS {VIEWS[name]}"


def create(con: duckdb.DuckDBPyConnection) -> bool:
    """The state tables and views, created or brought up to date, once: a database whose
    batchpipe_schema holds this release's SCHEMA_VERSION is left alone (on a DuckLake,
    every DDL is a commit that races other writers'). Whether anything was made."""
    if schema_version(con) == SCHEMA_VERSION and not _missing_tables(con):
        return False
    for attempt in warehouse.transactions(con, "create batchpipe's state tables"):
        with attempt:
            for name in TABLES:
                con.execute(_create_table(name))
            for table, column, kind in ADDED_COLUMNS:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            for name in VIEWS:
                con.execute(_create_view(name))
            con.execute(
                "INSERT INTO batchpipe_turns SELECT 'send', 0 "
                "WHERE NOT EXISTS (SELECT 1 FROM batchpipe_turns)"
            )
            con.execute("DELETE FROM batchpipe_schema")
            con.execute("INSERT INTO batchpipe_schema VALUES (?, now())", [SCHEMA_VERSION])
    return True


def _missing_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """State tables the database lacks although its version is current (one dropped by
    hand, or by an older batchpipe's restore): those are made again."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = current_database() AND table_name LIKE 'batchpipe%'"
    ).fetchall()
    return set(TABLES) - {r[0] for r in rows}


def schema_version(con: duckdb.DuckDBPyConnection) -> str | None:
    """The SCHEMA_VERSION the database's state tables were last brought up to, or None."""
    try:
        row = con.execute("SELECT max(version) FROM batchpipe_schema").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0]


def connect(*, read_only: bool = False, lock_wait: float | None = None) -> warehouse.Connection:
    """The warehouse with its state tables: created when writing; on a read-only
    connection to a database no run has written yet, stood in by empty temporary ones,
    so read-only commands (plan, status, costs) work from the start. `lock_wait`: see
    warehouse.connect."""
    return warehouse.connect(
        read_only=read_only, prepare=shadow_missing if read_only else create, lock_wait=lock_wait
    )


def shadow_missing(con: duckdb.DuckDBPyConnection) -> None:
    existing = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_catalog = current_database()"
        ).fetchall()
    }
    for name in TABLES:
        if name not in existing:
            con.execute(_create_table(name, temp=True))
    if "batchpipe_costs" not in existing:
        for name in VIEWS:
            con.execute(_create_view(name, temp=True))


# --- requests ----------------------------------------------------------------------


def request_rows_sql(rows_sql: str) -> str:
    """batchpipe_requests' columns for a partition's rows (`rows_sql` gives custom_id,
    params and key_values; parameters: pipeline, date): the request hash is the md5 of the
    params' text, so identical requests share one answer."""
    return (
        "SELECT ?::VARCHAR AS pipeline, ?::DATE AS partition_date, custom_id, "
        "md5(CAST(params AS VARCHAR)) AS request_hash, params, "
        "length(CAST(params AS VARCHAR)) + "
        f"coalesce(media_tokens, 0) * {CHARS_PER_TOKEN} AS input_chars, key_values, "
        f"media_tokens, media_bytes FROM ({rows_sql})"
    )


def replace_requests(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, rows_sql: str
) -> None:
    """The partition's requests, rebuilt (inside the caller's transaction)."""
    con.execute(
        "DELETE FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
        [pipeline, date],
    )
    con.execute(
        "INSERT INTO batchpipe_requests (pipeline, partition_date, custom_id, request_hash, "
        f"params, input_chars, key_values, media_tokens, media_bytes) "
        f"{request_rows_sql(rows_sql)}",
        [pipeline, date],
    )


def requests_of(pipeline: str, date_sql: str) -> str:
    """A relation of a partition's requests; `date_sql` is a SQL expression of its date."""
    return (
        f"(SELECT * FROM batchpipe_requests WHERE pipeline = {sql_string(pipeline)} "
        f"AND partition_date = {date_sql})"
    )


def request_count(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> int:
    return int(
        _scalar(
            con,
            "SELECT count(*) FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
            [pipeline, date],
        )
    )


def ids_taken_by_other_dates(pipeline: str, date_sql: str) -> str:
    """The custom_ids an incremental source's other run dates have taken (a subquery)."""
    return (
        f"(SELECT custom_id FROM batchpipe_requests WHERE pipeline = {sql_string(pipeline)} "
        f"AND partition_date <> {date_sql})"
    )


# Errors worth sending again: the request was fine, the service was not.
RETRYABLE_ERRORS = ("api_error", "overloaded_error")


def pending_sql(requests: str = "batchpipe_requests") -> str:
    """The requests of a partition that still need sending, one per distinct request
    (identical rows share one answer): no succeeded result for the identical request
    anywhere in the pipeline's history, and either no result yet or a retryable one
    (expired, api_error, overloaded_error) with attempts left, or one errored for lack of
    credit (errored_billing) with credit resends left: those sends are counted apart, so
    a request gets max_attempts sends of its own and max_attempts resends after credit
    errors. invalid_request and other errors are final, and so is a cancel; requests in
    an open batch are not pending. `last_result` and `last_error` are the latest
    result's type and error message.
    `requests` holds the partition's requests (batchpipe_requests, or the dry run's own
    table). Parameters: see `pending_params`."""
    return f"""
WITH latest AS (
    SELECT request_hash,
           bool_or(result_type = 'succeeded') AS answered,
           arg_max(result_type, loaded_at) AS result_type,
           arg_max(error_type, loaded_at) AS error_type,
           arg_max(error_message, loaded_at) AS error_message,
           count(*) FILTER (result_type = 'errored_billing') AS unbilled
    FROM batchpipe_results WHERE pipeline = $pipeline GROUP BY request_hash
),
attempts AS (
    SELECT r.request_hash, count(*) AS sent
    FROM batchpipe_batch_requests AS r JOIN batchpipe_batches AS b USING (submission_id)
    WHERE b.pipeline = $pipeline AND b.state <> 'failed'
    GROUP BY r.request_hash
)
SELECT min(r.custom_id) AS custom_id, r.request_hash,
       any_value(r.input_chars) AS input_chars,
       any_value(strlen(CAST(r.params AS VARCHAR)) + coalesce(r.media_bytes, 0)) AS body_chars,
       any_value(l.result_type) AS last_result,
       any_value(l.error_message) AS last_error
FROM {requests} AS r
LEFT JOIN latest AS l USING (request_hash)
LEFT JOIN attempts AS a USING (request_hash)
WHERE r.pipeline = $pipeline AND r.partition_date = $date
  AND NOT coalesce(l.answered, false)
  AND (l.result_type IS NULL OR l.result_type IN ('expired', 'errored_billing')
       OR l.error_type IN {RETRYABLE_ERRORS})
  AND coalesce(a.sent, 0) - coalesce(l.unbilled, 0) < $max_attempts
  AND coalesce(l.unbilled, 0) <= $max_attempts
  AND r.request_hash NOT IN (  -- in flight: an open batch will answer it
      SELECT r2.request_hash
      FROM batchpipe_batch_requests AS r2 JOIN batchpipe_batches AS b2 USING (submission_id)
      WHERE b2.pipeline = $pipeline AND b2.state IN {OPEN_STATES}
  )
GROUP BY r.request_hash
"""


def pending_params(pipeline: str, date: dt.date, max_attempts: int) -> dict:
    return {"pipeline": pipeline, "date": date, "max_attempts": max_attempts}


def pending_size(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, max_attempts: int
) -> tuple[int, int]:
    """How many requests would be sent now, and their characters of params."""
    count, chars = con.execute(
        f"SELECT count(*), coalesce(sum(input_chars), 0) FROM ({pending_sql()})",
        pending_params(pipeline, date, max_attempts),
    ).fetchone()
    return int(count), int(chars)


def pending_unbilled(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, max_attempts: int
) -> tuple[int, str | None]:
    """Pending requests whose latest result errored for lack of credit (they wait for a
    person to add credit, not for the next round of retries), and the API's words."""
    count, message = con.execute(
        f"SELECT count(*), any_value(last_error) FROM ({pending_sql()}) "
        "WHERE last_result = 'errored_billing'",
        pending_params(pipeline, date, max_attempts),
    ).fetchone()
    return int(count), message


def pending_unskipped(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, max_attempts: int
) -> int:
    """Pending requests a budget did not stop: those are final until the limit is raised."""
    return int(
        _scalar(
            con,
            f"SELECT count(*) FROM ({pending_sql()}) AS p WHERE p.request_hash NOT IN "
            "(SELECT request_hash FROM batchpipe_skipped "
            "WHERE pipeline = $pipeline AND partition_date = $date)",
            pending_params(pipeline, date, max_attempts),
        )
    )


def pending_params_sample_sql(requests: str = "batchpipe_requests") -> str:
    """(params, input_chars) of each pending request: what a sample is drawn from."""
    return (
        f"SELECT r.params, r.input_chars FROM ({pending_sql(requests)}) AS p "
        f"JOIN {requests} AS r ON r.pipeline = $pipeline "
        "AND r.partition_date = $date AND r.custom_id = p.custom_id"
    )


# --- submissions -------------------------------------------------------------------


def open_submissions(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> list[tuple[str, str | None, State, int, dt.datetime]]:
    """(submission_id, batch_id, state, request_count, intent_at) of the partition's
    submissions still in flight, oldest first."""
    return con.execute(
        "SELECT submission_id, batch_id, state, request_count, intent_at FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND state IN ? ORDER BY intent_at",
        [pipeline, date, list(OPEN_STATES)],
    ).fetchall()


def stage_pending(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, max_attempts: int
) -> int:
    """The pending requests, numbered in custom_id order, in the temp table `pending`
    that the intents of one send are cut from; returns how many."""
    for attempt in warehouse.transactions(con, "stage the pending requests"):
        with attempt:  # one snapshot: `staged_known` is what `pending` was computed from
            con.execute(
                "CREATE OR REPLACE TEMP TABLE pending AS SELECT *, "
                f"row_number() OVER (ORDER BY custom_id) - 1 AS rn, NULL::BIGINT AS chunk "
                f"FROM ({pending_sql()})",
                pending_params(pipeline, date, max_attempts),
            )
            con.execute(
                "CREATE OR REPLACE TEMP TABLE staged_known AS SELECT submission_id "
                "FROM batchpipe_batches WHERE pipeline = ?",
                [pipeline],
            )
    count = _scalar(con, "SELECT count(*) FROM pending")
    return int(count)


def drop_pending(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP TABLE IF EXISTS pending")
    con.execute("DROP TABLE IF EXISTS staged_known")


def take_turn(con: duckdb.DuckDBPyConnection) -> None:
    """First in an intent's transaction: see batchpipe_turns."""
    con.execute("UPDATE batchpipe_turns SET turn = turn + 1 WHERE name = 'send'")


def _sent_since_staged(pipeline: str) -> str:
    """The request hashes that batches of the pipeline recorded since `pending` was staged
    hold (another partition's run, committed in between): not to be sent again here."""
    return (
        "SELECT request_hash FROM batchpipe_batch_requests WHERE submission_id IN ("
        "SELECT submission_id FROM batchpipe_batches WHERE pipeline = "
        f"{sql_string(pipeline)} AND state <> 'failed' "
        "AND submission_id NOT IN (SELECT submission_id FROM staged_known))"
    )


LINE_OVERHEAD = 128  # a line's bytes beside its params: {"custom_id":"<64 at most>","params":},


def cut_chunks(con: duckdb.DuckDBPyConnection, per_batch: int, max_bytes: int, now: int) -> int:
    """Number the first `now` staged requests into batches (`pending.chunk`) of at most
    `per_batch` requests and `max_bytes` of body, media's base64 included; returns how
    many batches. Requests are cut by count first; a batch of them too large is cut
    again by bytes, counted from its own first request: one starting past a multiple of
    `max_bytes` less the largest request begins the next one, so none passes
    `max_bytes`. (Counted from the partition's first request instead, every 250 MB of a
    partition split a batch that fit: 10 million rows went out as 122 batches, not 101.)"""
    largest = _scalar(con, "SELECT coalesce(max(body_chars), 0) FROM pending WHERE rn < ?", [now])
    room = max(max_bytes - int(largest) - LINE_OVERHEAD, 1)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE pending AS SELECT * EXCLUDE (start, by_count), "
        "CASE WHEN rn < $now THEN dense_rank() OVER (ORDER BY rn < $now DESC, by_count, "
        "start // $room) - 1 END AS chunk FROM (SELECT * EXCLUDE (chunk), "
        f"sum(body_chars + {LINE_OVERHEAD}) OVER (PARTITION BY rn // $per_batch ORDER BY rn) "
        f"- body_chars - {LINE_OVERHEAD} AS start, rn // $per_batch AS by_count FROM pending)",
        {"now": now, "room": room, "per_batch": per_batch},
    )
    return int(_scalar(con, "SELECT coalesce(max(chunk) + 1, 0) FROM pending"))


def chunk_start(con: duckdb.DuckDBPyConnection, chunk: int) -> int:
    """The number (rn) of a chunk's first request."""
    return int(_scalar(con, "SELECT min(rn) FROM pending WHERE chunk = ?", [chunk]))


def chunk_size(con: duckdb.DuckDBPyConnection, chunk: int) -> tuple[int, int]:
    """Requests and characters of params of one chunk of the staged requests."""
    count, chars = con.execute(
        "SELECT count(*), coalesce(sum(input_chars), 0) FROM pending WHERE chunk = ?",
        [chunk],
    ).fetchone()
    return int(count), int(chars)


def record_intent(
    con: duckdb.DuckDBPyConnection,
    *,
    submission_id: str,
    token: str,
    wire_id_sql: str,
    pipeline: str,
    date: dt.date,
    model: str,
    intent_at: dt.datetime,
    chunk: int,
    estimate: tuple[float, float, float] | None,
    request_version: str | None = None,
) -> int:
    """Record which staged requests the chunk's batch will hold, each under its wire id
    (`wire_id_sql`, a SQL expression of custom_id and the parameter `token`), and the
    submission as an 'intent' with its estimate (low, expected, high); returns its size.
    Call it inside the transaction that checked the budgets."""
    take_turn(con)
    raced = _scalar(
        con,
        "SELECT count(*) FROM batchpipe_batches WHERE pipeline = ? "
        "AND submission_id NOT IN (SELECT submission_id FROM staged_known)",
        [pipeline],
    )
    count = _scalar(
        con,
        "INSERT INTO batchpipe_batch_requests (submission_id, custom_id, request_hash, "
        f"wire_id) SELECT ?, custom_id, request_hash, {wire_id_sql} "
        "FROM pending WHERE chunk = ?"
        + (f" AND request_hash NOT IN ({_sent_since_staged(pipeline)})" if raced else ""),
        [submission_id, token, chunk],
    )
    con.execute("INSERT INTO staged_known VALUES (?)", [submission_id])
    if not count:  # another run took every request of the chunk first: nothing to record
        return 0
    low, expected, high = estimate if estimate else (None, None, None)
    con.execute(
        "INSERT INTO batchpipe_batches (submission_id, pipeline, partition_date, state, "
        "request_count, model, intent_at, estimated_low_usd, estimated_usd, reserved_usd, "
        "request_version) VALUES (?, ?, ?, 'intent', ?, ?, ?, ?, ?, ?, ?)",
        [
            submission_id,
            pipeline,
            date,
            count,
            model,
            intent_at,
            low,
            expected,
            high,
            request_version,
        ],
    )
    return int(count)


def write_body(con: duckdb.DuckDBPyConnection, submission_id: str, path: Path) -> int:
    """Write the submission's requests as the create call's JSON array (each
    `{"custom_id": <wire id>, "params": ...}`, in custom_id order) to `path`; returns how
    many: only requests still in the partition, so a rebuilt partition yields fewer than
    were recorded. DuckDB's COPY writes it in parallel, about ten times cheaper than
    fetching 100,000 lines into Python to join them."""
    escaped = str(path).replace("'", "''")
    (count,) = con.execute(
        "COPY (SELECT coalesce(b.wire_id, b.custom_id) AS custom_id, r.params "
        "FROM batchpipe_batch_requests b JOIN batchpipe_requests r "
        "ON r.custom_id = b.custom_id AND r.request_hash = b.request_hash "
        "JOIN batchpipe_batches s ON s.submission_id = b.submission_id "
        "AND r.pipeline = s.pipeline AND r.partition_date = s.partition_date "
        f"WHERE b.submission_id = ? ORDER BY r.custom_id) TO '{escaped}' "
        "(FORMAT json, ARRAY true)",
        [submission_id],
    ).fetchone()
    return int(count)


def set_state(con: duckdb.DuckDBPyConnection, submission_id: str, state: State) -> None:
    warehouse.write(
        con,
        "UPDATE batchpipe_batches SET state = ? WHERE submission_id = ?",
        [state, submission_id],
    )


def record_created(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    batch_id: str,
    created_at: dt.datetime,
    processing_status: str,
) -> None:
    warehouse.write(
        con,
        "UPDATE batchpipe_batches SET batch_id = ?, state = 'submitted', created_at = ?, "
        "processing_status = ? WHERE submission_id = ?",
        [batch_id, created_at, processing_status, submission_id],
    )


def record_failed(con: duckdb.DuckDBPyConnection, submission_id: str, error: str) -> None:
    """A submission that will never have a batch: refused, or dropped before sending."""
    warehouse.write(
        con,
        "UPDATE batchpipe_batches SET state = 'failed', error = ? WHERE submission_id = ?",
        [error, submission_id],
    )


def record_status(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    *,
    processing_status: str,
    counts: tuple[int, int, int, int],
    ended_at: dt.datetime | None,
) -> None:
    """A batch's counts (succeeded, errored, canceled, expired) as the API reports them;
    a submitted batch that has ended becomes 'ended'."""
    warehouse.write(
        con,
        "UPDATE batchpipe_batches SET processing_status = ?, succeeded = ?, errored = ?, "
        "canceled = ?, expired = ?, ended_at = ?, "
        "state = CASE WHEN ? AND state = 'submitted' THEN 'ended' ELSE state END "
        "WHERE submission_id = ?",
        [
            processing_status,
            *counts,
            ended_at,
            processing_status == "ended",
            submission_id,
        ],
    )


def result_lines_expected(con: duckdb.DuckDBPyConnection, submission_id: str) -> int:
    """The lines an ended batch's results file holds: one per request it counted."""
    expected = _scalar(
        con,
        "SELECT succeeded + errored + canceled + expired FROM batchpipe_batches "
        "WHERE submission_id = ?",
        [submission_id],
    )
    return int(expected)


def skipped_size(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> tuple[int, int]:
    """Requests a budget stopped at the partition's latest attempt, and their characters."""
    count, chars = con.execute(
        "SELECT count(*), coalesce(sum(s.input_chars), 0) FROM batchpipe_skipped k "
        "JOIN batchpipe_requests s USING (pipeline, partition_date, custom_id) "
        "WHERE k.pipeline = ? AND k.partition_date = ?",
        [pipeline, date],
    ).fetchone()
    return int(count), int(chars)


# --- candidates (batches upstream an interrupted create may have made) --------------


def claimed_batch_ids(con: duckdb.DuckDBPyConnection, submission_id: str) -> set[str]:
    """Batches that cannot be this submission's: claimed by any submission here, or
    already shown to be someone else's (or gone) for this one."""
    rows = con.execute(
        "SELECT batch_id FROM batchpipe_batches WHERE batch_id IS NOT NULL UNION ALL "
        "SELECT batch_id FROM batchpipe_candidates WHERE submission_id = ? "
        "AND verdict IN ('foreign', 'gone')",
        [submission_id],
    ).fetchall()
    return {r[0] for r in rows}


def hold_for_candidates(
    con: duckdb.DuckDBPyConnection, submission_id: str, batch_ids: Sequence[str], at: dt.datetime
) -> None:
    """Record the candidates and make the submission 'provisional', in one transaction."""
    for attempt in warehouse.transactions(con, "record the candidates"):
        with attempt:
            con.execute(
                "INSERT INTO batchpipe_candidates SELECT ?, unnest(?::VARCHAR[]), ?, NULL",
                [submission_id, list(batch_ids), at],
            )
            set_state(con, submission_id, "provisional")


def unproven_candidates(con: duckdb.DuckDBPyConnection, submission_id: str) -> list[str]:
    rows = con.execute(
        "SELECT batch_id FROM batchpipe_candidates WHERE submission_id = ? AND verdict IS NULL "
        "ORDER BY batch_id",
        [submission_id],
    ).fetchall()
    return [r[0] for r in rows]


def watched_batch_ids(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> list[str]:
    """The batches a partition waits on: its own, and the candidates of a provisional one."""
    rows = con.execute(
        "SELECT batch_id FROM batchpipe_batches WHERE pipeline = ? AND partition_date = ? "
        "AND state IN ('submitted', 'ended') UNION ALL "
        "SELECT c.batch_id FROM batchpipe_candidates c JOIN batchpipe_batches b "
        "USING (submission_id) WHERE b.pipeline = ? AND b.partition_date = ? "
        "AND b.state = 'provisional' AND c.verdict IS NULL",
        [pipeline, date, pipeline, date],
    ).fetchall()
    return sorted(r[0] for r in rows)


def wire_matches(
    con: duckdb.DuckDBPyConnection, lines_sql: str, path: Path, submission_id: str
) -> tuple[int, int, str | None]:
    """A results file's lines (`lines_sql` reads its custom_ids as `j`), how many answer
    the submission under their wire ids, and the custom_id of one that does not."""
    lines, ours, stray = con.execute(
        f"SELECT count(*), count(b.custom_id), any_value(j.custom_id) FILTER "
        f"(b.custom_id IS NULL) FROM {lines_sql} LEFT JOIN "
        "batchpipe_batch_requests b ON b.submission_id = ? "
        "AND coalesce(b.wire_id, b.custom_id) = j.custom_id",
        [str(path), submission_id],
    ).fetchone()
    return int(lines), int(ours), stray


def prove_ours(con: duckdb.DuckDBPyConnection, submission_id: str, batch_id: str) -> None:
    """The candidate is the submission's batch; the others are released."""
    warehouse.write(
        con,
        "UPDATE batchpipe_candidates SET verdict = CASE WHEN batch_id = ? THEN 'ours' "
        "ELSE 'released' END WHERE submission_id = ? AND verdict IS NULL",
        [batch_id, submission_id],
    )


def set_verdict(
    con: duckdb.DuckDBPyConnection, submission_id: str, batch_id: str, verdict: Verdict
) -> None:
    warehouse.write(
        con,
        "UPDATE batchpipe_candidates SET verdict = ? WHERE submission_id = ? AND batch_id = ?",
        [verdict, submission_id, batch_id],
    )


# --- results -------------------------------------------------------------------------


def insert_results(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    lines_sql: str,
    columns_sql: str,
    params: dict,
    submission_ids: Sequence[str],
) -> int:
    """Insert result lines, each matched to its request by wire id, never by order.

    `lines_sql` reads the lines as `j` with the submission of each file as `f`
    (f.submission_id, f.batch_id); `columns_sql` gives, from `j`, every column of
    batchpipe_results after custom_id and request_hash (result_type through
    uncached_cost_usd). `params` are lines_sql's; returns how many were inserted (a
    line its batch was not sent inserts nothing)."""
    loaded = _scalar(
        con,
        f"""
        INSERT INTO batchpipe_results
        SELECT $pipeline, f.batch_id, b.custom_id, b.request_hash, {columns_sql}
        FROM {lines_sql}
        JOIN batchpipe_batch_requests b
          ON b.submission_id = f.submission_id
         AND coalesce(b.wire_id, b.custom_id) = j.custom_id
        WHERE b.submission_id IN $submissions  -- these batches' rows, not the whole history
        """,
        {"pipeline": pipeline, "submissions": list(submission_ids), **params},
    )
    return int(loaded)


def loaded_among(con: duckdb.DuckDBPyConnection, submission_ids: Sequence[str]) -> set[str]:
    """Which of the submissions have their results in already."""
    rows = con.execute(
        "SELECT submission_id FROM batchpipe_batches WHERE state = 'loaded' AND submission_id IN ?",
        [list(submission_ids)],
    ).fetchall()
    return {r[0] for r in rows}


def mark_loaded(con: duckdb.DuckDBPyConnection, submission_ids: Sequence[str]) -> None:
    """The submissions' results are in: each now counts against the budgets at what it
    cost, not its reservation."""
    warehouse.write(
        con,
        "UPDATE batchpipe_batches b SET state = 'loaded', loaded_at = timezone('UTC', now()), "
        "actual_usd = (SELECT coalesce(sum(r.cost_usd), 0) FROM batchpipe_results r "
        "WHERE r.batch_id = b.batch_id AND r.batch_id IN (SELECT batch_id FROM "
        "batchpipe_batches WHERE submission_id IN $ids)) WHERE submission_id IN $ids",
        # The uncorrelated filter reaches the scan: only these batches' lines are summed,
        # not every result of the warehouse again for each batch loaded.
        {"ids": list(submission_ids)},
    )


def outcomes(con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]) -> dict[str, int]:
    """result_type -> lines, over the results of these batches."""
    rows = con.execute(
        "SELECT result_type, count(*) FROM batchpipe_results WHERE batch_id IN ? "
        "GROUP BY ALL ORDER BY ALL",
        [list(batch_ids) or [""]],
    ).fetchall()
    return dict(rows)


def answers_sql(reply_json_sql: str) -> str:
    """Two CTEs for the output rows of a partition: `req`, its requests (custom_id,
    request_hash, skipped: a budget stopped it), and `res`, each request's answer (its
    latest success, else its latest result) with `reply_json_sql`, an expression of its
    `text`, as reply_json. Parameters: pipeline, date, pipeline."""
    return f"""
        req AS (
            SELECT r.custom_id, r.request_hash, k.limit_name IS NOT NULL AS skipped
            FROM batchpipe_requests r LEFT JOIN batchpipe_skipped k
            USING (pipeline, partition_date, custom_id)
            WHERE r.pipeline = ? AND r.partition_date = ?
        ),
        res AS (  -- a request's answer: its latest success, else its latest result
            SELECT *, {reply_json_sql} AS reply_json FROM batchpipe_results WHERE rowid IN (
                SELECT arg_max(rowid, (result_type = 'succeeded', loaded_at))
                FROM batchpipe_results
                WHERE pipeline = ? AND request_hash IN (SELECT request_hash FROM req)
                GROUP BY request_hash
            )
        )"""


def output_token_history(
    con: duckdb.DuckDBPyConnection, pipeline: str, low: float, high: float, history: int
) -> tuple[int, float | None, float | None, float | None]:
    """Over the pipeline's latest `history` succeeded replies: how many, and the `low`
    quantile, the median and the `high` quantile of their output tokens."""
    return con.execute(
        f"""
        SELECT count(*), quantile_cont(output_tokens, {low}), median(output_tokens),
               quantile_cont(output_tokens, {high})
        FROM (SELECT output_tokens FROM batchpipe_results
              WHERE pipeline = ? AND result_type = 'succeeded'
              ORDER BY loaded_at DESC LIMIT {int(history)})
        """,
        [pipeline],
    ).fetchone()


def used_cache_within(con: duckdb.DuckDBPyConnection, pipeline: str, ttl: str) -> bool:
    """Whether a reply of the pipeline wrote or read its cache within `ttl` (5m or 1h)."""
    warm = _scalar(
        con,
        "SELECT count(*) > 0 FROM batchpipe_results WHERE pipeline = ? "
        "AND cache_creation_input_tokens + cache_read_input_tokens > 0 "
        "AND loaded_at > timezone('UTC', now()) - INTERVAL "
        f"{'1 hour' if ttl == '1h' else '5 minutes'}",
        [pipeline],
    )
    return bool(warm)


# --- budgets -------------------------------------------------------------------------

# What a batch counts against a budget: its actual cost once loaded, else what it reserved
# (the high end of its estimate); failed intents count nothing. Batches recorded by a
# batchpipe from before reservations existed count at their expected estimate.
COMMITTED = "coalesce(actual_usd, reserved_usd, estimated_usd, 0)"
Scope = Literal["run", "pipeline_day", "day"]


def committed_usd(
    con: duckdb.DuckDBPyConnection, scope: Scope, pipeline: str, date: dt.date, today: dt.date
) -> float:
    """What the batches a limit covers have cost or reserved so far: one partition
    (`run`), one pipeline on the UTC day `today`, or every pipeline on it."""
    where, params = {
        "run": ("pipeline = ? AND partition_date = ?", [pipeline, date]),
        "pipeline_day": ("pipeline = ? AND CAST(intent_at AS DATE) = ?", [pipeline, today]),
        "day": ("CAST(intent_at AS DATE) = ?", [today]),
    }[scope]
    usd = _scalar(
        con,
        f"SELECT coalesce(sum({COMMITTED}), 0) FROM batchpipe_batches "
        f"WHERE state <> 'failed' AND {where}",
        params,
    )
    return float(usd)


def record_skipped(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    date: dt.date,
    *,
    limit_name: str,
    limit_usd: float,
    limit_set_at: str,
    from_rn: int,
) -> int:
    """The staged requests from number `from_rn` on, recorded as stopped by the limit;
    returns how many."""
    return int(
        _scalar(
            con,
            "INSERT INTO batchpipe_skipped SELECT ?, ?, custom_id, request_hash, ?, ?, ?, "
            "timezone('UTC', now()) FROM pending WHERE rn >= ?",
            [pipeline, date, limit_name, limit_usd, limit_set_at, from_rn],
        )
    )


def clear_skipped(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> None:
    warehouse.write(
        con,
        "DELETE FROM batchpipe_skipped WHERE pipeline = ? AND partition_date = ?",
        [pipeline, date],
    )


# --- holds (requests kept back by a queue or rate limit, or behind a canary) -------


def record_hold(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    date: dt.date,
    *,
    reason: HoldReason,
    message: str,
    requests: int,
    held_at: dt.datetime,
    retry_at: dt.datetime,
) -> None:
    """The partition's hold, replacing any earlier one; `held_at` is when it began."""
    clear_hold(con, pipeline, date)
    con.execute(
        "INSERT INTO batchpipe_holds VALUES (?, ?, ?, ?, ?, ?, ?)",
        [pipeline, date, reason, message, requests, held_at, retry_at],
    )


def clear_hold(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> None:
    warehouse.write(
        con,
        "DELETE FROM batchpipe_holds WHERE pipeline = ? AND partition_date = ?",
        [pipeline, date],
    )


@dataclass(frozen=True)
class Hold:
    """A partition's row of batchpipe_holds: requests kept back at its latest send, why,
    since when and from when they go out again (naive UTC, as the table holds them)."""

    reason: HoldReason
    message: str
    requests: int
    held_at: dt.datetime
    retry_at: dt.datetime


def hold_of(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> Hold | None:
    row = con.execute(
        "SELECT reason, message, requests, held_at, retry_at FROM batchpipe_holds "
        "WHERE pipeline = ? AND partition_date = ?",
        [pipeline, date],
    ).fetchone()
    return Hold(*row) if row else None


def holds(con: duckdb.DuckDBPyConnection, names: list[str] | None) -> list[tuple]:
    """Every hold, oldest first: pipeline, partition, reason, message, requests, held_at,
    retry_at."""
    return con.execute(
        "SELECT pipeline, partition_date, reason, message, requests, held_at, retry_at "
        "FROM batchpipe_holds WHERE ($names IS NULL OR list_contains($names, pipeline)) "
        "ORDER BY held_at",
        {"names": names or None},
    ).fetchall()


def queued_upstream(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Over every pipeline of the warehouse: the batches not known to have ended (sent,
    or maybe sent), and their requests still processing as last polled. What
    BATCHPIPE_MAX_QUEUED_REQUESTS caps, and what a queue limit waits on."""
    batches, requests = con.execute(
        "SELECT count(*), coalesce(sum(request_count - coalesce(succeeded, 0) "
        "- coalesce(errored, 0) - coalesce(canceled, 0) - coalesce(expired, 0)), 0) "
        "FROM batchpipe_batches WHERE state IN ('submitting', 'provisional', 'submitted')"
    ).fetchone()
    return int(batches), int(requests)


# --- canary batches (a few requests of a new request side go first) -----------------


def version_batches(
    con: duckdb.DuckDBPyConnection, pipeline: str, version: str, date: dt.date | None
) -> list[tuple[str, str | None, State, int, dt.date]]:
    """(submission_id, batch_id, state, request_count, partition_date) of the pipeline's
    batches sent under a request version (of one partition, with `date`), oldest first."""
    return con.execute(
        "SELECT submission_id, batch_id, state, request_count, partition_date "
        "FROM batchpipe_batches "
        "WHERE pipeline = ? AND request_version = ? AND state <> 'failed' "
        "AND (?::DATE IS NULL OR partition_date = ?::DATE) ORDER BY intent_at",
        [pipeline, version, date, date],
    ).fetchall()


def error_summary(
    con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]
) -> tuple[int, int, list[tuple[str, int]]]:
    """Over these batches' loaded results: lines, lines with a final error (not one of
    RETRYABLE_ERRORS: those are the service's), and the most frequent of those errors'
    messages (at most three) with their counts."""
    final = f"result_type = 'errored' AND coalesce(error_type, '') NOT IN {RETRYABLE_ERRORS}"
    lines, errored = con.execute(
        f"SELECT count(*), count(*) FILTER ({final}) FROM batchpipe_results WHERE batch_id IN ?",
        [list(batch_ids) or [""]],
    ).fetchone()
    top = con.execute(
        "SELECT coalesce(error_type || ': ', '') || coalesce(error_message, '(no message)'), "
        f"count(*) FROM batchpipe_results WHERE batch_id IN ? AND {final} "
        "GROUP BY ALL ORDER BY 2 DESC, 1 LIMIT 3",
        [list(batch_ids) or [""]],
    ).fetchall()
    return int(lines), int(errored), [(m, int(n)) for m, n in top]


# --- a partition's summary, and the reports ----------------------------------------


def partition_batches(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> tuple[list[str], int, int, int, int, int, float]:
    """The partition's batch ids (oldest first) and, summed over them, requests,
    succeeded, errored, canceled, expired and the expected estimate."""
    row = con.execute(
        "SELECT list(batch_id ORDER BY intent_at), "
        "coalesce(sum(request_count), 0), coalesce(sum(succeeded), 0), "
        "coalesce(sum(errored), 0), coalesce(sum(canceled), 0), coalesce(sum(expired), 0), "
        "coalesce(sum(estimated_usd), 0) FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND batch_id IS NOT NULL",
        [pipeline, date],
    ).fetchone()
    return (list(row[0] or []), *(int(v) for v in row[1:6]), float(row[6]))


def partition_spend(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> tuple:
    """Over the partition's batches' results: input, output, cache write and cache read
    tokens, cost, standard cost, and the batch ids."""
    return con.execute(
        "SELECT coalesce(sum(r.input_tokens), 0), coalesce(sum(r.output_tokens), 0), "
        "coalesce(sum(r.cache_creation_input_tokens), 0), "
        "coalesce(sum(r.cache_read_input_tokens), 0), "
        "coalesce(sum(r.cost_usd), 0), coalesce(sum(r.standard_cost_usd), 0), "
        "list(DISTINCT b.batch_id ORDER BY b.batch_id) "
        "FROM batchpipe_batches b LEFT JOIN batchpipe_results r ON r.batch_id = b.batch_id "
        "WHERE b.pipeline = ? AND b.partition_date = ? AND b.batch_id IS NOT NULL",
        [pipeline, date],
    ).fetchone()


def partition_estimate(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> tuple[float, float, float]:
    """The partition's estimate, low, expected and high: the sum of its batches', as
    batchpipe_costs adds them up, without that view's pass over every result."""
    row = con.execute(
        "SELECT coalesce(sum(estimated_low_usd), 0), coalesce(sum(estimated_usd), 0), "
        "coalesce(sum(reserved_usd), 0) FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND state <> 'failed'",
        [pipeline, date],
    ).fetchone()
    return float(row[0]), float(row[1]), float(row[2])


def partition_bill(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> tuple[int, float, float]:
    """Result lines billed to the partition's batches, their cost and standard cost."""
    total, cost, standard = con.execute(
        "SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(standard_cost_usd), 0) "
        "FROM batchpipe_results WHERE batch_id IN (SELECT batch_id FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ?)",
        [pipeline, date],
    ).fetchone()
    return int(total), float(cost), float(standard)


def recent_batches(con: duckdb.DuckDBPyConnection, names: list[str] | None) -> list[tuple]:
    """The batches still open, and those of the last 7 days, newest first (at most 50):
    pipeline, partition, batch id (or '(not sent)'), state, requests, succeeded, errored,
    canceled, expired, intent_at, cost so far, expected estimate."""
    return con.execute(
        """
        SELECT b.pipeline, b.partition_date, coalesce(b.batch_id, '(not sent)'), b.state,
               b.request_count, coalesce(b.succeeded, 0), coalesce(b.errored, 0),
               coalesce(b.canceled, 0), coalesce(b.expired, 0), b.intent_at,
               coalesce(sum(r.cost_usd), 0), b.estimated_usd
        FROM batchpipe_batches b LEFT JOIN batchpipe_results r ON r.batch_id = b.batch_id
        WHERE ($names IS NULL OR list_contains($names, b.pipeline))
          AND (list_contains($open, b.state)
               OR b.intent_at > timezone('UTC', now()) - INTERVAL 7 DAY)
        GROUP BY ALL ORDER BY b.intent_at DESC LIMIT 50
        """,
        {"names": names or None, "open": list(OPEN_STATES)},
    ).fetchall()


def spending(
    con: duckdb.DuckDBPyConnection,
    group_sql: str,
    by: str,
    names: list[str] | None,
    since: dt.date | None,
) -> list[tuple]:
    """batchpipe_costs grouped by `group_sql` (named `by`): partitions, requests, reused,
    actual, expected estimate, standard, saved by batching, by caching and by reuse. A
    partition counts on the UTC day its first batch was sent (its run date if it sent
    nothing)."""
    return con.execute(
        f"""
        SELECT {group_sql} AS {by}, count(*), sum(requests), sum(reused),
               sum(actual_usd), coalesce(sum(estimated_expected_usd), 0),
               sum(standard_usd), sum(standard_usd) - sum(actual_usd),
               sum(caching_saved_usd), sum(reuse_saved_usd)
        FROM (SELECT *, coalesce(CAST(first_sent_at AS DATE), partition_date) AS day
              FROM batchpipe_costs)
        WHERE ($names IS NULL OR list_contains($names, pipeline))
          AND ($since IS NULL OR day >= $since)
        GROUP BY ALL ORDER BY 1
        """,
        {"names": names or None, "since": since},
    ).fetchall()


# --- output tables -------------------------------------------------------------------


def record_output_owner(
    con: duckdb.DuckDBPyConnection, table: str, pipeline: str, *, adopted: bool
) -> None:
    """Record the pipeline as the table's owner. A row left by a table since dropped
    (and now created again) is replaced: ownership follows the table."""
    con.execute("DELETE FROM batchpipe_outputs WHERE lower(table_name) = lower(?)", [table])
    con.execute(
        "INSERT INTO batchpipe_outputs VALUES (?, ?, timezone('UTC', now()), ?)",
        [table, pipeline, adopted],
    )


def output_owner(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str, bool] | None:
    """(pipeline, adopted) recorded for a table, or None."""
    try:
        return con.execute(
            "SELECT pipeline, adopted FROM batchpipe_outputs "
            "WHERE lower(table_name) = lower(?) ORDER BY created_at DESC LIMIT 1",
            [table],
        ).fetchone()
    except duckdb.CatalogException:  # a connection opened without batchpipe's state tables
        return None


def only_batches_of(con: duckdb.DuckDBPyConnection, table_sql: str, pipeline: str) -> bool:
    """Whether every batch id in the table (at least one) is a batch of this pipeline."""
    try:
        proven = _scalar(
            con,
            "SELECT count(*) > 0 AND bool_and(batch_id IN (SELECT batch_id FROM "
            "batchpipe_batches WHERE pipeline = ? AND batch_id IS NOT NULL)) "
            "FROM (SELECT DISTINCT CAST(batch_id AS VARCHAR) AS batch_id "
            f"FROM {table_sql} WHERE batch_id IS NOT NULL)",
            [pipeline],
        )
    except duckdb.CatalogException:  # no batchpipe_batches: nothing was ever sent here
        return False
    return bool(proven)


# --- progress (what a person sees while a partition waits; progress.py renders it) -----


def progress_batches(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> list[tuple]:
    """The partition's batches that went out (a batch id, not failed), oldest first:
    batch id, state, requests, processing status, succeeded, errored, canceled and expired
    as last polled, created_at (UTC), the expected estimate, and what its results cost
    once loaded (None before: progress prices it from the estimate)."""
    return con.execute(
        "SELECT batch_id, state, request_count, processing_status, coalesce(succeeded, 0), "
        "coalesce(errored, 0), coalesce(canceled, 0), coalesce(expired, 0), created_at, "
        "estimated_usd, CASE WHEN state = 'loaded' THEN coalesce(actual_usd, (SELECT "
        "sum(r.cost_usd) FROM batchpipe_results r WHERE r.batch_id = b.batch_id), 0) END "
        "FROM batchpipe_batches b WHERE pipeline = ? AND partition_date = ? "
        "AND batch_id IS NOT NULL AND state <> 'failed' ORDER BY intent_at",
        [pipeline, date],
    ).fetchall()


def open_partitions(
    con: duckdb.DuckDBPyConnection, names: list[str] | None
) -> list[tuple[str, dt.date]]:
    """(pipeline, partition) of every partition something is still waited on for, by
    date then name: a batch upstream not recorded as ended (submitted, or provisional: a
    candidate to prove), or a hold. What `batchpipe status --watch` shows."""
    rows = con.execute(
        "SELECT pipeline, partition_date FROM batchpipe_batches "
        "WHERE state IN ('submitted', 'provisional') "
        "AND ($names IS NULL OR list_contains($names, pipeline)) UNION "
        "SELECT pipeline, partition_date FROM batchpipe_holds "
        "WHERE $names IS NULL OR list_contains($names, pipeline) ORDER BY 2, 1",
        {"names": names or None},
    ).fetchall()
    return [(pipeline, day) for pipeline, day in rows]


# --- media ----------------------------------------------------------------------------


def media_bytes(con: duckdb.DuckDBPyConnection, sha256: str) -> tuple[str, bytes]:
    """(media_type, bytes) of a content batchpipe_media keeps."""
    row = con.execute(
        "SELECT media_type, data FROM batchpipe_media WHERE sha256 = ?", [sha256]
    ).fetchone()
    if row is None:
        raise KeyError(sha256)
    return row[0], bytes(row[1])


def files_needed(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, max_attempts: int
) -> list[str]:
    """The contents (sha256) that the partition's requests still to be sent name by file
    (`bp-file:<sha256>`): pending ones, and those of intents not yet sent."""
    rows = con.execute(
        f"""
        WITH unsent AS (
            SELECT request_hash FROM ({pending_sql()})
            UNION ALL
            SELECT r.request_hash FROM batchpipe_batch_requests r
            JOIN batchpipe_batches b USING (submission_id)
            WHERE b.pipeline = $pipeline AND b.partition_date = $date
              AND b.state IN {UNSENT_STATES}
        )
        SELECT DISTINCT unnest(regexp_extract_all(CAST(params AS VARCHAR),
                                                  'bp-file:([0-9a-f]{{64}})', 1)) AS sha256
        FROM batchpipe_requests
        WHERE pipeline = $pipeline AND partition_date = $date
          AND request_hash IN (SELECT request_hash FROM unsent)
        ORDER BY sha256
        """,
        pending_params(pipeline, date, max_attempts),
    ).fetchall()
    return [row[0] for row in rows]


def live_uploads(
    con: duckdb.DuckDBPyConnection, sha256s: Sequence[str], until: dt.datetime
) -> dict[str, str]:
    """sha256 -> file_id of each content's latest upload not known gone that lives
    past `until` (UTC)."""
    rows = con.execute(
        "SELECT sha256, arg_max(file_id, uploaded_at) FROM batchpipe_uploads "
        "WHERE sha256 IN (SELECT unnest(?)) AND gone_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > ?) GROUP BY sha256",
        [list(sha256s), until],
    ).fetchall()
    return dict(rows)


def live_upload(con: duckdb.DuckDBPyConnection, sha256: str) -> str | None:
    """The file_id a body names for a content now, or None."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return live_uploads(con, [sha256], now).get(sha256)


def record_upload(
    con: duckdb.DuckDBPyConnection,
    sha256: str,
    file_id: str,
    uploaded_at: dt.datetime,
    expires_at: dt.datetime | None,
) -> None:
    con.execute(
        "INSERT INTO batchpipe_uploads VALUES (?, ?, ?, ?, NULL)",
        [sha256, file_id, uploaded_at, expires_at],
    )


def mark_uploads_gone(con: duckdb.DuckDBPyConnection, file_ids: set[str], now: dt.datetime) -> None:
    con.execute(
        "UPDATE batchpipe_uploads SET gone_at = ? WHERE file_id IN (SELECT unnest(?))",
        [now, sorted(file_ids)],
    )
