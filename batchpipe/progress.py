"""What a person sees while a partition waits on the Batches API: the figures, and both
ways of showing them.

Against the real API a batch runs for minutes to hours, and a wait that prints nothing
looks like a hang. At every poll `batches.wait_until_ended` (and, every few seconds,
`batchpipe status --watch`) takes a `Snapshot` of the partition: its requests succeeded,
errored and still processing out of the total, its batches ended and open, the requests
held back and why, how long it has waited, and what it has spent so far (loaded batches
at their cost, the others estimated at batch price from the share of their requests done).

A terminal gets one live table, redrawn in place (rich). Anything else (CI, cron, the
Dagster log) gets plain lines, at most one a poll: a poll whose figures are those of the
last line written is skipped, but never more than HEARTBEAT_POLLS - 1 in a row, so a log
that shows nothing new still shows that the wait is alive.

`batchpipe run` installs a reporter for its process (`reporting`), since Dagster's console
logger is silenced there; a run in the Dagster daemon has none, and its lines go to the
step's log. Imports neither Dagster nor (but for annotations) the SDK.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

import duckdb
from rich.console import Console
from rich.live import Live
from rich.table import Table

from batchpipe import state

if TYPE_CHECKING:
    from anthropic.types.messages import MessageBatch

# A plain line is written at least every HEARTBEAT_POLLS polls, changed or not: every
# 10 s against the emulator, every 5 min at the real API's 30 s poll interval.
HEARTBEAT_POLLS = 10
MESSAGE_CHARS = 80  # of a hold's message, in a line or under the table
RARER = ("canceled", "expired")  # outcomes shown only when a batch has some

Log = Callable[[str], None]
Key = tuple[str, dt.date]  # (pipeline, partition)


# --- the figures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """One batch's requests by where they stand, as the API showed them at a poll (or as
    the warehouse last recorded them)."""

    batch_id: str
    ended: bool
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    created_at: dt.datetime | None  # UTC, aware

    @property
    def done(self) -> int:
        return self.succeeded + self.errored + self.canceled + self.expired


def polled(batch: MessageBatch) -> Counts:
    """A batch as `batches.retrieve_all` returned it."""
    c = batch.request_counts
    return Counts(
        batch.id,
        batch.processing_status == "ended",
        c.processing,
        c.succeeded,
        c.errored,
        c.canceled,
        c.expired,
        batch.created_at,
    )


@dataclass(frozen=True)
class Sent:
    """A batch of the partition as the warehouse has it: its counts as last recorded, its
    expected estimate, and its cost once its results are loaded (None before)."""

    counts: Counts
    requests: int
    estimated_usd: float | None
    cost_usd: float | None


@dataclass(frozen=True)
class Recorded:
    """What the warehouse says of a partition, read in one short connection: the figures
    the API cannot give (the hold, the estimates, the loaded cost)."""

    hold: state.Hold | None
    sent: tuple[Sent, ...]

    def counts_of(self, batch_id: str) -> Counts | None:
        return next((s.counts for s in self.sent if s.counts.batch_id == batch_id), None)


def recorded(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> Recorded:
    hold = state.hold_of(con, pipeline, date)
    if hold is not None:  # aware, as the SDK's timestamps it is compared with
        hold = dataclasses.replace(hold, held_at=_utc(hold.held_at), retry_at=_utc(hold.retry_at))
    return Recorded(
        hold,
        tuple(_sent(row) for row in state.progress_batches(con, pipeline, date)),
    )


def _sent(row: tuple) -> Sent:
    batch_id, batch_state, requests, status, ok, bad, canceled, expired = row[:8]
    created_at, estimated_usd, cost_usd = row[8:]
    done = ok + bad + canceled + expired
    ended = status == "ended" or batch_state in ("ended", "loaded")
    counts = Counts(
        batch_id, ended, max(requests - done, 0), ok, bad, canceled, expired, _utc(created_at)
    )
    return Sent(counts, int(requests), estimated_usd, cost_usd)


@dataclass(frozen=True)
class Snapshot:
    """A partition's progress at one poll."""

    pipeline: str
    date: dt.date
    succeeded: int
    errored: int
    processing: int
    canceled: int
    expired: int
    batches_ended: int
    batches_open: int
    hold: state.Hold | None
    since: dt.datetime | None  # when the wait began: its oldest batch's creation, or the hold
    spend_usd: float  # loaded batches at their cost, the others estimated at batch price
    taken_at: dt.datetime

    @property
    def requests(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired

    @property
    def waiting(self) -> bool:
        """Whether anything of the partition is still waited for: a batch or a hold."""
        return self.batches_open > 0 or self.hold is not None

    def waited(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        if self.since is None:
            return None
        return max((now or self.taken_at) - self.since, dt.timedelta(0))

    def figures(self) -> tuple:
        """Everything a line says but the time waited: what a plain line is compared on."""
        return (
            self.succeeded,
            self.errored,
            self.processing,
            self.canceled,
            self.expired,
            self.batches_ended,
            self.batches_open,
            self.hold,
            round(self.spend_usd, 4),
        )

    def line(self) -> str:
        """The plain line: the same figures as a row of the table, for a log."""
        outcomes = [f"{self.succeeded} succeeded", f"{self.errored} errored"]
        outcomes += [f"{n} {word}" for word in RARER if (n := getattr(self, word))]
        return (
            f"{self.pipeline} {self.date}: {', '.join(outcomes)}, {self.processing} processing "
            f"of {self.requests} request(s); batches {self.batches_ended} ended, "
            f"{self.batches_open} open; {_held(self.hold)}; waited {_duration(self.waited())}; "
            f"~${self.spend_usd:.4f} spent so far (an estimate at batch price)"
        )


def snapshot(
    pipeline: str,
    date: dt.date,
    counts: Sequence[Counts],
    rec: Recorded,
    now: dt.datetime | None = None,
) -> Snapshot:
    """The partition's figures from the batches being waited on (`counts`, as polled) and
    what the warehouse recorded (`rec`)."""
    created = [c.created_at for c in counts if c.created_at is not None]
    since = min(created) if created else (rec.hold.held_at if rec.hold else None)
    ended = sum(1 for c in counts if c.ended)
    return Snapshot(
        pipeline=pipeline,
        date=date,
        succeeded=sum(c.succeeded for c in counts),
        errored=sum(c.errored for c in counts),
        processing=sum(c.processing for c in counts),
        canceled=sum(c.canceled for c in counts),
        expired=sum(c.expired for c in counts),
        batches_ended=ended,
        batches_open=len(counts) - ended,
        hold=rec.hold,
        since=since,
        spend_usd=spent(rec, counts),
        taken_at=now or _now(),
    )


def spent(rec: Recorded, counts: Sequence[Counts]) -> float:
    """Spend so far at batch price: each loaded batch at what its results cost; any other
    at its expected estimate times the share of its requests done (succeeded, errored,
    canceled or expired), by the freshest counts there are (`counts`, else recorded)."""
    fresh = {c.batch_id: c for c in counts}
    total = 0.0
    for sent in rec.sent:
        if sent.cost_usd is not None:
            total += float(sent.cost_usd)
        elif sent.estimated_usd and sent.requests:
            done = fresh.get(sent.counts.batch_id, sent.counts).done
            total += float(sent.estimated_usd) * min(done / sent.requests, 1.0)
    return total


def _held(hold: state.Hold | None) -> str:
    if hold is None:
        return "0 held"
    return f"{hold.requests} held ({_why(hold)})"


def _why(hold: state.Hold) -> str:
    message = hold.message
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 3] + "..."
    return f"{hold.reason}, sent again from {hold.retry_at:%H:%M:%S} UTC: {message}"


def _duration(delta: dt.timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A timestamp of the warehouse (naive, UTC) as an aware one, as the SDK gives them."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- plain lines ---------------------------------------------------------------------


class Pacer:
    """Whether a poll's plain line is written: when its figures differ from the last line
    written, and otherwise every `heartbeat` polls, so a quiet wait still shows it is alive."""

    def __init__(self, heartbeat: int = HEARTBEAT_POLLS) -> None:
        self.heartbeat = heartbeat
        self.last: tuple | None = None
        self.quiet = 0  # polls skipped since the last line

    def due(self, snap: Snapshot) -> bool:
        figures = snap.figures()
        if figures != self.last or self.quiet + 1 >= self.heartbeat:
            self.last, self.quiet = figures, 0
            return True
        self.quiet += 1
        return False


class Reporter(Protocol):
    """Where snapshots go: `show` at every poll; `end` once the partition's wait ends;
    `note` a word about the figures (a watch whose warehouse is busy); `close` at last."""

    def show(self, snap: Snapshot) -> None: ...

    def end(self, pipeline: str, date: dt.date) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class Lines:
    """Plain lines, one partition's paced apart from another's, through `write`."""

    def __init__(self, write: Log, heartbeat: int = HEARTBEAT_POLLS) -> None:
        self.write, self.heartbeat = write, heartbeat
        self.pacers: dict[Key, Pacer] = {}
        self.last_note = ""

    def show(self, snap: Snapshot) -> None:
        pacer = self.pacers.setdefault((snap.pipeline, snap.date), Pacer(self.heartbeat))
        if pacer.due(snap):
            self.write(snap.line())

    def end(self, pipeline: str, date: dt.date) -> None:
        self.pacers.pop((pipeline, date), None)

    def note(self, text: str) -> None:
        if text and text != self.last_note:
            self.write(text)
        self.last_note = text

    def close(self) -> None:
        self.pacers.clear()


# --- the live table ------------------------------------------------------------------


class Board:
    """The table of the partitions shown, drawn anew at each refresh of the display (so
    the time waited goes on between polls); put and drawn from different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[Key, Snapshot] = {}
        self._note = ""

    def put(self, snap: Snapshot) -> None:
        with self._lock:
            self._shown[(snap.pipeline, snap.date)] = snap

    def drop(self, key: Key) -> None:
        with self._lock:
            self._shown.pop(key, None)

    def note(self, text: str) -> None:
        with self._lock:
            self._note = text

    def __rich__(self) -> Table:
        with self._lock:
            shown, note = list(self._shown.values()), self._note
        return table(shown, note)


def table(shown: Sequence[Snapshot], note: str = "", now: dt.datetime | None = None) -> Table:
    """The live display: a row a partition, the holds' reasons and the note under it."""
    now = now or _now()
    # canceled and expired get a column only once some partition has them
    rarer = [word for word in RARER if any(getattr(s, word) for s in shown)]
    grid = Table(title="waiting on the Message Batches API", title_justify="left")
    grid.add_column("pipeline")
    grid.add_column("date")
    for name in ("succeeded", "errored", *rarer, "processing", "total"):
        grid.add_column(name, justify="right")
    grid.add_column("batches ended/open", justify="right")
    grid.add_column("held", justify="right")
    grid.add_column("waited", justify="right")
    grid.add_column("spent ~$", justify="right")
    for s in shown:
        extra = [str(getattr(s, word)) for word in rarer]
        grid.add_row(
            s.pipeline,
            str(s.date),
            str(s.succeeded),
            str(s.errored),
            *extra,
            str(s.processing),
            str(s.requests),
            f"{s.batches_ended}/{s.batches_open}",
            str(s.hold.requests if s.hold else 0),
            _duration(s.waited(now) if s.waiting else s.waited()),
            f"{s.spend_usd:.4f}",
        )
    notes = [f"{s.pipeline} {s.date}: {_held(s.hold)}" for s in shown if s.hold]
    notes.append("spent: loaded batches at their cost, the rest an estimate at batch price")
    grid.caption = "\n".join([*notes, *([note] if note else [])])
    grid.caption_justify = "left"
    return grid


class LiveTable:
    """The terminal display: one table, redrawn in place once a second and at every poll.
    It is started by the first snapshot and stopped when the wait ends, so whatever the
    command prints next lands below the last drawing, not inside it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.board = Board()
        self.live: Live | None = None

    def show(self, snap: Snapshot) -> None:
        self.board.put(snap)
        if self.live is None:
            self.live = Live(
                self.board,
                console=self.console,
                refresh_per_second=1,
                redirect_stdout=False,  # Dagster takes the process's stdout over in a step
                redirect_stderr=False,
            )
            self.live.start()
        self.live.refresh()

    def end(self, pipeline: str, date: dt.date) -> None:
        self.close()
        self.board.drop((pipeline, date))

    def note(self, text: str) -> None:
        self.board.note(text)

    def close(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None


# --- which reporter ------------------------------------------------------------------

_installed: Reporter | None = None  # the process's, while `reporting` runs


def reporter_or(log: Log) -> Reporter:
    """The reporter `batchpipe run` installed, else plain lines through `log` (the step's
    Dagster log, when the run is the daemon's or the webserver's)."""
    return _installed or Lines(log)


def _columns(out: TextIO) -> int | None:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except OSError:
        return None


@contextlib.contextmanager
def display(stream: TextIO) -> Iterator[Reporter]:
    """Snapshots shown on `stream`: the live table on a terminal, plain lines elsewhere.

    They are written to a copy of the stream's file descriptor, taken now: a Dagster
    step redirects the process's stdout into its compute log while it runs, and the
    display belongs to the person at the terminal, not in that log."""
    out = _own_copy(stream)
    shown: Reporter
    if stream.isatty():
        # The terminal's own width: rich would believe a COLUMNS inherited from whoever
        # started the process (a test runner, a wrapper) over the terminal it draws on.
        shown = LiveTable(Console(file=out, width=_columns(out)))
    else:
        shown = Lines(lambda line: print(line, file=out, flush=True))
    try:
        yield shown
    finally:
        shown.close()
        if out is not stream:
            out.close()


@contextlib.contextmanager
def reporting(stream: TextIO) -> Iterator[Reporter]:
    """`display(stream)`, installed as this process's reporter for `reporter_or`."""
    global _installed
    with display(stream) as shown:
        _installed = shown
        try:
            yield shown
        finally:
            _installed = None


def _own_copy(stream: TextIO) -> TextIO:
    stream.flush()  # what was printed before comes before the display
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):  # a test's captured stream
        return stream
    return os.fdopen(fd, "w", encoding=getattr(stream, "encoding", None) or "utf-8")
