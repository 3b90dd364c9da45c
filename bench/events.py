"""Step times from a Dagster instance's event log.

Both the bench's driver and the real `batchpipe run` record their runs under the
DAGSTER_HOME the bench sets, so the step durations (and, for the fixed cost, the
wall-clock moment a step ended) come from Dagster's own events, not from the bench's
guess at where a step begins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Step:
    started_at: float  # time.time() of STEP_START
    ended_at: float  # time.time() of STEP_SUCCESS
    duration_s: float  # Dagster's own duration of the step


@dataclass(frozen=True)
class Timeline:
    """A run from its RUN_START to its RUN_SUCCESS, with its steps in the order they
    started: what the fixed cost's arithmetic is made of."""

    run_started_at: float
    run_ended_at: float
    steps: dict[str, Step] = field(default_factory=dict)


def last_run_steps(dagster_home: Path) -> dict[str, Step]:
    """The most recent run's succeeded steps by asset name (`requests`, `results`, ...)."""
    return last_run_timeline(dagster_home).steps


def last_run_timeline(dagster_home: Path) -> Timeline:
    """The most recent run's start, end and succeeded steps (by asset name)."""
    import dagster as dg

    kinds = dg.DagsterEventType
    wanted = {kinds.RUN_START, kinds.RUN_SUCCESS, kinds.STEP_START, kinds.STEP_SUCCESS}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs(limit=1)
        entries = list(instance.all_logs(run.run_id, of_type=wanted))
    run_times: dict[str, float] = {}
    started: dict[str, float] = {}
    steps: dict[str, Step] = {}
    for entry in entries:
        event = entry.dagster_event
        if event.event_type in (kinds.RUN_START, kinds.RUN_SUCCESS):
            run_times[event.event_type.value] = entry.timestamp
            continue
        step = event.step_key.rsplit("__", 1)[-1]
        if event.event_type == kinds.STEP_START:
            started[step] = entry.timestamp
        else:
            duration = event.event_specific_data.duration_ms / 1000
            steps[step] = Step(started.get(step, entry.timestamp), entry.timestamp, duration)
    first = min((s.started_at for s in steps.values()), default=0.0)
    last = max((s.ended_at for s in steps.values()), default=0.0)
    return Timeline(
        run_times.get(kinds.RUN_START.value, first),
        run_times.get(kinds.RUN_SUCCESS.value, last),
        dict(sorted(steps.items(), key=lambda item: item[1].started_at)),
    )
