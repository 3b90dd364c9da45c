"""What a partition costs before it has any rows to work on, and where that time goes.

The real `batchpipe run` on a 10-row source, where building and sending ten requests
takes milliseconds, so the figures are the imports, the pipeline's loading and
Dagster's own work:

- start to first request built: the spawn of `.venv/bin/batchpipe run NAME --date D`
  (wall clock, just before the process starts) to the STEP_SUCCESS of its `requests`
  step in the Dagster event log; end to end: the same process from spawn to exit;
- the run's timeline from the event log (spawn to RUN_START, each step and the gap
  before it, RUN_SUCCESS to exit), whose parts add up to the end-to-end figure;
- `batchpipe validate FILE`, spawn to exit;
- the import time of `anthropic`, `dagster`, `duckdb` and `batchpipe.runs` (whole,
  with everything it imports), each in a fresh interpreter, and that of a bare
  interpreter started the way every measured process is (through bench/reap.py).

Each project's DAGSTER_HOME already exists (as after a user's first run); the median
of a few runs is reported.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from bench import child
from bench.events import Timeline, last_run_timeline
from bench.workload import DATE, TEXT, make_project

ROWS = 10
MODULES = ("anthropic", "dagster", "duckdb", "batchpipe.runs")


def measure(root: Path, emulator_url: str, repeats: int = 3) -> dict:
    """Median seconds to the first request and to the end of a 10-row partition, the
    median run's timeline, `validate`'s median, and the imports' medians."""
    batchpipe = str(Path(sys.executable).with_name("batchpipe"))
    runs = []
    for attempt in range(repeats):
        project = make_project(root / f"fixed-{attempt}", ROWS)
        env = project.env(emulator_url)
        finished = child.run([batchpipe, "run", TEXT, "--date", DATE.isoformat()], env)
        timeline = last_run_timeline(project.root / "dagster")
        validated = child.run([batchpipe, "validate", str(project.pipelines / f"{TEXT}.yaml")], env)
        runs.append((finished, timeline, validated))
    first = [t.steps["requests"].ended_at - f.started for f, t, _ in runs]
    whole = [f.wall_s for f, _, _ in runs]
    validate = [v.wall_s for _, _, v in runs]
    median_run = sorted(runs, key=lambda r: r[0].wall_s)[len(runs) // 2]
    return {
        "rows": ROWS,
        "repeats": repeats,
        "to_first_request_s": statistics.median(first),
        "end_to_end_s": statistics.median(whole),
        "range_first": (min(first), max(first)),
        "range_whole": (min(whole), max(whole)),
        "peak_rss_mb": statistics.median(f.peak_rss_mb for f, _, _ in runs),
        "cpu_s": statistics.median(f.cpu_s for f, _, _ in runs),
        "validate_s": statistics.median(validate),
        "range_validate": (min(validate), max(validate)),
        "timeline": timeline_parts(median_run[1], median_run[0]),
        "imports": import_times(repeats),
    }


def timeline_parts(timeline: Timeline, finished: child.Finished) -> list[tuple[str, float]]:
    """The run cut at its events, in order: each part is the time to the next event, so
    the parts add up to the process's wall time."""
    spawn = timeline.run_started_at - finished.started
    parts = [("spawn to RUN_START (interpreter, imports, loading, Dagster)", spawn)]
    previous = timeline.run_started_at
    for name, step in timeline.steps.items():
        parts.append((f"Dagster before `{name}`", step.started_at - previous))
        parts.append((f"step `{name}`", step.ended_at - step.started_at))
        previous = step.ended_at
    parts.append(("last step to RUN_SUCCESS", timeline.run_ended_at - previous))
    exited = finished.started + finished.wall_s
    parts.append(("RUN_SUCCESS to exit (closing the instance)", exited - timeline.run_ended_at))
    return parts


def import_times(repeats: int) -> dict[str, float]:
    """Median seconds to import each module in a fresh interpreter (what it costs a
    process from nothing), and a bare interpreter's spawn to exit through reap.py."""
    env = dict(os.environ)
    times = {
        "interpreter": statistics.median(
            child.run([sys.executable, "-c", "pass"], env).wall_s for _ in range(repeats)
        )
    }
    for module in MODULES:
        code = (
            f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        )
        times[module] = statistics.median(
            float(child.run([sys.executable, "-c", code], env).stdout) for _ in range(repeats)
        )
    return times
