"""`make scale-demo`: a backfill through the Dagster daemon, four partitions writing a
DuckLake at once.

A DuckDB file takes one writing process, so its backfill runs one partition at a time; a
DuckLake (catalog in PostgreSQL, data in Parquet files) takes BATCHPIPE_WRITERS runs at
once. This shows it end to end on one machine, with nothing left behind:

1. a throwaway PostgreSQL (scripts/localpg.py) with a database `batchpipe`;
2. the DuckLake catalog there (`batchpipe warehouse init`) and the demo tables
   (`batchpipe demo-data`), an emulator with a little latency so runs visibly overlap;
3. batchpipe's dagster.yaml (4 runs at once, the QueuedRunCoordinator, Dagster's own
   storage in the same PostgreSQL) and `dagster-daemon run`;
4. a backfill of product_descriptions 2026-11-01..08, waited for until every run ended;
   then how many ran at once, the rows and cost per partition, and the emulator's ledger.

Every file lives in one temporary directory: the catalog is in the throwaway server, so
Parquet files kept after it stops would be orphans nobody can read. The daemon, the
emulator and PostgreSQL are stopped at the end, on an error or Ctrl-C too.

    .venv/bin/python scripts/scale_demo.py [--latency 1.0]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import localpg

REPO = Path(__file__).resolve().parent.parent

PIPELINE = "product_descriptions"
JOB = f"{PIPELINE}__job"
FIRST_DAY = dt.date(2026, 11, 1)
DAYS = [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(8)]
WRITERS = 4
ROWS_PER_DAY = 30  # pipelines/demo_data.sql: 300 products over ten days
# What `dagster asset materialize --config-json` passes in the README: the runs wait for
# their batches, so each run of the backfill writes its whole partition itself.
RUN_CONFIG = {"resources": {"batchpipe": {"config": {"wait": True}}}}
TIMEOUT_S = 600.0


def _interrupt(signum: int, frame: object) -> NoReturn:
    """A SIGTERM (a `make` stopped, `kill`) unwinds like Ctrl-C, so cleanup runs."""
    raise KeyboardInterrupt


def batchpipe(*args: str) -> str:
    """The CLI as a person runs it; its output, or the script stops with its error."""
    done = subprocess.run(
        [sys.executable, "-m", "batchpipe", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"batchpipe {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.rstrip()


@contextlib.contextmanager
def postgres(root: Path) -> Iterator[localpg.Server]:
    """A throwaway server with the database `batchpipe`, stopped (and its data removed)
    whatever happens."""
    reason = localpg.unavailable()
    if reason:
        raise RuntimeError(reason)
    server = localpg.start(root)
    try:
        localpg.create_database(server, "batchpipe")
        yield server
    finally:
        localpg.stop(server)


@contextlib.contextmanager
def emulator(state_dir: Path, latency: float, log: IO[bytes]) -> Iterator[str]:
    """One emulator every run of the daemon talks to (ANTHROPIC_BASE_URL), so its ledger
    is the referee of what all of them were billed."""
    from batchpipe.emulator.process import start

    process, url = start(state_dir, latency=latency, output=log)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def daemon(workspace: Path, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` in a process group of its own: the code server and the run
    processes it starts join that group, so stopping the group leaves none behind."""
    command = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, which the daemon turns into a clean shutdown of its threads and code
    server; then SIGKILL for anything of the group still there after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)  # anyone of the group left?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def launch_backfill(instance: Any, workspace: Path) -> str:
    """Store a backfill of the job for DAYS with RUN_CONFIG, as the UI's Launch backfill
    does; the daemon's backfill loop submits its runs and the run queue starts them,
    WRITERS at a time. (`dagster job backfill` takes no run config: its runs would only
    submit their batches and leave the rest to the sensor, a minute later.)"""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)])) as ctx:
        location = ctx.create_request_context().get_code_location("batchpipe")
        (repository,) = location.get_repositories().values()
        partition_set = next(ps for ps in repository.get_partition_sets() if ps.job_name == JOB)
        backfill = PartitionBackfill(
            backfill_id=make_new_backfill_id(),
            partition_set_origin=partition_set.get_remote_origin(),
            status=BulkActionStatus.REQUESTED,
            partition_names=DAYS,
            from_failure=False,
            reexecution_steps=None,
            tags={},
            backfill_timestamp=time.time(),
            run_config=RUN_CONFIG,
        )
        instance.add_backfill(backfill)
    return backfill.backfill_id


def wait_for_runs(instance: Any, backfill_id: str, daemon_process: subprocess.Popen) -> list:
    """Poll the instance until the backfill has a run per day and every run has ended;
    a line whenever the counts change. The run records, with their start and end times."""
    from dagster import RunsFilter
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    deadline = time.monotonic() + TIMEOUT_S
    said = ""
    while time.monotonic() < deadline:
        if daemon_process.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {daemon_process.returncode}")
        backfill = instance.get_backfill(backfill_id)
        if backfill.error is not None:
            raise RuntimeError(f"the backfill failed: {backfill.error.message}")
        records = instance.get_run_records(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        statuses = collections.Counter(r.dagster_run.status.value.lower() for r in records)
        line = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none yet"
        if line != said:
            print(f"   runs: {line}", flush=True)
            said = line
        ended = all(r.dagster_run.is_finished for r in records)
        if len(records) == len(DAYS) and ended and backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return sorted(records, key=lambda r: r.start_time or 0)
        time.sleep(1)
    raise RuntimeError(f"the backfill did not finish within {TIMEOUT_S:.0f} s")


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment (an end at the same instant as a start first)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def report_runs(records: list) -> int:
    """Each run's partition, start, end and status; the peak of runs at once."""
    origin = min(r.start_time for r in records)
    print(f"   {'partition':<12} {'start':>7} {'end':>7} {'took':>6}  status")
    for r in records:
        run = r.dagster_run
        start, end = r.start_time - origin, r.end_time - origin
        print(
            f"   {run.tags.get('dagster/partition', '?'):<12} {start:6.1f}s {end:6.1f}s "
            f"{end - start:5.1f}s  {run.status.value}"
        )
    return peak_overlap([(r.start_time, r.end_time) for r in records])


def billed(url: str) -> tuple[int, int]:
    """The emulator's ledger: requests billed, and distinct requests among them (each
    goes out as `<custom_id>-<submission token>`, so a request paid twice shows)."""
    with urllib.request.urlopen(f"{url}/_emulator/ledger", timeout=10) as response:
        rows = json.loads(response.read())["data"]
    return len(rows), len({row["custom_id"].rsplit("-", 1)[0] for row in rows})


def partition_rows() -> list[tuple[str, int, int, float]]:
    """Rows, succeeded rows and cost per partition, read from the DuckLake read-only."""
    from batchpipe import lake, warehouse

    try:
        with warehouse.connect(read_only=True) as con:
            return con.execute(
                f"SELECT partition_date::VARCHAR, count(*), "
                "count(*) FILTER (result_status = 'succeeded'), sum(cost_usd) "
                f"FROM {PIPELINE} GROUP BY 1 ORDER BY 1"
            ).fetchall()
    finally:
        lake.close_all()  # its PostgreSQL connections, before the server stops


def demo(tmp: Path, latency: float) -> bool:
    """The whole demo inside `tmp`; True when every check held."""
    from dagster import DagsterInstance

    from batchpipe.cli import dev_environment, write_workspace
    from batchpipe.runs import prepare_dagster_home

    logs = tmp / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        print("== PostgreSQL (scripts/localpg.py)", flush=True)
        server = stack.enter_context(postgres(tmp / "localpg"))
        print(f"   port {server.port}, database batchpipe")
        emulator_log = stack.enter_context((logs / "emulator.log").open("wb"))
        url = stack.enter_context(emulator(tmp / "emulator", latency, emulator_log))
        print(f"== emulator at {url}, batches end {latency:g} s after their create")
        os.environ.pop("ANTHROPIC_API_KEY", None)
        settings = {
            "BATCHPIPE_DB": f"ducklake:postgres:{server.dsn('batchpipe')}",
            "BATCHPIPE_DATA_PATH": str(tmp / "lake"),
            "BATCHPIPE_STATE": str(tmp / "state"),
            "BATCHPIPE_PIPELINES": "pipelines",
            "BATCHPIPE_WRITERS": str(WRITERS),
            "DAGSTER_HOME": str(tmp / "dagster"),
            "ANTHROPIC_BASE_URL": url,
        }
        # Absolute paths, as `batchpipe dev` gives its webserver and daemon: the code
        # server and the runs are other processes.
        os.environ.update(dev_environment({**os.environ, **settings}, REPO))
        for name in ("BATCHPIPE_DB", "BATCHPIPE_DATA_PATH", "DAGSTER_HOME"):
            print(f"   {name}={os.environ[name]}")

        print("== batchpipe warehouse init", flush=True)
        print(batchpipe("warehouse", "init"))
        print("== batchpipe demo-data", flush=True)
        print(batchpipe("demo-data"))

        home = Path(os.environ["DAGSTER_HOME"])
        prepare_dagster_home(home)
        workspace = write_workspace(home)
        daemon_log = stack.enter_context((logs / "daemon.log").open("wb"))
        process = stack.enter_context(daemon(workspace, daemon_log))
        print(f"== dagster-daemon run -w {workspace} (pid {process.pid})", flush=True)
        instance = stack.enter_context(DagsterInstance.get())
        started = time.monotonic()
        try:
            backfill_id = launch_backfill(instance, workspace)
            print(f"== backfill {backfill_id}: {JOB} {DAYS[0]}..{DAYS[-1]}", flush=True)
            records = wait_for_runs(instance, backfill_id, process)
        except Exception:
            print(f"-- the daemon's log ({logs / 'daemon.log'}), its end:")
            daemon_log.flush()
            print((logs / "daemon.log").read_text(errors="replace")[-4000:])
            raise
        print(f"   every run ended {time.monotonic() - started:.1f} s after the launch")
        peak = report_runs(records)
        print(f"   at most {peak} runs at once (max_concurrent_runs {WRITERS})")

        print(f"== {PIPELINE} per partition (read-only, from the DuckLake)")
        rows = partition_rows()
        for day, count, succeeded, cost in rows:
            print(f"   {day}: {count} rows, {succeeded} succeeded, ${cost:.4f}")
        print(f"== batchpipe costs {PIPELINE} --by pipeline")
        print(batchpipe("costs", PIPELINE, "--by", "pipeline"))
        lines, distinct = billed(url)
        print(f"== emulator ledger: {lines} requests billed, {distinct} distinct")

    checks = {
        "every run succeeded": all(r.dagster_run.status.value == "SUCCESS" for r in records),
        f"{WRITERS} runs at once at the peak": peak == WRITERS,
        f"{ROWS_PER_DAY} rows, all succeeded, in each of the {len(DAYS)} partitions": [
            (day, count, succeeded) for day, count, succeeded, _ in rows
        ]
        == [(day, ROWS_PER_DAY, ROWS_PER_DAY) for day in DAYS],
        "each request billed once": lines == distinct == ROWS_PER_DAY * len(DAYS),
    }
    print("== checks")
    for what, held in checks.items():
        print(f"   {'ok    ' if held else 'FAILED'} {what}")
    return all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--latency", type=float, default=1.0, help="seconds the emulator takes per batch (1)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="scale-demo-") as tmp:
            ok = demo(Path(tmp), args.latency)
    except KeyboardInterrupt:
        print("interrupted: the daemon, the emulator and PostgreSQL are stopped", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(f"== done in {took:.0f} s; the daemon, the emulator and PostgreSQL are stopped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
