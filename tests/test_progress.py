"""Issue 18, what a person sees while a partition waits: `batchpipe run`'s progress at every
poll (a live table on a terminal, plain lines in a log) and `batchpipe status --watch`.

The slow tests run the CLI as a process against an emulator process that takes its time
(`--latency`, `--requests-per-second`), as the real API does; the fast ones hold the plain
line's figures and pacing to what README says."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import duckdb
import pytest

from batchpipe import progress, state
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.runs import run_partition
from tests.support import advance_emulator_clock, batchpipe, pipeline, query

DAY = "2026-11-03"
ROWS = 10  # of the partition: at 2 requests a second, 5 s of rising counts
PROGRESS = re.compile(
    r"^product_descriptions 2026-11-03: (\d+) succeeded, (\d+) errored, (\d+) processing "
    r"of (\d+) request\(s\); batches (\d+) ended, (\d+) open; 0 held; waited \S+; "
    r"~\$[\d.]+ spent so far \(an estimate at batch price\)$"
)


def _keep_rows(project: Path, rows: int = ROWS) -> None:
    """The partition cut to `rows` products, so a slow emulator still ends within seconds."""
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute(
            "DELETE FROM products WHERE added_on = ? AND product_id NOT IN (SELECT product_id "
            "FROM products WHERE added_on = ? ORDER BY product_id LIMIT ?)",
            [DAY, DAY, rows],
        )


def _progress(stdout: str) -> list[tuple[int, ...]]:
    """(succeeded, errored, processing, requests, ended, open) of each progress line."""
    return [tuple(map(int, m.groups())) for m in map(PROGRESS.match, stdout.splitlines()) if m]


@pytest.mark.slow
def test_a_run_without_a_terminal_writes_a_line_per_poll_as_the_counts_rise(
    demo_db: Path, private_emulator
) -> None:
    """20 s before the emulator starts, then 2 requests a second: the run writes its first
    poll at once, a heartbeat line while nothing moves, and a line at each poll whose
    counts rose, all before its summary."""
    _keep_rows(demo_db)
    private_emulator("--requests-per-second", "2", latency=20)
    run = batchpipe("run", "product_descriptions", "--date", DAY)
    assert run.returncode == 0, run.stdout + run.stderr

    lines = _progress(run.stdout)
    succeeded = [line[0] for line in lines]
    assert len(set(succeeded)) >= 3, run.stdout  # rising counts, seen as they rose
    assert succeeded == sorted(succeeded)
    assert lines[0] == (0, 0, ROWS, ROWS, 0, 1)
    assert lines[-1] == (ROWS, 0, 0, ROWS, 1, 0)
    # Nothing moves for 20 s of polls a second apart: one line, then one every 10 polls.
    assert 2 <= succeeded.count(0) <= 4, run.stdout
    summary = run.stdout.index("enriched:     10 rows")
    assert run.stdout.rindex("spent so far") < summary  # the wait's lines come first


def _on_a_terminal(*args: str, columns: int = 220) -> tuple[int, str]:
    """The CLI with a pseudo-terminal for its stdin, stdout and stderr, as a person runs it
    in a shell: its exit status and everything the terminal received."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm-256color"},
        close_fds=True,
    )
    os.close(follower)
    received = bytearray()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=30), received.decode(errors="replace")


def _plain(screen: str) -> str:
    """What the terminal received, less the escape sequences that redraw it."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", screen)


@pytest.mark.slow
def test_a_run_on_a_terminal_draws_a_live_table_then_prints_its_summary_below(
    demo_db: Path, private_emulator
) -> None:
    _keep_rows(demo_db)
    # Nothing is processed for 6 s: the first poll sees 0 done even on a loaded machine.
    private_emulator("--requests-per-second", "5", latency=6)
    status, screen = _on_a_terminal("run", "product_descriptions", "--date", DAY)
    text = _plain(screen)
    assert status == 0, text
    assert "\x1b[" in screen  # drawn in place, not as plain lines
    assert not _progress(text)
    assert "waiting on the Message Batches API" in text
    for header in ("succeeded", "errored", "processing", "total", "held", "waited"):
        assert header in text, text
    row = r"product_descriptions\s*│\s*2026-11-03\s*│\s*{}\s*│\s*0\s*│\s*{}\s*│\s*10\s*│\s*{}\s*│"
    assert re.search(row.format(0, 10, "0/1"), text), text  # the first poll
    final = list(re.finditer(row.format(10, 0, "1/0"), text))
    assert final, text
    # The display stopped before the summary: it comes after the last drawing, whole.
    assert text.index("enriched:     10 rows", final[-1].end()) > final[-1].end()


@pytest.mark.slow
def test_status_watch_shows_an_open_partition_until_it_ends_and_writes_nothing(
    demo_db: Path, private_emulator
) -> None:
    """A run that did not wait leaves its batch open (the sensor's case). The watch shows
    it live from the API until it ends upstream, then exits; the warehouse is only read."""
    _keep_rows(demo_db)
    # The batch stays open until the watch has shown it open (a fixed latency raced the
    # watch's start on a loaded machine): then the clock moves past the latency.
    url = private_emulator("--requests-per-second", "5", latency=3600)
    run_partition(pipeline(), dt.date.fromisoformat(DAY), BatchpipeResource(wait=False))
    before = query(demo_db, "SELECT state, succeeded FROM batchpipe_batches")
    assert before == [("submitted", 0)]

    watch = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "status", "--watch", "--every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    first = watch.stdout.readline()
    advance_emulator_clock(url, 3600)
    rest, errors = watch.communicate(timeout=120)
    watched = subprocess.CompletedProcess(watch.args, watch.returncode, first + rest, errors)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = _progress(watched.stdout)
    assert lines[0][4:] == (0, 1), watched.stdout  # open
    assert lines[-1] == (ROWS, 0, 0, ROWS, 1, 0)
    assert len({line[0] for line in lines}) >= 2
    assert watched.stdout.splitlines()[-1] == "every watched partition has ended"
    assert query(demo_db, "SELECT state, succeeded FROM batchpipe_batches") == before


@pytest.mark.slow
def test_status_watch_beside_a_waiting_run_never_blocks_its_writes(
    demo_db: Path, private_emulator
) -> None:
    """The run records every poll in the warehouse while the watch reads it each second:
    the watch opens it read-only, briefly, and never waits on the run's lock, so both
    finish; the watch's last figures are the run's."""
    _keep_rows(demo_db)
    # The batch stays open 15 s: the watch, a new process that imports the SDK, must start
    # while it is open even on two loaded cores (6 s was sometimes too short).
    private_emulator("--requests-per-second", "5", latency=15)
    run = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", DAY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    first = ""
    while not first:  # the run has sent its batch and polled it once
        line = run.stdout.readline()
        assert line, run.stderr.read() if run.stderr else "the run ended early"
        first = line if PROGRESS.match(line.strip()) else ""

    watched = batchpipe("status", "--watch", "--every", "0.5")
    rest, errors = run.communicate(timeout=120)
    assert run.returncode == 0, rest + errors
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert _progress(watched.stdout)[-1] == (ROWS, 0, 0, ROWS, 1, 0), watched.stdout
    assert "enriched:     10 rows (10 succeeded" in rest


def _snap(succeeded: int = 0, **changes: object) -> progress.Snapshot:
    figures: dict = dict(
        pipeline="p",
        date=dt.date(2026, 11, 3),
        succeeded=succeeded,
        errored=0,
        processing=10 - succeeded,
        canceled=0,
        expired=0,
        batches_ended=0,
        batches_open=1,
        hold=None,
        since=dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC),
        spend_usd=0.0,
        taken_at=dt.datetime(2026, 11, 3, 12, 1, 5, tzinfo=dt.UTC),
    )
    return progress.Snapshot(**(figures | changes))


def test_a_quiet_wait_writes_a_line_every_ten_polls_and_every_change_at_once() -> None:
    written: list[str] = []
    lines = progress.Lines(written.append)
    for poll in range(25):  # figures unchanged, time waited going on
        lines.show(_snap(taken_at=dt.datetime(2026, 11, 3, 12, 1, poll, tzinfo=dt.UTC)))
    assert len(written) == 3  # polls 1, 11 and 21
    lines.show(_snap(succeeded=4))
    lines.show(_snap(succeeded=4))
    assert len(written) == 4
    lines.end("p", dt.date(2026, 11, 3))
    lines.show(_snap(succeeded=4))  # a new wait starts with a line
    assert len(written) == 5


def test_the_plain_line_says_every_figure_and_why_requests_are_held() -> None:
    hold = state.Hold(
        "rate_limit",
        "Number of request tokens has exceeded your per-minute rate limit",
        40,
        dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 3, 12, 2, 30, tzinfo=dt.UTC),
    )
    line = _snap(3, errored=1, processing=5, expired=1, hold=hold, spend_usd=0.01234).line()
    assert line == (
        "p 2026-11-03: 3 succeeded, 1 errored, 1 expired, 5 processing of 10 request(s); "
        "batches 0 ended, 1 open; 40 held (rate_limit, sent again from 12:02:30 UTC: Number "
        "of request tokens has exceeded your per-minute rate limit); waited 1m05s; "
        "~$0.0123 spent so far (an estimate at batch price)"
    )


def test_spend_so_far_is_the_loaded_cost_plus_the_done_share_of_each_open_estimate() -> None:
    def batch(batch_id: str, done: int, cost: float | None) -> progress.Sent:
        counts = progress.Counts(batch_id, cost is not None, 100 - done, done, 0, 0, 0, None)
        return progress.Sent(counts, 100, 1.0, cost)

    rec = progress.Recorded(None, (batch("a", 100, 0.4), batch("b", 10, None)))
    assert progress.spent(rec, []) == pytest.approx(0.4 + 0.1)  # b as last recorded
    fresher = progress.Counts("b", False, 50, 45, 5, 0, 0, None)
    assert progress.spent(rec, [fresher]) == pytest.approx(0.4 + 0.5)  # b as just polled
