"""The requests of one partition: built in one SQL statement, checked, and what is pending.

Requests are rebuilt whenever a partition runs; a request identical to one already
answered (same params, same hash) is not sent again, and one in an open batch is not
pending. Everything here is SQL over the partition's rows: no Python loop per row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb

from batchpipe import estimates, media_build, models, pricing, state, warehouse
from batchpipe.loader import PipelineFile
from batchpipe.pipeline_sql import (
    CUSTOM_ID_PATTERN,
    RUN_DATE,
    Resolved,
    bind_date,
    register_templates,
)
from batchpipe.sqlcheck import quote_ident


@dataclass(frozen=True)
class RequestsSummary:
    requests: int
    estimate: estimates.Estimate  # of the requests to send: characters only, no API yet
    media_files: int = 0  # distinct images and documents the rows name (files, BLOBs, URLs)
    media_tokens: int = 0  # their estimated input tokens over every request

    @property
    def to_send(self) -> int:
        return self.estimate.requests

    @property
    def reused(self) -> int:
        return self.requests - self.to_send


def build_requests(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date
) -> RequestsSummary:
    """Rebuild the partition's requests in one SQL statement, after checking its keys."""
    name = resolved.name
    register_templates(con, resolved)
    bind_date(con, date, resolved.file.pipeline.partitions.timezone)
    check_keys(con, resolved, date)
    try:
        with rendering(resolved):
            staged = media_build.stage(con, resolved, date, fetcher(resolved))
        for attempt in warehouse.transactions(con, "rebuild the partition's requests"):
            with attempt:
                if staged is not None:
                    media_build.store(con)
                with rendering(resolved):
                    state.replace_requests(con, name, date, rows_sql(resolved))
                # Inside the transaction: a refused partition keeps the requests it had.
                check_context(con, resolved, state.requests_of(name, RUN_DATE), date)
    finally:
        media_build.drop(con)
    requests = state.request_count(con, name, date)
    return RequestsSummary(
        requests=requests,
        estimate=estimate_pending(con, resolved.file, date),
        media_files=staged.files + staged.urls if staged else 0,
        media_tokens=staged.tokens if staged else 0,
    )


def rows_sql(resolved: Resolved) -> str:
    """custom_id, params, key_values, and what media adds, of each of the partition's
    rows (a pipeline with media blocks reads media_build's staging)."""
    tokens, grows = (
        ("mb.media_tokens", "mb.media_bytes") if resolved.media_blocks else ("NULL", "NULL")
    )
    return f"""
        SELECT {resolved.custom_id_sql()} AS custom_id,
               {resolved.params_sql()} AS params,
               {resolved.key_values_sql()} AS key_values,
               CAST({tokens} AS BIGINT) AS media_tokens, CAST({grows} AS BIGINT) AS media_bytes
        FROM ({resolved.partition_rows_sql()}) AS s{resolved.media_join_sql()}
    """


def fetcher(resolved: Resolved) -> Callable[[str], bytes] | None:
    """How media.fetch_urls downloads a URL's bytes; None when URLs go as URLs."""
    if not resolved.file.pipeline.media.fetch_urls:
        return None

    def fetch(url: str) -> bytes:
        import httpx2

        response = httpx2.get(url, timeout=60, follow_redirects=True)
        response.raise_for_status()
        return response.content

    return fetch


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
    info = models.model(request.model)
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


def pending_params(pf: PipelineFile, date: dt.date) -> dict:
    return state.pending_params(pf.pipeline.name, date, pf.pipeline.request.max_attempts)


def pending_size(
    con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date
) -> tuple[int, int]:
    """How many requests would be sent now, and their characters of params."""
    return state.pending_size(con, pf.pipeline.name, date, pf.pipeline.request.max_attempts)


def estimate_pending(
    con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date
) -> estimates.Estimate:
    """What the requests pending now would cost, from characters only: counting tokens
    needs the API, which the send step asks."""
    count, chars = pending_size(con, pf, date)
    return estimates.for_pending(con, pf.pipeline.name, pf.pipeline.request, None, (), count, chars)


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
