"""The Anthropic Message Batches client: split, submit, poll, download.

The create call has no idempotency key, and the SDK retries a failed POST by
default, which can make a duplicate batch that is paid twice. So create runs
with `max_retries=0`, an intent row is committed before it and the batch id
right after it, and any unknown outcome is reconciled through the list
endpoint before anything is sent again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anthropic
import duckdb
import httpx2  # the SDK's HTTP library: a cut stream raises its errors, not the SDK's

from batchpipe import budget, estimates, media_send, progress, state, warehouse
from batchpipe.api import API_PATIENCE_SECONDS, Outage, api_message, retry_after
from batchpipe.errors import BatchApiError
from batchpipe.failpoints import kill_point
from batchpipe.state import State

MAX_REQUESTS_PER_BATCH = 100_000
# The API takes 256 MB a batch; bodies are cut at 250 MB of UTF-8 (media's base64 included,
# each line's envelope counted), the rest a margin. BATCHPIPE_MAX_BATCH_BYTES lowers it (a
# test's emulator enforcing a small limit, or a proxy with its own).
MAX_BATCH_BYTES = 250_000_000
CREATE_ATTEMPTS = 4
DOWNLOAD_ATTEMPTS = 6
RECONCILE_SKEW = dt.timedelta(minutes=2)  # tolerated clock skew when matching batches
# On the wire a request's custom_id is `<its custom_id>-<the submission's token>`, so every
# line of a results file says which submission it answers: a batch sent by another
# installation on the same API key (even a copy of this pipeline, with the same keys)
# never passes for ours. A custom_id too long to leave room goes as h-<its md5>.
TOKEN_LENGTH = 12
WIRE_ID_SQL = (
    f"CASE WHEN length(custom_id) <= {64 - 1 - TOKEN_LENGTH} THEN custom_id "
    "ELSE 'h-' || md5(custom_id) END || '-' || ?"
)
LIST_PAGE = 100  # batches per list call, the endpoint's largest page
FIRST_POLL_SECONDS = 0.1  # the wait's first pause; each next one doubles, to poll_seconds
# How a 400 for a custom spend limit begins: "... specified workspace API usage limits" or,
# for an organization's, "... specified API usage limits" (research: Limits of the service).
WORKSPACE_LIMIT_WORDS = (
    "You have reached your specified workspace API usage limits",
    "You have reached your specified API usage limits",
)
# A retrieve right after a create can answer 404 for a short while: how long one of our
# own batches is asked again before the list endpoint decides (see _retrieve_own).
NOT_FOUND_PATIENCE_SECONDS = float(os.environ.get("BATCHPIPE_NOT_FOUND_PATIENCE", "120"))
MAX_QUEUED_VARIABLE = "BATCHPIPE_MAX_QUEUED_REQUESTS"
OPEN_BATCHES_MAX_AGE = dt.timedelta(hours=25)  # a batch ends (or expires) within 24 hours

Log = Callable[[str], None]


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
    state: State
    request_count: int
    intent_at: dt.datetime


def open_submissions(
    con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date
) -> list[Submission]:
    return [Submission(*row) for row in state.open_submissions(con, pipeline, date)]


@dataclass(frozen=True)
class Send:
    """What one send of a partition's pending requests needs to know."""

    pipeline: str
    date: dt.date
    model: str
    max_attempts: int  # a request is sent at most this many times
    max_requests: int = MAX_REQUESTS_PER_BATCH
    betas: Sequence[str] = ()
    spend: Spend | None = None
    poll_seconds: float = 60.0  # how soon a hold without retry-after is tried again
    # At most this many new requests go out now (a canary), the rest held for `held_why`.
    limit: int | None = None
    held_why: str = ""
    request_version: str | None = None  # recorded on each batch: what a canary proves
    # Run on the send's connection after each create: a partition of many batches can
    # load those that ended while the rest were still being sent.
    between: Callable[[duckdb.DuckDBPyConnection], object] | None = None


class Held(Exception):
    """Sending stopped short and nothing is lost: a queue or rate limit answered 429 (its
    submission stays an intent, known never created), or the next batch would pass
    BATCHPIPE_MAX_QUEUED_REQUESTS. What is held is recorded; the next send from
    `retry_after` seconds on sends it."""

    def __init__(self, reason: state.HoldReason, message: str, retry_after: float) -> None:
        self.reason, self.message, self.retry_after = reason, message, retry_after
        super().__init__(message)


def max_queued_requests() -> int | None:
    """BATCHPIPE_MAX_QUEUED_REQUESTS: the most requests this warehouse keeps upstream
    unprocessed at once, across its pipelines; unset, the API's queue limit decides."""
    raw = os.environ.get(MAX_QUEUED_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BatchApiError(
            f"{MAX_QUEUED_VARIABLE}={raw!r}: expected a whole number of requests, at least 1 "
            "(or unset it to let the API's queue limit decide); nothing was sent"
        )
    return int(raw)


def submit_partition(
    con: duckdb.DuckDBPyConnection, api: anthropic.Anthropic, send: Send, log: Log
) -> int:
    """Send the partition's pending requests; return how many went out.

    Intents left by a killed run are finished first (found upstream, or sent);
    requests already in an open batch are not pending, so nothing goes twice.
    With `send.spend`, a batch whose reservation would pass a limit is not sent: it and
    the batches after it are recorded as skipped, the ones before it are sent, and then
    BudgetExceeded says which limit stopped what. A queue or rate limit (or the
    warehouse's own cap) holds the rest back: recorded in batchpipe_holds, not failed.
    """
    check_state_writable()
    cap = max_queued_requests()
    sent, refused, held = 0, None, None
    try:
        sent = _finish_interrupted(con, api, send, cap, log)
        total = state.stage_pending(con, send.pipeline, send.date, send.max_attempts)
        budget.clear_skipped(con, send.pipeline, send.date)
        now = total if send.limit is None else min(total, send.limit)
        if now:
            per_batch = min(send.max_requests, MAX_REQUESTS_PER_BATCH, cap or now)
            chunks = state.cut_chunks(con, per_batch, max_batch_bytes(), now)
            more, refused, held = _send_chunks(con, api, send, chunks, cap, log)
            sent += more
        if held is None and refused is None and now < total:
            held = Held("canary", send.held_why, retry_after=0.0)
    except Held as err:
        held = err
    except SpendLimitReached as err:
        raise BatchApiError(_spend_limit_message(con, send, err)) from None
    finally:
        state.drop_pending(con)
    if held is not None:
        record_hold(con, send, held, log)
    else:
        state.clear_hold(con, send.pipeline, send.date)
    if refused is not None:  # only a `spend` refuses
        assert send.spend is not None
        count, chars = state.skipped_size(con, send.pipeline, send.date)
        refused_usd = send.spend.price(count, chars).high_usd
        raise budget.BudgetExceeded(budget.refused_message(refused, sent, count, refused_usd))
    return sent


def held_requests(con: duckdb.DuckDBPyConnection, send: Send) -> int:
    """What a partition has recorded and not sent: intents never created, and pending."""
    unsent = sum(
        s.request_count
        for s in open_submissions(con, send.pipeline, send.date)
        if s.state in state.UNSENT_STATES
    )
    return unsent + state.pending_size(con, send.pipeline, send.date, send.max_attempts)[0]


def record_hold(con: duckdb.DuckDBPyConnection, send: Send, held: Held, log: Log) -> None:
    """Record what is held and when to try again; or, when the API's limit refuses us and
    no batch of this warehouse is processing to make room, fail naming it (after a while:
    a requests-per-minute 429 passes by itself)."""
    requests = held_requests(con, send)
    earlier = state.hold_of(con, send.pipeline, send.date)
    since = earlier.held_at if earlier and earlier.reason == held.reason else _now()
    upstream, queued = state.queued_upstream(con)
    if held.reason == "rate_limit" and upstream == 0:
        waited = (_now() - since).total_seconds()
        # Nothing of ours will make room: past the API's patience the run names the limit.
        if waited >= API_PATIENCE_SECONDS:
            state.clear_hold(con, send.pipeline, send.date)
            raise BatchApiError(
                f"the Batches API refused the batches of {send.pipeline} {send.date} for "
                f"{waited:.0f} s ({held.message}) and no batch of this warehouse is "
                "processing to make room: the limit is used by others on this API key's "
                "organization, or one batch is larger than the queue takes (then lower "
                f"request.max_batch_requests). {requests} request(s) are held, recorded and "
                "not sent; run the same command again once there is room: each goes out once"
            )
    delay = max(held.retry_after or send.poll_seconds, 1.0)
    for attempt in warehouse.transactions(con, "record the hold"):
        with attempt:
            state.record_hold(
                con, send.pipeline, send.date, reason=held.reason, message=held.message,
                requests=requests, held_at=since, retry_at=_now() + dt.timedelta(seconds=delay),
            )  # fmt: skip
    log(
        f"held {requests} request(s) of {send.date}, recorded and not sent: {held.message}. "
        f"{upstream} batch(es) of this warehouse are processing ({queued} request(s)); "
        f"trying again in {delay:.0f} s"
    )


def _spend_limit_message(con: duckdb.DuckDBPyConnection, send: Send, err: SpendLimitReached) -> str:
    """What stopped, in the API's words, what went out before it and what is held."""
    batch_ids, requests, *_ = state.partition_batches(con, send.pipeline, send.date)
    held = held_requests(con, send)
    resumes = (
        " (a tier's monthly cap lifts at 00:00 UTC on the 1st of the next month)"
        if err.monthly
        else ""
    )
    return (
        f"the Batches API refused a batch of {send.pipeline} {send.date}: a spend limit was "
        f"reached ({err.api_words}). Sent before it: {requests} request(s) in "
        f"{len(batch_ids)} batch(es); held, recorded and not sent: {held} request(s). Once "
        f"the limit is lifted{resumes}, run the same command again: each held request goes "
        "out once"
    )


def _finish_interrupted(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    send: Send,
    cap: int | None,
    log: Log,
) -> int:
    """Intents an earlier run (or an earlier send held) recorded and did not finish:
    found upstream, or sent, within the warehouse's cap; returns the requests sent."""
    sent = 0
    for sub in open_submissions(con, send.pipeline, send.date):
        if sub.state in state.UNSENT_STATES:
            if sub.state == "intent":
                _check_room(con, cap, sub.request_count)
            sent += _finish_submission(
                con, api, sub, log, interrupted=sub.state == "submitting", betas=send.betas
            )
    return sent


def _check_room(con: duckdb.DuckDBPyConnection, cap: int | None, adding: int) -> None:
    """Raise Held when `adding` more requests would pass BATCHPIPE_MAX_QUEUED_REQUESTS;
    with nothing of ours upstream a batch always fits (batches are cut to the cap)."""
    if cap is None:
        return
    _, queued = state.queued_upstream(con)
    if queued and queued + adding > cap:
        raise Held(
            "queue_cap",
            f"{MAX_QUEUED_VARIABLE}={cap}: {queued} request(s) of this warehouse are queued "
            f"upstream, and the next batch adds {adding}",
            retry_after=0.0,
        )


def max_batch_bytes() -> int:
    """The most bytes one batch's body holds: MAX_BATCH_BYTES, or the smaller
    BATCHPIPE_MAX_BATCH_BYTES."""
    raw = os.environ.get("BATCHPIPE_MAX_BATCH_BYTES", "").strip()
    if not raw:
        return MAX_BATCH_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise BatchApiError(
            f"BATCHPIPE_MAX_BATCH_BYTES={raw!r}: expected a whole number of bytes; nothing was sent"
        )
    return min(int(raw), MAX_BATCH_BYTES)


def _send_chunks(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    send: Send,
    chunks: int,
    cap: int | None,
    log: Log,
) -> tuple[int, budget.Refusal | None, Held | None]:
    """Send the staged requests chunk by chunk (`state.cut_chunks`), each chunk's intent recorded
    first; returns the requests sent, the budget refusal that stopped the rest, if any,
    and the hold that stopped them, if any.

    While one batch uploads, the next one's body is built on a second cursor: DuckDB and
    the socket both run without the GIL. Its intent is recorded first, as always, so a
    crash leaves at most two intents to finish, in the order they were recorded."""

    def intent(chunk: int, in_flight: int) -> Submission | budget.Refusal:
        _check_room(con, cap, in_flight + state.chunk_size(con, chunk)[0])
        return _record_intent(con, send, chunk)

    sent = 0
    try:
        first = intent(0, 0)
    except Held as held:
        return sent, None, held
    if isinstance(first, budget.Refusal):
        return sent, first, None
    refused: budget.Refusal | None = None
    held: Held | None = None
    with ThreadPoolExecutor(max_workers=1) as builder:
        sub, body = first, _body(con, first)
        for chunk in range(chunks):
            upcoming = None
            if chunk + 1 < chunks:
                try:
                    following = intent(chunk + 1, sub.request_count)
                except Held as err:
                    held = err
                else:
                    if isinstance(following, budget.Refusal):
                        refused = following
                    else:
                        other = warehouse.cursor(con)
                        upcoming = (following, builder.submit(_body_on, other, following))
            try:
                sent += _finish_submission(
                    con, api, sub, log, interrupted=False, betas=send.betas, body=body
                )
            except Held as err:
                if upcoming is not None:
                    upcoming[1].result()  # the builder's cursor is done before returning
                return sent, refused, err
            if send.between is not None and upcoming is not None:
                send.between(con)
            if upcoming is None:
                break
            sub, body = upcoming[0], upcoming[1].result()
    return sent, refused, held


def check_state_writable() -> None:
    """Results are streamed to BATCHPIPE_STATE once a batch ends; a folder that cannot be
    written would fail a day later with the batch paid for, so it is tried before any create."""
    directory = warehouse.state_dir() / "results"
    probe = directory / f".writable-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BatchApiError(
            f"cannot write results under {directory} ({err.strerror}): set BATCHPIPE_STATE "
            "to a writable folder; nothing was sent"
        ) from None


def _record_intent(
    con: duckdb.DuckDBPyConnection, send: Send, chunk: int
) -> Submission | budget.Refusal:
    """Commit which pending requests the chunk's batch will hold, before it is sent, with
    its estimate and each request's wire id; or, when its reservation would pass a limit,
    record it and every later chunk as skipped and return the refusal. One transaction:
    the limit is checked against what is committed at that instant, by this run or any
    other."""
    submission_id, intent_at = uuid.uuid4().hex, _now()
    for attempt in warehouse.transactions(con, "record the intent"):
        with attempt:
            estimate = refusal = None
            if send.spend is not None:
                estimate = send.spend.price(*state.chunk_size(con, chunk))
                refusal = budget.check(
                    con, send.spend.limits, send.pipeline, send.date, estimate.high_usd,
                    intent_at.date(),
                )  # fmt: skip
            if refusal is not None:
                budget.record_skipped(
                    con, send.pipeline, send.date, refusal, state.chunk_start(con, chunk)
                )
                continue  # the attempt commits it (a `return` here would skip a retry)
            count = state.record_intent(
                con,
                submission_id=submission_id,
                token=token(submission_id),
                wire_id_sql=WIRE_ID_SQL,
                pipeline=send.pipeline,
                date=send.date,
                model=send.model,
                intent_at=intent_at,
                chunk=chunk,
                estimate=(
                    (estimate.low_usd, estimate.expected_usd, estimate.high_usd)
                    if estimate
                    else None
                ),
                request_version=send.request_version,
            )
    if refusal is not None:
        return refusal
    return Submission(submission_id, None, "intent", count, intent_at)


def token(submission_id: str) -> str:
    """The submission's mark on each of its custom_ids: 48 random bits of its id."""
    return submission_id[:TOKEN_LENGTH]


def _body_on(cursor: duckdb.DuckDBPyConnection, sub: Submission) -> tuple[int, bytes]:
    """`_body` on a cursor made for a worker thread, closed when done."""
    with cursor:
        return _body(cursor, sub)


def _body(con: duckdb.DuckDBPyConnection, sub: Submission) -> tuple[int, bytes]:
    """The create call's JSON for an intent, and how many requests it holds (fewer than
    recorded if the partition's requests were rebuilt since). DuckDB writes the array of
    request lines to a scratch file, read back whole; media placeholders, if any, are
    filled in after (base64 or file ids, which the warehouse holds apart)."""
    scratch = warehouse.state_dir() / "bodies"
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"{sub.submission_id}.json"
    try:
        count = state.write_body(con, sub.submission_id, path)
        lines = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    if media_send.has_placeholders_bytes(lines):
        with warehouse.cursor(con) as reader:
            lines = media_send.filler(lambda: reader)(lines.decode()).encode()
    return count, b'{"requests":' + lines + b"}"


def _finish_submission(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    sub: Submission,
    log: Log,
    *,
    interrupted: bool,
    betas: Sequence[str] = (),
    body: tuple[int, bytes] | None = None,
) -> int:
    """Turn a recorded intent into exactly one batch upstream; `body` is `_body(sub)`
    when the caller built it already. Returns the requests sent (0: held for proof, or
    dropped); a queue or rate limit's 429 raises Held, the intent kept.

    An intent whose create was called by an earlier process (`interrupted`) may already
    have its batch upstream: look for it before sending. An intent never sent, and a
    fresh one, is sent at once: looking first would only risk taking someone else's batch.
    Whatever is found upstream is only provisional until its results prove it ours.
    """
    content = _body_to_send(con, api, sub, log, interrupted=interrupted, body=body)
    if content is None:
        return 0
    del body
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        # Committed before the call goes out: from here on a crash leaves an outcome to
        # find upstream, and before it, an intent known never to have been sent.
        state.set_state(con, sub.submission_id, "submitting")
        kill_point("before_create")
        try:
            batch = _create(api, content, betas)
            kill_point("after_create")
        except anthropic.APIStatusError as err:
            if (limit := _spend_limit(err)) is not None:
                state.set_state(con, sub.submission_id, "intent")  # held: it created nothing
                raise limit from None
            if err.status_code == 429:
                # A 429 creates nothing: the intent is held, and tried again after the
                # wait the API asks for, outside this connection (no lock held while waiting).
                state.set_state(con, sub.submission_id, "intent")
                raise Held("rate_limit", api_message(err), retry_after(err)) from None
            if err.status_code < 500 and err.status_code not in (408, 409):
                state.record_failed(con, sub.submission_id, api_message(err))
                raise BatchApiError(
                    f"the Batches API refused the batch ({err.status_code}): {api_message(err)}"
                ) from None
            outcome = err
        except anthropic.APIConnectionError as err:
            outcome = err
        else:
            _record_created(con, sub.submission_id, batch)
            log(f"submitted batch {batch.id} with {sub.request_count} requests")
            return sub.request_count
        # The create may or may not have reached the API: look before sending again.
        found = _reconcile(con, api, sub)
        if found:
            _hold(con, sub, found, log)
            return 0
        state.set_state(con, sub.submission_id, "intent")  # looked: it did not
        log(f"create failed ({type(outcome).__name__}); no batch upstream, retrying")
        time.sleep(min(2**attempt, 30))
    raise BatchApiError(
        f"could not create a batch after {CREATE_ATTEMPTS} attempts; nothing was submitted. "
        "Run again to retry."
    )


def _body_to_send(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    sub: Submission,
    log: Log,
    *,
    interrupted: bool,
    body: tuple[int, bytes] | None,
) -> bytes | None:
    """The create body of an intent, or None when nothing is to be sent for it: an
    interrupted create whose batch may be upstream (now held for proof), or an intent
    whose requests were rebuilt since it was recorded (dropped; the caller sends what is
    pending now)."""
    if not sub.request_count:  # another run's batch took every request first
        return None
    if interrupted:
        found = _reconcile(con, api, sub)
        if found:
            _hold(con, sub, found, log)
            return None
    count, content = body if body is not None else _body(con, sub)
    if count != sub.request_count:
        state.record_failed(
            con, sub.submission_id, "abandoned before sending: the partition's requests changed"
        )
        log(f"dropped an interrupted submission of {sub.request_count} requests never sent")
        return None
    return content


class SpendLimitReached(BatchApiError):
    """A create refused because a spend limit was reached: the tier's monthly cap (429
    with an error code, no retry-after) or a workspace or organization limit someone set
    (400). Not retried: its submission stays a recorded intent, held, sent by the first
    run after the limit is lifted."""

    def __init__(self, api_words: str, *, monthly: bool) -> None:
        self.api_words, self.monthly = api_words, monthly
        super().__init__(f"a spend limit was reached: {api_words}")


def _spend_limit(err: anthropic.APIStatusError) -> SpendLimitReached | None:
    """A create refused by a spend limit, which waiting seconds does not lift: a 429 with
    an error code (the tier's monthly cap, enforced_spend_limit_reached, and its kin), or
    the 400 of a workspace or organization limit someone set."""
    words = api_message(err)
    if err.status_code == 429 and err.error_code is not None:
        return SpendLimitReached(words, monthly=err.error_code == "enforced_spend_limit_reached")
    if err.status_code == 400 and words.startswith(WORKSPACE_LIMIT_WORDS):
        return SpendLimitReached(words, monthly=False)
    return None


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
) -> list[anthropic.types.messages.MessageBatch]:
    """The batches upstream that could be this submission's: as many requests, created
    after its intent (less the clock skew), claimed by no submission here, and not
    already shown by their results to be someone else's.

    The API keeps no client metadata on a batch, and teams share API keys, so size and
    time only make a batch a candidate; its results decide (see `_prove`).
    """
    known = state.claimed_batch_ids(con, sub.submission_id)
    return [
        batch
        for batch in _created_since(api, _since(sub))
        if batch.id not in known and _size(batch) == sub.request_count
    ]


def _since(sub: Submission) -> dt.datetime:
    """The earliest a batch of the submission can have been created: its intent, less
    the clock skew tolerated between this machine and the API."""
    return sub.intent_at.replace(tzinfo=dt.UTC) - RECONCILE_SKEW


def _created_since(
    api: anthropic.Anthropic, since: dt.datetime, outage: Outage | None = None
) -> Iterator[anthropic.types.messages.MessageBatch]:
    """The batches upstream created since `since`, newest first, a page of LIST_PAGE at a
    time (the endpoint's order: a page older than `since` ends the walk); with `outage`,
    a page the API cannot serve now is asked for again (see Outage)."""
    after: str | None = None
    while True:
        kwargs = {"limit": LIST_PAGE} | ({"after_id": after} if after else {})
        list_page = functools.partial(api.messages.batches.list, **kwargs)
        page = list_page() if outage is None else outage.call(list_page, "polling batches")
        for batch in page.data:
            if batch.created_at < since:
                return
            yield batch
        if not page.data or not page.has_more:
            return
        after = page.data[-1].id


def _size(batch: anthropic.types.messages.MessageBatch) -> int:
    c = batch.request_counts
    return c.processing + c.succeeded + c.errored + c.canceled + c.expired


def _hold(
    con: duckdb.DuckDBPyConnection,
    sub: Submission,
    found: list[anthropic.types.messages.MessageBatch],
    log: Log,
) -> None:
    """Record the candidates of a submission whose create may have gone through, and
    send nothing for it until their results say whether one of them is its batch."""
    state.hold_for_candidates(con, sub.submission_id, [b.id for b in found], _now())
    log(
        f"the create of {sub.request_count} request(s) may have reached the API: "
        f"{len(found)} batch(es) upstream could be it ({', '.join(b.id for b in found)}). "
        "Nothing is sent again and nothing is canceled: once they end, their results show "
        "whose they are (a batch sent by anyone else on this API key is left alone)"
    )


def _prove(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    sub: Submission,
    batch: anthropic.types.messages.MessageBatch,
    log: Log,
) -> None:
    """Decide an ended candidate by its results: ours when every line answers one of the
    submission's requests under its wire id, foreign when none does. A foreign batch is
    released, never canceled, and its file removed; once every candidate is foreign, the
    submission is known never to have been created, and goes out as an intent again.
    Anything in between cannot be decided, and nothing is done."""
    path = download_results(api, batch.id, _size(batch), log)
    lines, ours = _count_matches(con, path, sub)
    if ours == lines == sub.request_count:
        for attempt in warehouse.transactions(con, "prove the batch ours"):
            with attempt:
                state.prove_ours(con, sub.submission_id, batch.id)
                _record_created(con, sub.submission_id, batch)
                record_status(con, sub.submission_id, batch)
        log(f"batch {batch.id} is this pipeline's: its results answer the requests it was sent")
        return
    if ours:
        raise BatchApiError(
            f"batch {batch.id} answers {ours} of the {sub.request_count} requests of an "
            f"interrupted submission and {lines - ours} other line(s): batchpipe cannot tell "
            "whose it is, so it loads nothing of it and sends nothing again for those "
            f"requests (submission {sub.submission_id} in batchpipe_candidates)"
        )
    path.unlink(missing_ok=True)  # someone else's answers: not ours to keep
    _release(con, sub, batch.id, "foreign", log)


def _release(
    con: duckdb.DuckDBPyConnection,
    sub: Submission,
    batch_id: str,
    verdict: Literal["foreign", "gone"],
    log: Log,
) -> None:
    for attempt in warehouse.transactions(con, "release the candidate"):
        with attempt:
            state.set_verdict(con, sub.submission_id, batch_id, verdict)
            left = state.unproven_candidates(con, sub.submission_id)
            if not left:
                state.set_state(con, sub.submission_id, "intent")
    why = "its results answer other requests" if verdict == "foreign" else "it is gone upstream"
    log(
        f"batch {batch_id} is not this pipeline's ({why}); left alone, not canceled"
        + ("" if left else f"; the {sub.request_count} request(s) it was taken for go out now")
    )


def _count_matches(con: duckdb.DuckDBPyConnection, path: Path, sub: Submission) -> tuple[int, int]:
    """A results file's lines, and how many answer the submission under their wire ids."""
    lines, ours, _ = state.wire_matches(con, _id_lines("?"), path, sub.submission_id)
    return lines, ours


def _id_lines(path: str) -> str:
    return (
        f"read_json({path}, format = 'newline_delimited', columns = {{custom_id: 'VARCHAR'}}) AS j"
    )


def _record_created(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    batch: anthropic.types.messages.MessageBatch,
) -> None:
    state.record_created(
        con, submission_id, batch.id, _naive(batch.created_at), batch.processing_status
    )


@dataclass(frozen=True)
class Watch:
    """A batch a partition waits on: a submission's own, or a candidate to prove."""

    sub: Submission
    batch_id: str
    candidate: bool


def watching(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> list[Watch]:
    watch = []
    for sub in open_submissions(con, pipeline, date):
        if sub.state == "submitted":
            watch.append(Watch(sub, sub.batch_id, False))
        elif sub.state == "provisional":
            watch += [
                Watch(sub, b, True) for b in state.unproven_candidates(con, sub.submission_id)
            ]
    return watch


# The results_url of each ended batch this process has polled. A download from it needs
# no retrieve first (the SDK's results() retrieves), and every call counts against the
# batch endpoints' requests-per-minute limit.
_RESULTS_URLS: dict[str, str] = {}


def retrieve_all(
    api: anthropic.Anthropic, watch: list[Watch], outage: Outage | None = None
) -> list[anthropic.types.messages.MessageBatch | None]:
    """Each watched batch as the API has it now (None: a candidate that is gone); with
    `outage`, a call that cannot reach the API is tried again (see Outage). Touches no
    database, so a waiting run holds no lock while the API answers.

    Several batches are read from the list endpoint, one call per 100 batches, instead of
    one retrieve each: the batch endpoints share one requests-per-minute limit. A batch
    the list does not show (too old for the pages walked, or just created) is retrieved."""
    listed = _listed(api, watch, outage) if len(watch) > 1 else {}
    seen: list[anthropic.types.messages.MessageBatch | None] = []
    for w in watch:
        if w.batch_id in listed:
            seen.append(listed[w.batch_id])
            continue
        retrieve = functools.partial(api.messages.batches.retrieve, w.batch_id)
        try:
            seen.append(retrieve() if outage is None else outage.call(retrieve, "polling batches"))
        except anthropic.NotFoundError:
            if w.candidate:
                seen.append(None)  # deleted by whoever sent it: it was not ours to wait on
            else:
                seen.append(_retrieve_own(api, w, retrieve))
    _RESULTS_URLS.update((b.id, b.results_url) for b in seen if b is not None and b.results_url)
    return seen


def _listed(
    api: anthropic.Anthropic, watch: list[Watch], outage: Outage | None
) -> dict[str, anthropic.types.messages.MessageBatch]:
    """The watched batches the list endpoint shows, walking back no further than the
    oldest watched intent (less the clock skew)."""
    since = min(_since(w.sub) for w in watch)
    return _find_listed(api, {w.batch_id for w in watch}, since, outage)


def _find_listed(
    api: anthropic.Anthropic, wanted: set[str], since: dt.datetime, outage: Outage | None = None
) -> dict[str, anthropic.types.messages.MessageBatch]:
    """The `wanted` batches the list endpoint shows, walking its newest-first pages until
    every one is found or the pages reach batches created before `since`: other teams'
    batches on the same key only add pages."""
    found: dict[str, anthropic.types.messages.MessageBatch] = {}
    for batch in _created_since(api, since, outage):
        if batch.id in wanted:
            found[batch.id] = batch
            if len(found) == len(wanted):
                break
    return found


def retrieve_by_id(
    api: anthropic.Anthropic, batch_ids: Sequence[str]
) -> dict[str, anthropic.types.messages.MessageBatch]:
    """The batches with these ids as the API has them now, for a caller that knows only
    ids (the sensor): read from the list endpoint, one call per 100 batches, walking back
    no further than a batch can stay open; one not listed is retrieved, and one neither
    endpoint knows is left out (asked again at the next poll)."""
    wanted = set(batch_ids)
    found = {}
    if len(wanted) > 1:
        found = _find_listed(api, wanted, dt.datetime.now(dt.UTC) - OPEN_BATCHES_MAX_AGE)
    for batch_id in sorted(wanted - found.keys()):
        try:
            found[batch_id] = api.messages.batches.retrieve(batch_id)
        except anthropic.NotFoundError:
            continue
    return found


def _retrieve_own(
    api: anthropic.Anthropic,
    w: Watch,
    retrieve: Callable[[], anthropic.types.messages.MessageBatch],
) -> anthropic.types.messages.MessageBatch:
    """A batch of ours that retrieve answered 404 for: asked again for a while, then
    looked for in the list endpoint. A retrieve right after a create can answer 404 for
    a short while (anthropic-sdk-python#1432), so a 404 never means "lost, send again":
    only a batch neither endpoint knows after NOT_FOUND_PATIENCE_SECONDS stops the run,
    and even then nothing is sent again."""
    deadline = time.monotonic() + NOT_FOUND_PATIENCE_SECONDS
    delay = 0.5
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(delay, left))
        delay = min(delay * 2, 10.0)
        try:
            return retrieve()
        except anthropic.NotFoundError:
            continue
    for batch in _created_since(api, _since(w.sub)):
        if batch.id == w.batch_id:
            return batch
    raise BatchApiError(
        f"batch {w.batch_id} ({w.sub.request_count} request(s)) is not known upstream: "
        f"retrieve answered 404 for {NOT_FOUND_PATIENCE_SECONDS:.0f} s "
        "(BATCHPIPE_NOT_FOUND_PATIENCE) and the list endpoint does not show it. Nothing "
        "is sent again for its requests; check that ANTHROPIC_API_KEY belongs to the "
        "workspace that created it, then run the same command again"
    )


def record_polled(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    watch: list[Watch],
    seen: list[anthropic.types.messages.MessageBatch | None],
    log: Log,
) -> None:
    """Record what `retrieve_all` saw, and decide the candidates that have ended."""
    for w, batch in zip(watch, seen, strict=True):
        if not w.candidate:
            record_status(con, w.sub.submission_id, batch)
        elif w.batch_id in state.unproven_candidates(con, w.sub.submission_id):  # still undecided
            if batch is None:
                _release(con, w.sub, w.batch_id, "gone", log)
            elif batch.processing_status == "ended":
                _prove(con, api, w.sub, batch, log)


def poll(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    log: Log,
    outage: Outage | None = None,
) -> list[anthropic.types.messages.MessageBatch]:
    """Retrieve every batch the partition waits on once, record its counts, and prove or
    release the candidates that have ended."""
    watch = watching(con, pipeline, date)
    seen = retrieve_all(api, watch, outage)
    record_polled(con, api, watch, seen, log)
    return [b for b in seen if b is not None]


def wait_until_ended(
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    poll_seconds: float,
    log: Log,
    on_ended: Callable[[], object] | None = None,
) -> None:
    """Poll the partition's open batches until all have ended (the API has no webhooks),
    riding out an API that is unreachable for a while (see Outage); or, when the
    partition holds requests back (batchpipe_holds), until it is time to try them again.

    `on_ended` runs after any poll that saw a batch end, so the caller can load its
    results at once rather than after the last batch: they are safe from the 29-day
    limit, and when the last batch ends only its own load remains.

    The first polls come quickly (FIRST_POLL_SECONDS, doubling up to `poll_seconds`):
    a small batch is often done in a second, and waiting a whole interval for it was
    most of a 10-row run. Against the real API that is a handful of extra retrieves.

    The warehouse is opened only to read what to poll and to record what was seen, never
    while waiting, so `batchpipe cancel` (or any other writer) gets in between polls."""
    outage = Outage(api, log)
    # Every poll's figures go to the person: the CLI's display, else the step's log.
    shown = progress.reporter_or(log)
    ramp = FIRST_POLL_SECONDS
    try:
        while True:
            with state.connect() as con:
                watch = watching(con, pipeline, date)
                hold = state.hold_of(con, pipeline, date)
            if hold is not None and _now() >= hold.retry_at:
                return  # the held requests are due: the caller sends them
            seen = retrieve_all(api, watch, outage) if watch else []
            with state.connect() as con:
                record_polled(con, api, watch, seen, log)
                recorded = progress.recorded(con, pipeline, date)
            batches = [b for b in seen if b is not None]
            if batches or recorded.hold:
                counts = [progress.polled(b) for b in batches]
                shown.show(progress.snapshot(pipeline, date, counts, recorded))
            if on_ended is not None and any(b.processing_status == "ended" for b in batches):
                on_ended()
            if all(b.processing_status == "ended" for b in batches) and hold is None:
                return
            pause, ramp = min(ramp, poll_seconds), ramp * 2
            if hold is not None:
                pause = min(pause, max((hold.retry_at - _now()).total_seconds(), 0.0))
            time.sleep(pause)
    finally:
        shown.end(pipeline, date)


def cancel(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    log: Log,
) -> list[str]:
    """Ask the API to cancel the partition's batches that are still processing. A
    candidate not yet proven ours is never canceled (it may be someone else's), and an
    intent never sent is dropped, so nothing goes out after a cancel."""
    canceled = []
    for sub in open_submissions(con, pipeline, date):
        if sub.state == "submitted":
            batch = api.messages.batches.cancel(sub.batch_id)
            record_status(con, sub.submission_id, batch)
            canceled.append(batch.id)
        elif sub.state in state.UNSENT_STATES:
            stop_unsent(con, api, sub, log)
        elif sub.state == "provisional":
            ids = ", ".join(state.unproven_candidates(con, sub.submission_id))
            log(
                f"not canceled: {ids}, not yet proven this pipeline's (it may be another "
                "installation's on the same API key); waiting for its results to show whose"
            )
    return canceled


def stop_unsent(
    con: duckdb.DuckDBPyConnection, api: anthropic.Anthropic, sub: Submission, log: Log
) -> None:
    """A canceled partition's intent with no batch: dropped, so it is not sent later; one
    whose create may have gone through is first looked for upstream (and held if found)."""
    if sub.state == "submitting" and (found := _reconcile(con, api, sub)):
        _hold(con, sub, found, log)
        return
    state.record_failed(con, sub.submission_id, "canceled before it was sent")
    log(f"dropped {sub.request_count} request(s) not yet sent")


def record_status(
    con: duckdb.DuckDBPyConnection,
    submission_id: str,
    batch: anthropic.types.messages.MessageBatch,
) -> None:
    c = batch.request_counts
    state.record_status(
        con,
        submission_id,
        processing_status=batch.processing_status,
        counts=(c.succeeded, c.errored, c.canceled, c.expired),
        ended_at=_naive(batch.ended_at) if batch.ended_at else None,
    )


def download_results(
    api: anthropic.Anthropic, batch_id: str, expected_lines: int, log: Log = print
) -> Path:
    """Stream a batch's results to a file, complete or not at all.

    The file is written under a temporary name and renamed only once it is whole (see
    `_whole`), so a cut stream is never loaded as if whole; a cut or failed download is
    tried again from the start, a bounded number of times. A file already on disk is
    used only while it is still whole: one that lost bytes since (a cut copy, a full
    disk) is fetched again, as results stay upstream 29 days.
    """
    directory = warehouse.state_dir() / "results"
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{batch_id}.jsonl"
    if final.exists():
        problem = _whole(final, expected_lines)
        if problem is None:
            return final
        log(f"the results file of {batch_id} on disk is not whole ({problem}); fetching it again")
        final.unlink()
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
            problem = _whole(partial, expected_lines)
            if problem is None:
                partial.replace(final)
                return final
        log(f"downloading the results of {batch_id} failed ({problem}); attempt {attempt}")
        time.sleep(min(2**attempt * 0.25, 10))
    raise BatchApiError(
        f"could not download the results of {batch_id} after {DOWNLOAD_ATTEMPTS} attempts "
        f"({problem}). They stay upstream for 29 days: run again to retry."
    )


def _whole(path: Path, expected_lines: int) -> str | None:
    """Why a results file is not whole, or None: every line must parse as JSON and there
    must be one per request. One pass of DuckDB's JSON reader (about 0.3 s a million
    lines) checks both, so a file that passes here never fails a load as malformed."""
    with duckdb.connect(config={"autoinstall_known_extensions": False}) as con:
        try:
            (lines,) = con.execute(
                "SELECT count(*) FROM read_json_objects(?, format = 'newline_delimited')",
                [str(path)],
            ).fetchone()
        except duckdb.InvalidInputException as err:
            found = re.search(r"at byte \d+ in line \d+: [^.]*", str(err))
            return f"it does not parse as JSON lines ({found[0] if found else 'malformed'})"
    if lines != expected_lines:
        return f"the stream was cut short: {lines} of {expected_lines} lines"
    return None


def _stream_to(api: anthropic.Anthropic, batch_id: str, path: Path) -> None:
    with _results_bytes(api, batch_id) as chunks, path.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
            kill_point("mid_download")
        out.flush()
        os.fsync(out.fileno())


@contextlib.contextmanager
def _results_bytes(api: anthropic.Anthropic, batch_id: str) -> Iterator[Iterator[bytes]]:
    """The batch's results file as it streams: from the results_url a poll saw, in one
    call through the SDK's client (its retries, errors and retry-after gate), else by the
    SDK's results(), which retrieves the batch first."""
    url = _RESULTS_URLS.get(batch_id)
    if url is None:
        with api.messages.batches.with_streaming_response.results(batch_id) as response:
            yield response.iter_bytes()
        return
    headers = {"Accept": "application/binary"}
    response = api.get(url, cast_to=httpx2.Response, options={"headers": headers}, stream=True)
    try:
        yield response.iter_bytes()
    finally:
        response.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _naive(value: dt.datetime) -> dt.datetime:
    """DuckDB TIMESTAMP columns hold UTC without a zone."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)
