"""Named points where a test can kill the process, to prove a crash there is recoverable.

`BATCHPIPE_KILL_AT=after_create batchpipe run ...` makes the run SIGKILL itself right
after the batch create call returns and before its id is recorded: the worst moment
for money. The check is one environment lookup, so it costs nothing in production.
A value that names no point raises `UnknownKillPoint` rather than never firing; the CLI
calls `check_kill_at` before a run starts, so a misspelt value fails at once.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "before_create",  # intent committed, create not yet called
    "after_create",  # batch exists upstream, its id not yet recorded
    "mid_download",  # part of a results file on disk
    "mid_results_load",  # results inserted, batch not yet marked loaded (uncommitted)
    "mid_enriched_write",  # output partition deleted, new rows not yet committed
    "after_conflict",  # a DuckLake commit lost a race and rolled back, not yet run again
    "after_upload",  # a file is in the Files API, its file id not yet recorded
)


ENV = "BATCHPIPE_KILL_AT"


class UnknownKillPoint(ValueError):
    """BATCHPIPE_KILL_AT is set to a name that is not in POINTS, so it would never fire.

    A plain ValueError, not a BatchpipeError: this module imports nothing of batchpipe's
    (errors.py brings in Dagster), and a broken test harness is no analyst's mistake."""

    def __init__(self, value: str) -> None:
        super().__init__(f"{ENV}={value!r} is not a kill point; known points: {', '.join(POINTS)}")


def check_kill_at() -> None:
    """Raise UnknownKillPoint now if BATCHPIPE_KILL_AT is set to an unknown name."""
    value = os.environ.get(ENV)
    if value and value not in POINTS:
        raise UnknownKillPoint(value)


def kill_point(name: str) -> None:
    value = os.environ.get(ENV)
    if value == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif value and value not in POINTS:
        raise UnknownKillPoint(value)
