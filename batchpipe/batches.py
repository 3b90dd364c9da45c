"""The Anthropic Message Batches client: split, submit, poll, download.

The create call has no idempotency key, and the SDK retries a failed POST by
default, which can make a duplicate batch that is paid twice. So create runs
with `max_retries=0`, an intent row is committed before it and the batch id
right after it, and any unknown outcome is reconciled through the list
endpoint before anything is sent again.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anthropic
import duckdb
import httpx2  # the SDK's HTTP library: a cut stream raises its errors, not the SDK's

from batchpipe import budget, estimates, warehouse
from batchpipe.errors import BatchApiError, unreachable_message
from batchpipe.failpoints import kill_point

MAX_REQUESTS_PER_BATCH = 100_000
MAX_BATCH_BYTES = 200 * 1024 * 1024  # the API allows 256 MB; keep room for the envelope
CREATE_ATTEMPTS = 4
DOWNLOAD_ATTEMPTS = 6
RECONCILE_SKEW = dt.timedelta(minutes=2)  # tolerated clock skew when matching batches
OPEN_STATES = ("submitting", "submitted", "ended")
BODY_SLICE = 10_000  # request lines fetched from DuckDB at a time
# How long a run waits out an API it cannot reach (or that answers 429/5xx) while polling
# or downloading; the batches carry on upstream meanwhile, and results keep 29 days.
API_PATIENCE_SECONDS = float(os.environ.get("BATCHPIPE_API_PATIENCE", "900"))
OUTAGE_MAX_DELAY = 30.0

Log = Callable[[str], None]
T = TypeVar("T")


def client() -> anthropic.Anthropic:
    """The SDK client: the real API with a key, else the emulator (started if need be)."""
    key = os.environ.get("ANTHROPIC_API_KEY")
    base_url = os.environ.get("ANTHROPIC_BASE_URL") or None
    if key:
        return anthropic.Anthropic(api_key=key, base_url=base_url)
    from batchpipe.emulator.launcher import ensure_emulator

    return anthropic.Anthropic(
        api_key="batchpipe-emulator", base_url=ensure_emulator(announce=False)
    )


def using_emulator() -> bool:
    return not os.environ.get("ANTHROPIC_API_KEY")


@dataclass(frozen=True)
class Spend:
    """How a partition's batches are priced and what they may spend: each batch's intent
    records its estimate, and is refused if its high end would pass a limit."""

    price: Callable[[int, int], estimates.Range]  # (requests, characters of params) -> USD
    limits: list[budget.Limit]


@dataclass(frozen=True)
class Submission:
    submission_id: str
    batch_id: str | None
    state: str
    request_count: int
    intent_at: dt.datetime


def open_submissions(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> list[Submission]:
    rows = con.execute(
        "SELECT submission_id, batch_id, state, request_count, intent_at FROM batchpipe_batches "
        "WHERE pipeline = ? AND partition_date = ? AND state IN ? ORDER BY intent_at",
        [pipeline, date, list(OPEN_STATES)],
    ).fetchall()
    return [Submission(*row) for row in rows]


def submit_partition(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    model: str,
    pending_sql: str,
    pending_params: dict,
    log: Log,
    max_requests: int = MAX_REQUESTS_PER_BATCH,
    betas: Sequence[str] = (),
    spend: Spend | None = None,
) -> int:
    """Send the partition's pending requests; return how many were sent now.

    Intents left by a killed run are finished first (found upstream, or sent);
    requests already in an open batch are not pending, so nothing goes twice.
    With `spend`, a batch whose reservation would pass a limit is not sent: it and the
    batches after it are recorded as skipped, the ones before it are sent, and then
    BudgetExceeded says which limit stopped what.
    """
    for sub in open_submissions(con, pipeline, date):
        if sub.state == "submitting":
            _finish_submission(con, api, sub, log, interrupted=True, betas=betas)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE pending AS SELECT *, "
        f"row_number() OVER (ORDER BY custom_id) - 1 AS rn FROM ({pending_sql})",
        pending_params,
    )
    budget.clear_skipped(con, pipeline, date)
    total = con.execute("SELECT count(*) FROM pending").fetchone()[0]
    if total == 0:
        return 0
    per_batch = _batch_size(con, min(max_requests, MAX_REQUESTS_PER_BATCH))
    chunks = (total + per_batch - 1) // per_batch

    def intent(chunk: int) -> Submission | budget.Refusal:
        return _record_intent(con, pipeline, date, model, per_batch, chunk, spend)

    # While one batch uploads, the next one's body is built on a second cursor: DuckDB and
    # the socket both run without the GIL. Its intent is recorded first, as always, so a
    # crash leaves at most two intents to reconcile, in the order they were recorded.
    sent = 0
    refused: budget.Refusal | None = None
    with ThreadPoolExecutor(max_workers=1) as builder:
        first = intent(0)
        if isinstance(first, budget.Refusal):
            refused = first
        else:
            sub, body = first, _body(con, first)
            for chunk in range(chunks):
                upcoming = None
                if chunk + 1 < chunks:
                    following = intent(chunk + 1)
                    if isinstance(following, budget.Refusal):
                        refused = following
                    else:
                        upcoming = (following, builder.submit(_body_on, con.cursor(), following))
                _finish_submission(con, api, sub, log, interrupted=False, betas=betas, body=body)
                sent += sub.request_count
                if upcoming is None:
                    break
                sub, body = upcoming[0], upcoming[1].result()
    con.execute("DROP TABLE pending")
    if refused is not None:  # only a `spend` refuses
        count, chars = con.execute(
            "SELECT count(*), coalesce(sum(s.input_chars), 0) FROM batchpipe_skipped k "
            "JOIN batchpipe_requests s USING (pipeline, partition_date, custom_id) "
            "WHERE k.pipeline = ? AND k.partition_date = ?",
            [pipeline, date],
        ).fetchone()
        refused_usd = spend.price(count, chars).high_usd
        raise budget.BudgetExceeded(budget.refused_message(refused, sent, count, refused_usd))
    return total


def _record_intent(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    date: dt.date,
    model: str,
    per_batch: int,
    chunk: int,
    spend: Spend | None = None,
) -> Submission | budget.Refusal:
    """Commit which pending requests the chunk's batch will hold, before it is sent, with
    its estimate; or, when its reservation would pass a limit, record it and every later
    chunk as skipped and return the refusal. One transaction: the limit is checked against
    what is committed at that instant, by this run or any other."""
    submission_id, intent_at = uuid.uuid4().hex, _now()
    with warehouse.transaction(con):
        estimate = None
        if spend is not None:
            count, chars = con.execute(
                "SELECT count(*), coalesce(sum(input_chars), 0) FROM pending WHERE rn // ? = ?",
                [per_batch, chunk],
            ).fetchone()
            estimate = spend.price(count, chars)
            refusal = budget.check(
                con, spend.limits, pipeline, date, estimate.high_usd, intent_at.date()
            )
            if refusal is not None:
                budget.record_skipped(
                    con,
                    pipeline,
                    date,
                    refusal,
                    "SELECT custom_id, request_hash FROM pending WHERE rn >= ?",
                    [per_batch * chunk],
                )
                return refusal
        count = con.execute(
            "INSERT INTO batchpipe_batch_requests "
            "SELECT ?, custom_id, request_hash FROM pending WHERE rn // ? = ?",
            [submission_id, per_batch, chunk],
        ).fetchone()[0]
        con.execute(
            "INSERT INTO batchpipe_batches (submission_id, pipeline, partition_date, state, "
            "request_count, model, intent_at, estimated_low_usd, estimated_usd, reserved_usd) "
            "VALUES (?, ?, ?, 'submitting', ?, ?, ?, ?, ?, ?)",
            [
                submission_id, pipeline, date, count, model, intent_at,
                *((estimate.low_usd, estimate.expected_usd, estimate.high_usd)
                  if estimate else (None, None, None)),
            ],
        )  # fmt: skip
    return Submission(submission_id, None, "submitting", count, intent_at)


def _batch_size(con: duckdb.DuckDBPyConnection, per_batch: int) -> int:
    """Halve the batch size until no batch's body exceeds the byte limit."""
    while per_batch > 1:
        biggest = con.execute(
            "SELECT coalesce(max(b), 0) FROM (SELECT sum(input_chars + 64) AS b FROM pending "
            "GROUP BY rn // ?)",
            [per_batch],
        ).fetchone()[0]
        if biggest <= MAX_BATCH_BYTES:
            break
        per_batch //= 2
    return per_batch


def _body_on(cursor: duckdb.DuckDBPyConnection, sub: Submission) -> tuple[int, bytes]:
    """`_body` on a cursor made for a worker thread, closed when done."""
    with cursor:
        return _body(cursor, sub)


def _body(con: duckdb.DuckDBPyConnection, sub: Submission) -> tuple[int, bytes]:
    """The create call's JSON for an intent, and how many requests it holds (fewer than
    recorded if the partition's requests were rebuilt since). DuckDB writes each
    request's line; they are fetched in slices and joined.
    (One string_agg of the whole body needed about five times its size at once.)"""
    cursor = con.execute(
        "SELECT '{\"custom_id\":' || to_json(r.custom_id) || ',\"params\":' "
        "|| CAST(r.params AS VARCHAR) || '}' "
        "FROM batchpipe_batch_requests b JOIN batchpipe_requests r "
        "ON r.custom_id = b.custom_id AND r.request_hash = b.request_hash "
        "JOIN batchpipe_batches s ON s.submission_id = b.submission_id "
        "AND r.pipeline = s.pipeline AND r.partition_date = s.partition_date "
        "WHERE b.submission_id = ? ORDER BY r.custom_id",
        [sub.submission_id],
    )
    count, parts = 0, []
    while rows := cursor.fetchmany(BODY_SLICE):
        count += len(rows)
        parts.append(",".join(row[0] for row in rows).encode())
    return count, b'{"requests":[' + b",".join(parts) + b"]}"


def _finish_submission(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    sub: Submission,
    log: Log,
    *,
    interrupted: bool,
    betas: Sequence[str] = (),
    body: tuple[int, bytes] | None = None,
) -> None:
    """Turn a recorded intent into exactly one batch upstream; `body` is `_body(sub)`
    when the caller built it already.

    An intent left by an earlier process (`interrupted`) may already have its
    batch upstream: look for it before sending. A fresh intent is sent at once;
    looking first would only risk adopting someone else's batch.
    """
    if interrupted:
        adopted = _reconcile(con, api, sub)
        if adopted is not None:
            log(f"found batch {adopted.id} upstream for an interrupted submission; not resent")
            _record_created(con, sub.submission_id, adopted)
            return
    count, content = body if body is not None else _body(con, sub)
    if count != sub.request_count:
        # The partition's requests were rebuilt (the file changed) before this intent was
        # sent, and nothing upstream matches it: drop it; the caller sends what is pending now.
        con.execute(
            "UPDATE batchpipe_batches SET state = 'failed', error = ? WHERE submission_id = ?",
            ["abandoned before sending: the partition's requests changed", sub.submission_id],
        )
        log(f"dropped an interrupted submission of {sub.request_count} requests never sent")
        return
    del body
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        kill_point("before_create")
        try:
            batch = _create(api, content, betas)
            kill_point("after_create")
        except anthropic.RateLimitError as err:
            _wait_before_retry(err, attempt, log)
            continue
        except anthropic.APIStatusError as err:
            if err.status_code < 500 and err.status_code not in (408, 409):
                _record_failed(con, sub.submission_id, err)
                raise BatchApiError(
                    f"the Batches API refused the batch ({err.status_code}): {_api_message(err)}"
                ) from None
            outcome = err
        except anthropic.APIConnectionError as err:
            outcome = err
        else:
            _record_created(con, sub.submission_id, batch)
            log(f"submitted batch {batch.id} with {sub.request_count} requests")
            return
        # The create may or may not have reached the API: look before sending again.
        adopted = _reconcile(con, api, sub)
        if adopted is not None:
            _record_created(con, sub.submission_id, adopted)
            log(f"submitted batch {adopted.id} (confirmed through the list endpoint)")
            return
        log(f"create failed ({type(outcome).__name__}); no batch upstream, retrying")
        time.sleep(min(2**attempt, 30))
    raise BatchApiError(
        f"could not create a batch after {CREATE_ATTEMPTS} attempts; nothing was submitted. "
        "Run again to retry."
    )


def _create(
    api: anthropic.Anthropic, content: bytes, betas: Sequence[str]
) -> anthropic.types.messages.MessageBatch:
    """`messages.batches.create` with a body DuckDB already wrote as JSON.

    The SDK's `create` deep-copies and re-encodes a list of dicts: 6 s for 100k
    structured requests, against 0.1 s to send the bytes through the same client.
    No retries: a retried create can make a second, paid batch.
    """
    return api.with_options(max_retries=0).post(
        "/v1/messages/batches",
        content=content,
        cast_to=anthropic.types.messages.MessageBatch,
        options={"headers": {"anthropic-beta": ",".join(betas)}} if betas else {},
    )


def _reconcile(
    con: duckdb.DuckDBPyConnection, api: anthropic.Anthropic, sub: Submission
) -> anthropic.types.messages.MessageBatch | None:
    """A batch upstream that matches this intent and that no submission has claimed.

    The API keeps no client metadata on a batch, so the match is by size and by
    creation after the intent was recorded. If a foreign batch ever matched, the
    results loader refuses it (its custom_ids are not ours) before loading anything.
    """
    known = {r[0] for r in con.execute("SELECT batch_id FROM batchpipe_batches").fetchall()}
    since = sub.intent_at.replace(tzinfo=dt.UTC) - RECONCILE_SKEW
    matches = []
    for batch in api.messages.batches.list(limit=100):
        if batch.created_at < since:
            break  # newest first: everything after this is older
        counts = batch.request_counts
        total = (
            counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
        )
        if batch.id not in known and total == sub.request_count:
            matches.append(batch)
    if len(matches) > 1:
        raise BatchApiError(
            f"{len(matches)} unclaimed batches upstream could belong to interrupted submission "
            f"{sub.submission_id}: {', '.join(b.id for b in matches)}. Cancel the extra ones "
            "(or delete them once ended) and run again."
        )
    return matches[0] if matches else None


def _record_created(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    batch: anthropic.types.messages.MessageBatch,
) -> None:
    con.execute(
        "UPDATE batchpipe_batches SET batch_id = ?, state = 'submitted', created_at = ?, "
        "processing_status = ? WHERE submission_id = ?",
        [batch.id, _naive(batch.created_at), batch.processing_status, submission_id],
    )


def _record_failed(
    con: duckdb.DuckDBPyConnection, submission_id: str, err: anthropic.APIStatusError
) -> None:
    con.execute(
        "UPDATE batchpipe_batches SET state = 'failed', error = ? WHERE submission_id = ?",
        [_api_message(err), submission_id],
    )


class Outage:
    """Rides out an API that is down for a while, for calls that are safe to repeat.

    The SDK retries a failed call twice within about two seconds; an API restarting, a
    network blip or a run of 529s lasts longer, and a run that dies of it leaves its
    batches to finish upstream with nobody waiting. Retrieving a batch or downloading
    its results changes nothing upstream, so they are simply tried again, with a growing
    delay, for at most `patience` seconds from the first failure. A create is never
    passed through here: a repeated create can make a second, paid batch.
    """

    def __init__(self, api: anthropic.Anthropic, log: Log, patience: float | None = None):
        self.api, self.log = api, log
        self.patience = API_PATIENCE_SECONDS if patience is None else patience
        self.since: float | None = None
        self.delay = 1.0

    def call(self, fn: Callable[[], T], doing: str) -> T:
        while True:
            try:
                result = fn()
            except (anthropic.APIConnectionError, anthropic.APIStatusError) as err:
                if not _transient(err):
                    raise
                self._wait(err, doing)
                continue
            if self.since is not None:
                down = time.monotonic() - self.since
                self.log(f"the Batches API answers again after {down:.0f} s; carrying on")
                self.since, self.delay = None, 1.0
            return result

    def _wait(self, err: anthropic.APIError, doing: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.log(
                f"the Batches API is unavailable while {doing} ({self._reason(err)}); "
                f"the batches go on upstream, so this run tries again for up to "
                f"{self.patience:.0f} s (BATCHPIPE_API_PATIENCE)"
            )
        left = self.since + self.patience - now
        if left <= 0:
            raise BatchApiError(
                f"the Batches API was unavailable for {now - self.since:.0f} s while {doing} "
                f"({self._reason(err)}); gave up after BATCHPIPE_API_PATIENCE="
                f"{self.patience:.0f} s. The batches go on upstream and keep their results "
                "29 days: run the same command again once it answers; nothing is sent twice"
            ) from None
        time.sleep(min(self.delay, left))
        self.delay = min(self.delay * 2, OUTAGE_MAX_DELAY)

    def _reason(self, err: anthropic.APIError) -> str:
        if isinstance(err, anthropic.APIStatusError):
            return f"{err.status_code}: {_api_message(err)}"
        return unreachable_message(self.api, err)


def _transient(err: anthropic.APIError) -> bool:
    """Unreachable, timed out, rate limited (not a spend limit: those are subclasses),
    or a server error: worth trying again. A 4xx about the request itself is not."""
    if isinstance(err, anthropic.APIConnectionError):
        return True
    status = getattr(err, "status_code", 0)
    return status >= 500 or status == 408 or type(err) is anthropic.RateLimitError


def poll(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    outage: Outage | None = None,
) -> list[anthropic.types.messages.MessageBatch]:
    """Retrieve every submitted batch of the partition once and record its counts; with
    `outage`, a retrieve that cannot reach the API is tried again (see Outage)."""
    seen = []
    for sub in open_submissions(con, pipeline, date):
        if sub.state == "submitted":
            retrieve = functools.partial(api.messages.batches.retrieve, sub.batch_id)
            batch = retrieve() if outage is None else outage.call(retrieve, "polling batches")
            record_status(con, sub.submission_id, batch)
            seen.append(batch)
    return seen


def wait_until_ended(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    poll_seconds: float,
    log: Log,
) -> None:
    """Poll the partition's open batches until all have ended (the API has no webhooks),
    riding out an API that is unreachable for a while (see Outage)."""
    last_report = ""
    outage = Outage(api, log)
    while True:
        batches = poll(con, api, pipeline, date, outage)
        report = "; ".join(
            f"{b.id}: {b.processing_status} ({b.request_counts.processing} processing, "
            f"{b.request_counts.succeeded} succeeded, {b.request_counts.errored} errored)"
            for b in batches
        )
        if report and report != last_report:
            log(report)
            last_report = report
        if all(b.processing_status == "ended" for b in batches):
            return
        time.sleep(poll_seconds)


def cancel(
    con: duckdb.DuckDBPyConnection, api: anthropic.Anthropic, pipeline: str, date: dt.date
) -> list[str]:
    """Ask the API to cancel the partition's batches that are still processing."""
    canceled = []
    for sub in open_submissions(con, pipeline, date):
        if sub.state == "submitted":
            batch = api.messages.batches.cancel(sub.batch_id)
            record_status(con, sub.submission_id, batch)
            canceled.append(batch.id)
    return canceled


def record_status(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    batch: anthropic.types.messages.MessageBatch,
) -> None:
    c = batch.request_counts
    ended = batch.processing_status == "ended"
    con.execute(
        "UPDATE batchpipe_batches SET processing_status = ?, succeeded = ?, errored = ?, "
        "canceled = ?, expired = ?, ended_at = ?, "
        "state = CASE WHEN ? AND state = 'submitted' THEN 'ended' ELSE state END "
        "WHERE submission_id = ?",
        [
            batch.processing_status,
            c.succeeded,
            c.errored,
            c.canceled,
            c.expired,
            _naive(batch.ended_at) if batch.ended_at else None,
            ended,
            submission_id,
        ],
    )


def download_results(
    api: anthropic.Anthropic, batch_id: str, expected_lines: int, log: Log = print
) -> Path:
    """Stream a batch's results to a file, complete or not at all.

    The file is written under a temporary name and renamed only once it holds
    one line per request, so a cut stream is never loaded as if whole; a cut or
    failed download is tried again from the start, a bounded number of times.
    """
    directory = warehouse.state_dir() / "results"
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{batch_id}.jsonl"
    if final.exists() and _line_count(final) == expected_lines:
        return final
    partial = final.with_suffix(".jsonl.part")
    problem = ""
    # An API that cannot be reached is waited out (Outage) without using up an attempt;
    # the attempts are for streams that start and then break.
    outage = Outage(api, log)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            outage.call(
                lambda: _stream_to(api, batch_id, partial),
                f"downloading the results of {batch_id}",
            )
        except (anthropic.APIError, httpx2.TransportError) as err:
            problem = f"{type(err).__name__}: {err}"
        else:
            lines = _line_count(partial)
            if lines == expected_lines:
                partial.replace(final)
                return final
            problem = f"the stream was cut short: {lines} of {expected_lines} lines"
        log(f"downloading the results of {batch_id} failed ({problem}); attempt {attempt}")
        time.sleep(min(2**attempt * 0.25, 10))
    raise BatchApiError(
        f"could not download the results of {batch_id} after {DOWNLOAD_ATTEMPTS} attempts "
        f"({problem}). They stay upstream for 29 days: run again to retry."
    )


def _stream_to(api: anthropic.Anthropic, batch_id: str, path: Path) -> None:
    with (
        api.messages.batches.with_streaming_response.results(batch_id) as response,
        path.open("wb") as out,
    ):
        for chunk in response.iter_bytes():
            out.write(chunk)
            kill_point("mid_download")
        out.flush()
        os.fsync(out.fileno())


def _line_count(path: Path) -> int:
    """Lines in a JSONL file, counting a last line without its newline."""
    count = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _wait_before_retry(err: anthropic.APIStatusError, attempt: int, log: Log) -> None:
    retry_after = err.response.headers.get("retry-after")
    delay = float(retry_after) if retry_after and retry_after.isdigit() else 2.0**attempt
    log(f"rate limited by the Batches API; waiting {delay:.0f} s")
    time.sleep(min(delay, 60))


def _api_message(err: anthropic.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    inner = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    return str(inner.get("message") or err.message)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _naive(value: dt.datetime) -> dt.datetime:
    """DuckDB TIMESTAMP columns hold UTC without a zone."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)
