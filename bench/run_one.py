"""One partition of one pipeline through batchpipe, in a process of its own.

The benchmark runs this as a subprocess so that the peak RSS it reads is this run's
alone. It calls `batchpipe.runs.run_partition` exactly as `batchpipe run` does (the
default resource: wait for the batches, the CLI's poll interval), with timers wrapped
around the functions that split the steps into their parts: inside `batch_status`
the send (`batches.submit_partition`, of which the SDK's create call) and the wait
(`batches.wait_until_ended`); inside `results` the download
(`batches.download_results`) and the DuckDB load (`results.load_results_files`).
Step durations come from the run's STEP_SUCCESS events.

    BATCHPIPE_DB=... DAGSTER_HOME=... .venv/bin/python bench/run_one.py NAME [--profile FILE]

Prints one JSON line: the figures, the results files it downloaded, the moment the
`enriched` step succeeded, its peak RSS.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.events import last_run_steps
from bench.workload import DATE


def _is_create(args: tuple, kwargs: dict) -> bool:
    """A POST to the create endpoint (args: the client, then the path)."""
    return len(args) > 1 and str(args[1]).rstrip("/").endswith("/messages/batches")


# (figure, module, attribute, which calls): where each part of a step is timed. A part
# whose function no longer exists (renamed by a speed-up) is reported as missing, not
# guessed. The create call is the SDK's POST of a new batch, whichever way batchpipe
# makes it: encoding the body (if the SDK does), the upload, the emulator taking it in.
PARTS = (
    ("step_requests", "batchpipe.steps", "build_requests", None),
    ("step_batch_status", "batchpipe.steps", "submit", None),
    ("step_results", "batchpipe.steps", "load_results", None),
    ("step_enriched", "batchpipe.steps", "write_enriched", None),
    ("send", "batchpipe.batches", "submit_partition", None),
    ("create_call", "anthropic._base_client", "SyncAPIClient.post", _is_create),
    ("wait", "batchpipe.batches", "wait_until_ended", None),
    ("download", "batchpipe.batches", "download_results", None),
    ("load_file", "batchpipe.results", "load_results_files", None),
)


def timed(
    figures: dict[str, float],
    key: str,
    function: Callable,
    when: Callable[[tuple, dict], bool] | None = None,
) -> Callable:
    """`function`, adding its wall time to figures[key] on each call (`when` it applies),
    and the process's CPU meanwhile (every thread's: DuckDB's too) to figures[key_cpu]."""

    def wrapper(*args, **kwargs):
        if when is not None and not when(args, kwargs):
            return function(*args, **kwargs)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            figures[key] = figures.get(key, 0.0) + time.perf_counter() - started
            figures[f"{key}_cpu"] = figures.get(f"{key}_cpu", 0.0) + time.process_time() - cpu

    return wrapper


@contextmanager
def timers(figures: dict[str, float]) -> Iterator[None]:
    """Wrap each part's function for the length of the run, then put it back."""
    import importlib

    undo = []
    for key, module_name, attribute, when in PARTS:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name, None)
        if original is None:
            continue
        figures[key] = 0.0
        setattr(owner, name, timed(figures, key, original, when))
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)


def run(name: str, profile: Path | None) -> dict:
    """Run the partition (under cProfile when asked) and collect its figures."""
    from batchpipe import runs, warehouse
    from batchpipe.loader import load_pipelines

    pf = next(pf for pf in load_pipelines() if pf.pipeline.name == name)
    figures: dict[str, float] = {}
    results_dir = warehouse.state_dir() / "results"
    before = set(results_dir.glob("*.jsonl")) if results_dir.exists() else set()
    profiler = cProfile.Profile() if profile else None
    with timers(figures):
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        runs.run_partition(pf, DATE)
        if profiler:
            profiler.disable()
        figures["total"] = time.perf_counter() - started
    if profiler and profile:
        profiler.dump_stats(profile)
    steps = last_run_steps(Path(os.environ["DAGSTER_HOME"]))
    figures.update({step: s.duration_s for step, s in steps.items()})
    files = sorted(str(p) for p in set(results_dir.glob("*.jsonl")) - before)
    return {
        "figures": figures,
        "results_files": files,
        # When the enriched partition was written (time.time()), to set beside the moment
        # the emulator says the last batch ended.
        "enriched_at": steps["enriched"].ended_at if "enriched" in steps else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the pipeline to run")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the run here")
    args = parser.parse_args()
    print(json.dumps(run(args.name, args.profile)))


if __name__ == "__main__":
    main()
