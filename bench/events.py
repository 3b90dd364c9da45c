"""Step times from a Dagster instance's event log.

Both the bench's driver and the real `batchpipe run` record their runs under the
DAGSTER_HOME the bench sets, so the step durations (and, for the fixed cost, the
wall-clock moment a step ended) come from Dagster's own events, not from the bench's
guess at where a step begins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Step:
    started_at: float  # time.time() of STEP_START
    ended_at: float  # time.time() of STEP_SUCCESS
    duration_s: float  # Dagster's own duration of the step


def last_run_steps(dagster_home: Path) -> dict[str, Step]:
    """The most recent run's succeeded steps by asset name (`requests`, `results`, ...)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs(limit=1)
        wanted = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
        started: dict[str, float] = {}
        steps: dict[str, Step] = {}
        for entry in instance.all_logs(run.run_id, of_type=wanted):
            event = entry.dagster_event
            step = event.step_key.rsplit("__", 1)[-1]
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[step] = entry.timestamp
            else:
                duration = event.event_specific_data.duration_ms / 1000
                steps[step] = Step(started.get(step, entry.timestamp), entry.timestamp, duration)
    return steps
