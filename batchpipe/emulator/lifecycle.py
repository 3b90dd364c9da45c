"""The batch state machine: in_progress -> (canceling) -> ended, then archived.

There is no background worker: progress is a pure function of the (advanceable) clock,
and every access to a batch first calls `refresh`, which catches up with it:

* Once `created_at + latency` has passed, requests complete in request order, at
  `requests_per_second` (unlimited by default: all at once). At time t,
  min(M, floor((t - created_at - latency) * rps)) of the batch's M processable requests
  are done; `request_counts` show that on every retrieve.
* Requests that became done since the last access are answered by the responder exactly
  once, appended to the batch's progress file and billed (succeeded ones only).
* The batch ends when all processable requests are done; when canceled (at the latency,
  or at once if it has already passed; requests done by then keep their results, the
  rest are `canceled`); or at `expires_at` (the rest `expired`). Then the results file is
  written and any succeeded line a crash left unbilled is billed.
* 29 days after `created_at` -> `archived_at` set; results are no longer served.

The answers are appended before the record is saved, and the progress file wins on load
(state.Store._reconcile), so a killed emulator neither answers nor bills a request twice.
Progress is computed from timestamps rather than ticks, so tests can jump through 24 h.

One exception to "no background worker": a batch with no latency and no rps limit is
all due the moment it is created, so `process_soon` refreshes it in the background right
away, while the client uploads its next batch. And a big advance that ends a batch
(`all_at_once`) is answered by forked children off the lock (background.py), if the
store has that answerer (the server's does), so other batches are served meanwhile.
Nothing observable changes: every line completes at its scheduled time whenever it is
answered, and any access to the batch in between waits for it exactly as it would
wait for its own refresh.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchpipe.emulator import fastpath, forked, ledger
from batchpipe.emulator.faults import (
    LineFaults,
    line_error,
    never_processed,
    worker_request_id,
)
from batchpipe.emulator.limits import no_credit_result
from batchpipe.emulator.responders import Sources, respond
from batchpipe.emulator.state import BatchRecord, ResultLine, Store, paused_gc, tally
from batchpipe.emulator.wire import (
    ApiError,
    dumps_line,
    invalid,
    new_batch_id,
    new_message_ids,
    not_found,
    rfc3339,
)

EXPIRY = dt.timedelta(hours=24)
RETENTION = dt.timedelta(days=29)
COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")
FORK_AT_LEAST = 5_000  # lines answered at once before a second core is worth a fork
POOL_AT_LEAST = 5_000  # lines answered at once before forked children are worth their cost
CHILD_SHARE = 0.6  # of those lines, to the child: ending the batch is left to the parent


def create(
    store: Store,
    requests: list[dict[str, Any]],
    api_version: str,
    betas: Sequence[str],
    faults: LineFaults | None = None,
    body: bytes | None = None,
    *,
    check: Callable[[], object] = lambda: None,
) -> BatchRecord:
    """A new batch of validated `requests`; `body` is the create call's JSON they came
    from, if at hand (it is kept as is, rather than serialized again). `check` runs
    under the lock just before, to raise whatever refuses the batch (account limits).
    The requests file is written first, off the lock: it takes a while for a big batch,
    and other batches need not wait for it."""
    batch_id = new_batch_id()
    store.write_requests(batch_id, requests, body)
    try:
        with store.lock, paused_gc():
            check()
            now = store.clock.now()
            record = BatchRecord(
                id=batch_id,
                seq=store.next_seq(),
                created_at=now,
                expires_at=now + EXPIRY,
                api_version=api_version,
                betas=list(betas),
                request_counts={key: 0 for key in COUNT_KEYS} | {"processing": len(requests)},
                faults=faults or LineFaults(),
            )
            store.create(record, requests, body)
            if body is not None:  # at hand now: processing need not read the file for it
                store.memo(record.id, "cache_free", lambda: _free(body))
            return record
    except BaseException:
        with store.lock:
            if store.get(batch_id) is None:
                store.delete(batch_id)  # the requests file of a batch that never was
        raise


@dataclass(frozen=True)
class Schedule:
    """When each processable request of a batch completes: `order` holds their indexes
    in processing order, the first at `due` + 1/rps, the last at `end`."""

    due: dt.datetime
    order: Sequence[int]
    rps: float | None

    def finished_at(self, position: int) -> dt.datetime:
        if self.rps is None:
            return self.due
        return self.due + dt.timedelta(seconds=(position + 1) / self.rps)

    @property
    def end(self) -> dt.datetime:
        return self.finished_at(len(self.order) - 1) if self.order else self.due

    def done_by(self, moment: dt.datetime) -> int:
        if moment < self.due:
            return 0
        if self.rps is None or moment >= self.end:  # no float rounding at the very end
            return len(self.order)
        elapsed = (moment - self.due).total_seconds()
        return min(len(self.order), math.floor(elapsed * self.rps))


def _requests(store: Store, record: BatchRecord) -> list[dict[str, Any]]:
    return store.memo(record.id, "requests", lambda: store.read_requests(record.id))


def _schedule(store: Store, record: BatchRecord, latency: float) -> Schedule:
    def order() -> Sequence[int]:
        if record.faults.expired_rate <= 0:  # none is left out: no need to read them
            return range(sum(record.request_counts.values()))
        requests = _requests(store, record)
        return [
            index
            for index, request in enumerate(requests)
            if not never_processed(record.faults, record.seq, request["custom_id"])
        ]

    due = record.created_at + dt.timedelta(seconds=latency)
    return Schedule(due, store.memo(record.id, "order", order), record.faults.requests_per_second)


def _answer(
    store: Store,
    record: BatchRecord,
    request: dict[str, Any],
    moment: dt.datetime,
    sources: Sources | None,
    error: ApiError | None,
) -> dict[str, Any]:
    """One request's result: its injected failure `error`, the responder's error, or its
    Message. `moment` is when the request completes on the emulated clock (what a prompt
    cache's TTLs and a file's expiry should be judged against), `record.faults.seed` the
    batch's seed, `sources` the store's files and URL cache."""
    request_id = None  # the real API gives null for validation errors...
    if error is None:
        answer = respond(
            request["params"],
            api_version=record.api_version,
            betas=record.betas,
            batch=True,
            seed=record.faults.seed,
            cache=store.prompt_cache,
            now=moment,
            sources=sources,
        )
        if not isinstance(answer, ApiError):
            return {"type": "succeeded", "message": answer}
        error = answer
    else:  # ...and a worker request id for failures while executing
        request_id = worker_request_id(record.faults, record.seq, request["custom_id"])
    inner = {"type": error.type, "message": error.message}
    return {"type": "errored", "error": {"type": "error", "error": inner, "request_id": request_id}}


def _progress(store: Store, record: BatchRecord) -> list[ResultLine]:
    """The batch's result lines so far, in processing order: kept in memory as written,
    read back from the progress file only after a restart."""
    return store.memo(record.id, "progress", lambda: store.read_progress(record.id))


class _Stamps:
    """`billed_at` of the line processed `position`-th, formatted once per moment (one
    for the whole batch when there is no rps limit)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._made: dict[int, str] = {}

    def __call__(self, position: int) -> str:
        key = 0 if self.schedule.rps is None else position
        if key not in self._made:
            self._made[key] = rfc3339(self.schedule.finished_at(position))
        return self._made[key]


@dataclass
class _Answers:
    """Answered lines and the ledger lines of the succeeded ones, serialized, as plain
    columns: cheap to send back from a forked child. Ledger lines are made as lines
    are answered, so no Message outlives its line (a batch's worth of live Messages
    made the garbage collector crawl); `Ledger.bill` skips any billed already."""

    custom_ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    billed: list[str] = field(default_factory=list)  # custom_ids of the ledger lines
    bills: list[str] = field(default_factory=list)

    def lines(self) -> list[ResultLine]:
        return list(map(ResultLine, self.custom_ids, self.kinds, self.texts))

    def ledger_lines(self, batch_id: str) -> list[ledger.Bill]:
        return [
            ledger.Bill(batch_id, cid, text)
            for cid, text in zip(self.billed, self.bills, strict=True)
        ]


def _answer_range(
    store: Store, record: BatchRecord, schedule: Schedule, positions: range
) -> _Answers:
    """Answer the requests processed at `positions`, and bill the succeeded ones: the
    usual ones from templates (fastpath), the rest by the responder. Touches no file
    and no lock but the prompt cache's, so it can run in a forked child when the batch
    never uses the prompt cache."""
    requests = _requests(store, record)
    stamp = _Stamps(schedule)
    fixed = stamp(0) if schedule.rps is None else None  # every line's billed_at, if one
    credit = store.ledger.credit_left()  # None: no credit limit; lines spend it in order
    sources = Sources(store.files, store.urls)
    usual = fastpath.Lines(record.id, record.betas, record.faults.seed).line
    order, faults, seq = schedule.order, record.faults, record.seq
    injects = faults.errored_rate > 0
    answers = _Answers()
    ids, kinds, texts = answers.custom_ids, answers.kinds, answers.texts
    billed, bills = answers.billed, answers.bills
    for position, message_id in zip(positions, new_message_ids(len(positions)), strict=True):
        request = requests[order[position]]
        custom_id = request["custom_id"]
        if credit is not None and credit <= 0:
            result = no_credit_result()
        else:
            error = line_error(faults, seq, custom_id) if injects else None
            made = None
            if error is None:
                made = usual(custom_id, request["params"], message_id, fixed or stamp(position))
            if made is not None:
                if credit is not None:
                    credit -= made[2]
                ids.append(custom_id)
                kinds.append("succeeded")
                texts.append(made[0])
                billed.append(custom_id)
                bills.append(made[1])
                continue
            moment = schedule.finished_at(position)
            result = _answer(store, record, request, moment, sources, error)
        ids.append(custom_id)
        kinds.append(result["type"])
        texts.append(dumps_line({"custom_id": custom_id, "result": result}))
        if result["type"] == "succeeded":
            row = ledger.entry(record.id, custom_id, result["message"], stamp(position))
            if credit is not None:
                credit -= row["usd"]
            billed.append(custom_id)
            bills.append(dumps_line(row))
    return answers


def _answer_all(
    store: Store,
    record: BatchRecord,
    schedule: Schedule,
    positions: range,
    keep: Callable[[_Answers], None],
) -> None:
    """`keep(_answer_range(...))` for `positions`, in order, on both cores when that is
    safe and worth a fork: the prompt cache makes answers depend on the order lines are
    processed in, so a batch that has `cache_control` anywhere is answered in order, in
    this process; so is one naming files or URLs, whose lookups a child must not make
    (the file store counts them, the URL cache keeps them). Forked, this process
    answers the first part and keeps it while the child answers the (bigger) rest,
    since ending the batch is left to this process. A credit limit, too, is spent in
    order, so with one set nothing is forked."""
    if (
        len(positions) < FORK_AT_LEAST
        or not forked.AVAILABLE
        or store.ledger.credit_usd is not None
        or not _cache_free(store, record)
    ):
        keep(_answer_range(store, record, schedule, positions))
        return
    _requests(store, record)  # parsed before the fork, so the child need not
    _, rest = forked.in_two(
        lambda part: _answer_range(store, record, schedule, part),
        positions,
        child_share=CHILD_SHARE,
        meanwhile=keep,
    )
    keep(rest)


SHARED_STATE_KEYS = (b'"cache_control"', b'"file_id"', b'"url"')


def _cache_free(store: Store, record: BatchRecord) -> bool:
    """Whether no request of the batch can touch the prompt cache, the file store or the
    URL cache: none of their keys anywhere (a string value equal to one only costs the
    speed-up)."""

    return store.memo(record.id, "cache_free", lambda: _free(store.requests_bytes(record.id)))


def _free(body: bytes) -> bool:
    """_cache_free of a batch whose requests file is `body`."""
    return not any(key in body for key in SHARED_STATE_KEYS)


def _advance(store: Store, record: BatchRecord, schedule: Schedule, target: int) -> None:
    """Answer, record and bill the requests that became done since the last access."""
    if target <= record.done:
        return
    progress = _progress(store, record)  # loaded before the appends below, not after

    def keep(answers: _Answers) -> None:
        lines = answers.lines()
        store.append_progress(record.id, lines)
        progress.extend(lines)
        store.ledger.bill(answers.ledger_lines(record.id))
        for line in lines:
            record.request_counts[line.kind] += 1
        record.request_counts["processing"] -= len(lines)

    _answer_all(store, record, schedule, range(record.done, target), keep)
    record.done = target
    store.save(record)


def _result_order(line: ResultLine) -> bytes:
    """Results are served in a stable order unrelated to the request order, as the real
    API does, so pipelines that assume request order fail here and not in production."""
    return hashlib.sha1(line.custom_id.encode()).digest()  # sorts as its hexdigest


def _bill_the_rest(
    store: Store, record: BatchRecord, schedule: Schedule, progress: list[ResultLine]
) -> None:
    """Bill the succeeded lines a crash left unbilled, parsing only those for their
    messages: normally every succeeded line was billed as it was processed."""
    stamp, bills = _Stamps(schedule), []
    succeeded = [line.custom_id for line in progress if line.kind == "succeeded"]
    unbilled = store.ledger.unbilled(record.id, succeeded)
    for at, line in enumerate(progress):
        if line.custom_id in unbilled:
            message = json.loads(line.text)["result"]["message"]
            bills.append(ledger.bill_for(record.id, line.custom_id, message, stamp(at)))
    store.ledger.bill(bills)


def _finish(
    store: Store, record: BatchRecord, schedule: Schedule, outcome: str, ended_at: dt.datetime
) -> None:
    """End the batch: done requests keep their results, the rest get `outcome`. Order:
    results, ledger, record, then the progress file - so a crash anywhere re-runs this."""
    progress = _progress(store, record)
    done = {line.custom_id for line in progress}
    requests = _requests(store, record)
    rest = [
        ResultLine.of({"custom_id": request["custom_id"], "result": {"type": outcome}})
        for request in requests
        if request["custom_id"] not in done
    ]
    lines = sorted(progress + rest, key=_result_order)
    store.write_results(record.id, lines)
    _bill_the_rest(store, record, schedule, progress)
    record.processing_status = "ended"
    record.request_counts = tally(len(requests), (line.kind for line in lines))
    record.ended_at = ended_at
    record.done = len(progress)
    store.save(record)
    store.drop_progress(record.id)


def ending(record: BatchRecord, schedule: Schedule) -> tuple[dt.datetime, str]:
    """When the batch ends (once all it will process is done) and what the requests
    left unprocessed then become."""
    if record.cancel_initiated_at is not None:
        end = min(max(schedule.due, record.cancel_initiated_at), record.expires_at)
        return end, "canceled"
    return min(schedule.end, record.expires_at), "expired"


def due_now(store: Store, record: BatchRecord, latency: float) -> tuple[dt.datetime, Schedule, int]:
    """The clock's now, the batch's schedule and how many of its lines are done by now."""
    now = store.clock.now()
    schedule = _schedule(store, record, latency)
    stop = record.cancel_initiated_at or record.expires_at  # nothing runs after
    return now, schedule, schedule.done_by(min(now, stop))


def all_at_once(store: Store, record: BatchRecord, schedule: Schedule, target: int) -> bool:
    """Whether this advance is for forked children to answer, off the lock (see
    background.py): it is big, ends the batch, and is safe to split (see _answer_all)."""
    return (
        target - record.done >= POOL_AT_LEAST
        and target == len(schedule.order)
        and schedule.rps is None
        and forked.AVAILABLE
        and store.ledger.credit_usd is None
        and _cache_free(store, record)
    )


def _wait_while_claimed(store: Store, record: BatchRecord) -> None:
    """Wait while the batch is answered off the lock; then it must still be there."""
    if store.wait_for(lambda: record.id in store.claimed) and store.get(record.id) is not record:
        raise not_found(f"Message Batch {record.id} not found.")


def refresh(store: Store, record: BatchRecord, latency: float) -> BatchRecord:
    """Bring one batch up to date with the clock (see the module docstring)."""
    with store.lock:
        _wait_while_claimed(store, record)
        now = store.clock.now()
        if record.processing_status != "ended":
            now = _catch_up(store, record, latency)
        if record.archived_at is None and now >= record.created_at + RETENTION:
            record.archived_at = record.created_at + RETENTION
            store.save(record)
        return record


def _catch_up(store: Store, record: BatchRecord, latency: float) -> dt.datetime:
    """refresh of a batch not ended; the clock's now it went by. A big advance that ends
    the batch is handed to the store's background answerer, if it has one, and waited
    for: the lock is let go meanwhile."""
    now, schedule, target = due_now(store, record, latency)
    if (
        store.background is not None
        and all_at_once(store, record, schedule, target)
        and store.background.answer_now(record.id, latency)
    ):
        _wait_while_claimed(store, record)
        if record.processing_status == "ended":
            return now
        now, schedule, target = due_now(store, record, latency)
    with paused_gc():
        _advance(store, record, schedule, target)
        end, outcome = ending(record, schedule)
        if now >= end:
            _finish(store, record, schedule, outcome, end)
    return now


def queued(store: Store, latency: float) -> int:
    """Requests in the processing queue now: those of `in_progress` batches not yet
    processed, every open batch first brought up to date (which bills what it did).
    Counted again if bringing one up to date let go of the lock (it was answered in
    the background), so the count holds until the caller lets go of it."""
    with store.lock:
        while True:
            total, waits = 0, store.waits
            for record in store.all():
                if record.processing_status != "ended":
                    refresh(store, record, latency)
                if record.processing_status == "in_progress":
                    total += record.request_counts["processing"]
            if store.waits == waits:
                return total


def process_soon(store: Store, record: BatchRecord, latency: float) -> threading.Thread | None:
    """Refresh a just-created batch in the background if all of it is due at once (see
    the module docstring): by the store's background answerer if it has one (None is
    returned), else from a thread of its own (returned). Otherwise it is left to the
    next access."""
    if latency > 0 or record.faults.requests_per_second is not None:
        return None
    if store.background is not None:
        store.background.submit(record.id, latency)
        return None

    def process() -> None:
        with contextlib.suppress(ApiError):  # deleted, or the emulator reset, meanwhile
            get(store, record.id, latency)

    thread = threading.Thread(target=process, name=f"process {record.id}", daemon=True)
    thread.start()
    return thread


def get(store: Store, batch_id: str, latency: float) -> BatchRecord:
    """The refreshed batch, or the real API's 404."""
    with store.lock:
        record = store.get(batch_id)
        if record is None:
            raise not_found(f"Message Batch {batch_id} not found.")
        return refresh(store, record, latency)


def cancel(store: Store, batch_id: str, latency: float) -> BatchRecord:
    """in_progress -> canceling. Already canceling or ended: returned unchanged (200)."""
    with store.lock:
        record = get(store, batch_id, latency)
        if record.processing_status == "in_progress":
            record.processing_status = "canceling"
            record.cancel_initiated_at = store.clock.now()
            store.save(record)
        return record


def delete(store: Store, batch_id: str, latency: float) -> dict[str, str]:
    with store.lock:
        record = get(store, batch_id, latency)
        if record.processing_status != "ended":
            raise invalid(
                "In progress batches cannot be deleted. Consider canceling the batch instead."
            )
        store.delete(batch_id)
        return {"id": batch_id, "type": "message_batch_deleted"}


def batch_json(record: BatchRecord, base_url: str) -> dict[str, Any]:
    """The public MessageBatch: every key present, null where no value applies."""

    def stamp(moment: dt.datetime | None) -> str | None:
        return rfc3339(moment) if moment is not None else None

    ended = record.processing_status == "ended"
    return {
        "id": record.id,
        "type": "message_batch",
        "processing_status": record.processing_status,
        "request_counts": {key: record.request_counts.get(key, 0) for key in COUNT_KEYS},
        "ended_at": stamp(record.ended_at),
        "created_at": stamp(record.created_at),
        "expires_at": stamp(record.expires_at),
        "archived_at": stamp(record.archived_at),
        "cancel_initiated_at": stamp(record.cancel_initiated_at),
        "results_url": f"{base_url}v1/messages/batches/{record.id}/results" if ended else None,
    }
