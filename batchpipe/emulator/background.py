"""Big batches answered in the background, off the store lock, one at a time.

Answering a batch of 100,000 lines under the store lock would stall every other call for
as long: creates, polls of other batches, downloads. So a batch whose lines are all due
at once and safe to split (lifecycle.all_at_once) is handed to one thread here, which
claims it (store.claimed) and lets go of the lock while forked children answer it and
write its results file (pooled.py) and its ledger lines are copied in, then takes the
lock again, only to end it. Anyone who needs that batch meanwhile waits for it on
`store.changed`, which lets go of the lock too; nothing observable changes but when
answers are made, as every line completes at its scheduled time whenever it is
answered (lifecycle's docstring).

Batches are taken oldest first, as they were created (`submit`), except that one a
caller waits for goes first (`answer_now`); smaller ones are brought up to date here
too, as lifecycle.process_soon's thread did, since doing so is quick. A batch whose
answering fails is left to be answered in the calling thread, under the lock, as before.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable
from itertools import chain, repeat

from batchpipe.emulator import lifecycle, pooled
from batchpipe.emulator.state import BatchRecord, ResultLine, Store, tally
from batchpipe.emulator.wire import ApiError

LOG = logging.getLogger(__name__)


class Processor:
    """The store's background answerer (state.Background); one thread, started when
    first needed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: collections.deque[tuple[str, float]] = collections.deque()
        self._queued: set[str] = set()
        self._failed: set[str] = set()  # answering these off the lock failed once
        self._thread: threading.Thread | None = None

    def submit(self, batch_id: str, latency: float, first: bool = False) -> None:
        """Bring the batch up to date in the background, after those already waiting
        unless `first`."""
        with self.store.lock:
            if batch_id in self._queued:
                if not first:
                    return
                self._queue.remove((batch_id, latency))
            self._queued.add(batch_id)
            (self._queue.appendleft if first else self._queue.append)((batch_id, latency))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="emulator background", daemon=True
                )
                self._thread.start()
            self.store.changed.notify_all()

    def answer_now(self, batch_id: str, latency: float) -> bool:
        """Answer the batch next and wait for it, the lock let go meanwhile (called
        with it held); False if the caller is to do it: this thread must not wait for
        itself, and a batch that failed here once is not tried again."""
        if threading.current_thread() is self._thread or batch_id in self._failed:
            return False
        self.submit(batch_id, latency, first=True)
        store = self.store
        store.wait_for(lambda: batch_id in self._queued or batch_id in store.claimed)
        return batch_id not in self._failed

    def _run(self) -> None:
        store = self.store
        while True:
            with store.lock:
                store.wait_for(lambda: not self._queue)
                batch_id, latency = self._queue.popleft()
            try:
                self._bring_up_to_date(batch_id, latency)
            except Exception:  # not the thread's to die of: left to the next access
                LOG.exception("answering %s in the background failed", batch_id)
                self._failed.add(batch_id)
            finally:
                with store.lock:
                    self._done(batch_id)

    def _bring_up_to_date(self, batch_id: str, latency: float) -> None:
        store = self.store
        with store.lock:
            record = store.get(batch_id)
            if record is None or record.processing_status == "ended":
                return
            job = _claim(store, record, latency)
            if job is None:  # small, not due, or not safe to split: quick under the lock
                with contextlib.suppress(ApiError):
                    lifecycle.refresh(store, record, latency)
                return
        try:
            end = job.answer()
            with store.lock:
                end()
                self._done(batch_id)  # its waiters need not wait for the tidying up
        finally:
            shutil.rmtree(store.parts_dir(batch_id), ignore_errors=True)

    def _done(self, batch_id: str) -> None:
        """The batch is no longer queued nor claimed (called under the lock)."""
        self._queued.discard(batch_id)
        self.store.claimed.discard(batch_id)
        self.store.changed.notify_all()


class _Job:
    """One claimed batch: what its children answer, and how it then ends."""

    def __init__(
        self, store: Store, record: BatchRecord, schedule: lifecycle.Schedule, target: int
    ) -> None:
        self.store, self.record, self.schedule = store, record, schedule
        self.positions = range(record.done, target)
        self.end_at, self.outcome = lifecycle.ending(record, schedule)
        self.progress = lifecycle._progress(store, record) if record.done else []
        self.rest = self._unprocessed() if len(schedule.order) < self.total else []

    @property
    def total(self) -> int:
        return sum(self.record.request_counts.values())

    def _unprocessed(self) -> list[ResultLine]:
        """The lines of requests never processed (lifecycle._finish's `rest`)."""
        processed = set(self.schedule.order)
        requests = lifecycle._requests(self.store, self.record)
        return [
            ResultLine.of({"custom_id": request["custom_id"], "result": {"type": self.outcome}})
            for index, request in enumerate(requests)
            if index not in processed
        ]

    def answer(self) -> Callable[[], None]:
        """Off the lock: the children answer, the results file and the ledger are
        written, and the record as it will be once ended; the function returned ends
        the batch, under the lock. Should the emulator die in between, the batch is
        answered again on restart, and the ledger bills no line of it twice."""
        store, record, schedule = self.store, self.record, self.schedule

        def answer(positions: range) -> lifecycle._Answers:
            return lifecycle._answer_range(store, record, schedule, positions)

        extra = [(line.custom_id, line.text) for line in (*self.progress, *self.rest)]
        outcome = pooled.answer(
            answer,
            self.positions,
            extra,
            store.parts_dir(record.id),
            store.results_path(record.id),
            bill=lambda parts: store.ledger.append_parts(record.id, parts),
        )
        if self.progress:  # last, as in line: what a crash left unbilled before
            lifecycle._bill_the_rest(store, record, schedule, self.progress)
        return self.ending(outcome)

    def ending(self, outcome: pooled.Outcome) -> Callable[[], None]:
        """The batch ended, as lifecycle._finish ends it: saved aside now, put in
        place by the function returned."""
        store, record = self.store, self.record
        kinds = chain(
            (line.kind for line in self.progress),
            chain.from_iterable(repeat(kind, count) for kind, count in outcome.kinds.items()),
            repeat(self.outcome, len(self.rest)),
        )
        put = store.save_aside(
            record,
            processing_status="ended",
            request_counts=tally(self.total, kinds),
            ended_at=self.end_at,
            done=len(self.progress) + len(self.positions),
        )

        def end() -> None:
            put()
            store.drop_progress(record.id)
            store.ledger.close(record.id)

        return end


def _claim(store: Store, record: BatchRecord, latency: float) -> _Job | None:
    """The batch claimed for answering off the lock, if it is for that now."""
    now, schedule, target = lifecycle.due_now(store, record, latency)
    if not lifecycle.all_at_once(store, record, schedule, target):
        return None
    job = _Job(store, record, schedule, target)
    if now < job.end_at:  # all_at_once ends the batch: only a safeguard
        return None
    store.claimed.add(record.id)
    return job


def install(store: Store) -> Processor:
    """Give the store a background answerer (the server's; in-process use has none)."""
    processor = Processor(store)
    store.background = processor
    return processor
