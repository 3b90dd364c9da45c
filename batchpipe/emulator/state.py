"""Durable emulator state: batches, their request, progress and result files, the clock,
the ledger, the Files API's files.

Everything lives under one `state_dir` so the emulator can be stopped (or killed) and
started again without losing batches or billing twice. Whole files are replaced
atomically (temp file + os.replace); the two append-only files (progress, ledger) are
fsynced per append and a torn last line is cut off on load. Layout:

    state_dir/clock.json                    {"offset_seconds": float}
    state_dir/ledger.jsonl                  one line per billed (succeeded) batch request
    state_dir/prompt_cache.json             the responders' prompt cache, if they keep one
    state_dir/batches/<id>.json             the batch record (BatchRecord)
    state_dir/batches/<id>.requests.json    the create call's body, as received: its
                                            "requests" in request order (older versions
                                            wrote <id>.requests.jsonl, one per line)
    state_dir/batches/<id>.progress.jsonl   result lines of the requests processed so far,
                                            in processing order (deleted once ended)
    state_dir/batches/<id>.results.jsonl    the results body, exactly as served
    state_dir/files/                        uploaded files (see files.py)
    state_dir/work/<id>/                    part files of a batch being answered by
                                            forked children (pooled.py); removed once
                                            it ends, and on start

The URL media cache (fetch.py) is kept in memory only: a restart downloads again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, Field

from batchpipe.emulator.caching import PromptCache
from batchpipe.emulator.faults import LineFaults
from batchpipe.emulator.fetch import UrlFetcher
from batchpipe.emulator.files import FileStore
from batchpipe.emulator.ledger import Ledger
from batchpipe.emulator.wire import (
    append_lines,
    atomic_write,
    atomic_write_with,
    dumps_line,
    load_lines,
    write_aside,
    write_lines,
)

T = TypeVar("T")
MEMO_REQUESTS = 200_000  # parsed requests kept in memory across batches waiting their turn


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: parsing or answering a batch makes and keeps
    hundreds of thousands of objects, so the collector would run thousands of times and
    rescan every one it already knew (a fifth of all the time). Those objects hold no
    reference cycles; the next collection after the block finds whatever else did."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Clock:
    """Wall-clock time plus an offset that tests move forward to reach expiry (24 h) or
    archiving (29 days) in seconds. The offset is persisted so a restart keeps it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._offset = 0.0
        if path.exists():
            self._offset = float(json.loads(path.read_text())["offset_seconds"])

    @property
    def offset_seconds(self) -> float:
        return self._offset

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._offset)

    def advance(self, seconds: float) -> dt.datetime:
        """Move time forward (never back: a batch must not un-expire)."""
        if seconds < 0:
            raise ValueError("advance_seconds must be >= 0")
        with self._lock:
            self._offset += seconds
            atomic_write(self._path, json.dumps({"offset_seconds": self._offset}))
        return self.now()

    def reset(self) -> None:
        """Back to wall-clock time; only `POST /_emulator/reset` does this, with no
        batches left that could un-expire."""
        with self._lock:
            self._offset = 0.0
            self._path.unlink(missing_ok=True)


class BatchRecord(BaseModel):
    """What the emulator remembers about a batch. The public MessageBatch JSON is derived
    from it per request (see lifecycle.batch_json), because `results_url` depends on the
    origin the client used, which can change across restarts."""

    id: str
    seq: int = Field(description="Creation order; list is newest first by this.")
    created_at: dt.datetime
    expires_at: dt.datetime
    api_version: str = Field(description="anthropic-version of the create call.")
    betas: list[str] = Field(default_factory=list, description="anthropic-beta of create.")
    processing_status: str = "in_progress"
    request_counts: dict[str, int]
    ended_at: dt.datetime | None = None
    cancel_initiated_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None
    done: int = Field(0, description="Requests processed so far (lines in the progress file).")
    faults: LineFaults = Field(default_factory=LineFaults, description="Frozen at create.")


class ResultLine(NamedTuple):
    """One result line as written: its custom_id and result type, for ordering, counting
    and billing, and its JSON text, so it is serialized once and never parsed again."""

    custom_id: str
    kind: str  # result.type: succeeded, errored, canceled or expired
    text: str  # the compact JSON line, without its newline

    @classmethod
    def of(cls, line: dict[str, Any]) -> ResultLine:
        return cls(line["custom_id"], line["result"]["type"], dumps_line(line))


def tally(total: int, kinds: Iterable[str]) -> dict[str, int]:
    """request_counts for `total` requests of which `kinds` are the finished results'."""
    counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
    for kind in kinds:
        counts[kind] += 1
    counts["processing"] = total - sum(counts.values())
    return counts


class Background(Protocol):
    """Who answers big batches off the lock (background.Processor), if anyone does."""

    def submit(self, batch_id: str, latency: float) -> None: ...

    def answer_now(self, batch_id: str, latency: float) -> bool: ...


class Store:
    """The batches in memory, written through to disk on every change.

    `lock` serialises every read-modify-write of a batch (refresh included) and billing,
    because the HTTP handlers run in a thread pool and several clients poll at once. A
    batch in `claimed` is being answered off the lock (background.py): who needs it
    waits on `changed`, which lets go of the lock, so the other batches, creates and
    downloads carry on meanwhile.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.batch_dir = state_dir / "batches"
        self.batch_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = state_dir / "work"
        shutil.rmtree(self.work_dir, ignore_errors=True)  # what a killed emulator left
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.claimed: set[str] = set()
        self.waits = 0  # times the lock was let go by wait_for, so a caller can tell
        self.background: Background | None = None
        self.clock = Clock(state_dir / "clock.json")
        self.cache_path = state_dir / "prompt_cache.json"
        self.prompt_cache = PromptCache(self.cache_path)
        self.files = FileStore(state_dir / "files")
        self.urls = UrlFetcher()
        self._batches: dict[str, BatchRecord] = {}
        self._memo: dict[tuple[str, str], Any] = {}
        self._held: dict[str, int] = {}  # batch id -> its requests kept parsed since create
        for path in self.batch_dir.glob("*.json"):
            if "." in path.stem:  # <id>.requests.json, not a record
                continue
            record = BatchRecord.model_validate_json(path.read_text(encoding="utf-8"))
            self._batches[record.id] = record
        still_open = {
            key for key, record in self._batches.items() if record.processing_status != "ended"
        }
        self.ledger = Ledger(state_dir / "ledger.jsonl", open_batches=still_open)
        for batch_id in still_open:
            self._reconcile(self._batches[batch_id])

    def _reconcile(self, record: BatchRecord) -> None:
        """After a crash between "progress appended" and "record saved", the progress
        file is the truth: those lines were answered (and maybe billed) already."""
        lines = self.read_progress(record.id)
        if len(lines) != record.done:
            record.done = len(lines)
            total = sum(record.request_counts.values())
            record.request_counts = tally(total, (line.kind for line in lines))
            self.save(record)

    def _path(self, batch_id: str, suffix: str) -> Path:
        return self.batch_dir / f"{batch_id}{suffix}"

    def next_seq(self) -> int:
        return max((record.seq for record in self._batches.values()), default=0) + 1

    def get(self, batch_id: str) -> BatchRecord | None:
        return self._batches.get(batch_id)

    def all(self) -> list[BatchRecord]:
        """Every batch, newest first."""
        return sorted(self._batches.values(), key=lambda record: record.seq, reverse=True)

    def save(self, record: BatchRecord) -> None:
        atomic_write(self._path(record.id, ".json"), record.model_dump_json(indent=1))
        self._batches[record.id] = record

    def save_aside(self, record: BatchRecord, **changes: Any) -> Callable[[], None]:
        """`save` of the record with `changes` made, in two halves: the file written and
        synced now, off the lock; then, by the function returned, under the lock, the
        changes made to the record itself and the file put in place."""
        changed = record.model_copy(update=changes)
        text = changed.model_dump_json(indent=1).encode("utf-8")
        path = self._path(record.id, ".json")
        tmp = write_aside(path, lambda out: out.write(text))

        def put() -> None:
            for name, value in changes.items():
                setattr(record, name, value)
            os.replace(tmp, path)
            self._batches[record.id] = record

        return put

    def write_requests(
        self, batch_id: str, requests: list[dict[str, Any]], body: bytes | None = None
    ) -> None:
        """A new batch's requests file; no lock needed, as no record names it yet. They
        are kept as the create call's `body` when given (it parses back to the same
        requests, and serializing them again took a third of accepting a batch)."""
        if body is None:
            body = dumps_line({"requests": requests}).encode("utf-8")
        atomic_write_with(self._path(batch_id, ".requests.json"), lambda out: out.write(body))

    def create(
        self, record: BatchRecord, requests: list[dict[str, Any]], body: bytes | None = None
    ) -> None:
        """Requests first (see write_requests), then the record: a record never exists
        without its requests. The parsed requests stay in memory, so processing need not
        read them back, unless that would keep more than MEMO_REQUESTS of them (a client
        queueing a hundred batches): the later ones are read back when their turn comes."""
        if not self._path(record.id, ".requests.json").exists():
            self.write_requests(record.id, requests, body)
        self.save(record)
        if sum(self._held.values()) + len(requests) <= MEMO_REQUESTS:
            self._memo[(record.id, "requests")] = requests
            self._held[record.id] = len(requests)

    def memo(self, batch_id: str, name: str, make: Callable[[], T]) -> T:
        """A per-batch value kept in memory while the batch is processed (its parsed
        requests, its schedule, its result lines so far), so polling a big batch does
        not re-read it each time. After a restart each is rebuilt from disk."""
        key = (batch_id, name)
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def forget(self, batch_id: str) -> None:
        for key in [key for key in self._memo if key[0] == batch_id]:
            del self._memo[key]
        self._held.pop(batch_id, None)

    def memo_of(self, batch_id: str, name: str) -> Any:
        """A per-batch value if it is kept (see memo), else None."""
        return self._memo.get((batch_id, name))

    def wait_for(self, busy: Callable[[], bool]) -> bool:
        """Wait, the lock let go meanwhile, while `busy()`; whether it was at all."""
        waited = False
        while busy():
            self.waits += 1
            self.changed.wait()
            waited = True
        return waited

    def requests_bytes(self, batch_id: str) -> bytes:
        """The batch's requests file as stored (JSON, or JSONL from older versions)."""
        path = self._path(batch_id, ".requests.json")
        if not path.exists():
            path = self._path(batch_id, ".requests.jsonl")
        return path.read_bytes()

    def read_requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's requests as `protocol.validate_create` returned them at create."""
        data = self.requests_bytes(batch_id)
        if not self._path(batch_id, ".requests.json").exists():
            lines = data.decode("utf-8").split("\n")  # see load_lines
            return [json.loads(line) for line in lines if line]
        with paused_gc():
            requests = json.loads(data)["requests"]
            return [{"custom_id": r["custom_id"], "params": r["params"]} for r in requests]

    def append_progress(self, batch_id: str, lines: list[ResultLine]) -> None:
        append_lines(self._path(batch_id, ".progress.jsonl"), [line.text for line in lines])

    def read_progress(self, batch_id: str) -> list[ResultLine]:
        """The progress file's lines, each kept as the text it was written as."""
        lines = []
        for text in load_lines(self._path(batch_id, ".progress.jsonl")):
            row = json.loads(text)
            lines.append(ResultLine(row["custom_id"], row["result"]["type"], text))
        return lines

    def drop_progress(self, batch_id: str) -> None:
        self._path(batch_id, ".progress.jsonl").unlink(missing_ok=True)
        self.forget(batch_id)

    def write_results(self, batch_id: str, lines: list[ResultLine]) -> None:
        texts = [line.text for line in lines]
        atomic_write_with(self.results_path(batch_id), lambda handle: write_lines(handle, texts))

    def results_path(self, batch_id: str) -> Path:
        return self._path(batch_id, ".results.jsonl")

    def parts_dir(self, batch_id: str) -> Path:
        """Where a batch answered off the lock keeps its part files until it ends."""
        return self.work_dir / batch_id

    def delete(self, batch_id: str) -> None:
        """Record first, so an interrupted delete leaves stray files, not a broken batch."""
        self._path(batch_id, ".json").unlink(missing_ok=True)
        self._batches.pop(batch_id, None)
        for suffix in (".requests.json", ".requests.jsonl", ".progress.jsonl", ".results.jsonl"):
            self._path(batch_id, suffix).unlink(missing_ok=True)
        self.forget(batch_id)

    def reset(self) -> None:
        """Forget everything: batches, ledger, clock offset, prompt cache file, files."""
        with self.lock:
            self.wait_for(lambda: bool(self.claimed))  # their files are being written
            for batch_id in list(self._batches):
                self.delete(batch_id)
            for stray in self.batch_dir.iterdir():
                stray.unlink(missing_ok=True)
            self._memo.clear()
            self._held.clear()
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.ledger.reset()
            self.clock.reset()
            self.prompt_cache.clear()
            self.files.reset()
            self.urls.reset()
