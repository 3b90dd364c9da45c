"""What a partition costs before it has any rows to work on: the real `batchpipe run`.

Start to first request built: the spawn of `.venv/bin/batchpipe run NAME --date D`
(wall clock, just before the process starts) to the STEP_SUCCESS of its `requests`
step in the Dagster event log, on a 10-row source, where building the requests takes
milliseconds, so the figure is the imports, the pipeline's loading and Dagster's
start. End to end: the same process from spawn to exit. Each project's DAGSTER_HOME
already exists (as after a user's first run); the median of a few runs is reported.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from bench import child
from bench.events import last_run_steps
from bench.workload import DATE, TEXT, make_project

ROWS = 10


def measure(root: Path, emulator_url: str, repeats: int = 3) -> dict:
    """Median seconds to the first request and to the end of a 10-row partition."""
    batchpipe = str(Path(sys.executable).with_name("batchpipe"))
    first, whole, rss = [], [], []
    for attempt in range(repeats):
        project = make_project(root / f"fixed-{attempt}", ROWS)
        finished = child.run(
            [batchpipe, "run", TEXT, "--date", DATE.isoformat()], project.env(emulator_url)
        )
        steps = last_run_steps(project.root / "dagster")
        first.append(steps["requests"].ended_at - finished.started)
        whole.append(finished.wall_s)
        rss.append(finished.peak_rss_mb)
    return {
        "rows": ROWS,
        "repeats": repeats,
        "to_first_request_s": statistics.median(first),
        "end_to_end_s": statistics.median(whole),
        "range_first": (min(first), max(first)),
        "range_whole": (min(whole), max(whole)),
        "peak_rss_mb": statistics.median(rss),
    }
