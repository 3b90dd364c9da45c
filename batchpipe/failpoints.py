"""Named points where a test can kill the process, to prove a crash there is recoverable.

`BATCHPIPE_KILL_AT=after_create batchpipe run ...` makes the run SIGKILL itself right
after the batch create call returns and before its id is recorded: the worst moment
for money. The check is one environment lookup, so it costs nothing in production.
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
)


def kill_point(name: str) -> None:
    if os.environ.get("BATCHPIPE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
