"""A backfill on one DuckDB file's one writer against four runs at once on a DuckLake.

Issue 19's benchmark. The same 8 partitions of ROWS rows each (the pipeline benchmark's
~300-character text prompts, bench/workload.py) go through the real `batchpipe run`,
one process per partition, against one emulator in its own process:

- **file**: a DuckDB file, one run at a time, as its writer pool of 1 makes Dagster do;
- **lake x4**: a DuckLake (catalog in a throwaway PostgreSQL, scripts/localpg.py, data
  in Parquet files), four runs at once, as BATCHPIPE_WRITERS' default makes it;
- **lake x1**: the same DuckLake, one run at a time: each run's time without the others
  on the same two cores, from which a larger machine's figure for 4 vs 1 follows (four
  lanes of these runs, longest first, as nothing but the catalog is shared then).

Each configuration is run at two emulator latencies: 0 (the client's work alone, what
two cores can do) and `--latency` seconds per batch (a batch that takes time to
process, as every real one does; Anthropic's take minutes to hours). Every partition is
checked: ROWS rows, all succeeded, and the emulator billed each request once.

    .venv/bin/python bench/scale.py [--rows 50000] [--latency 10] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench import child
from bench.record import heading, write_section
from bench.workload import OUTPUT_TABLES, SOURCE_SQL, TEXT, pipeline_yaml
from scripts import localpg

TITLE = "Backfill: a file's one writer against four DuckLake runs"
DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(8)]
LANES = 4
TARGET = 2.0  # issue 19: four DuckLake runs at least twice a file's one writer
STEPS = ("requests", "batch_status", "results", "enriched")
# The pipeline benchmark's rows, spread over the eight days.
SOURCE = SOURCE_SQL.replace(
    "DATE '2026-11-03' AS added_on", f"DATE '{DAYS[0]}' + (i % {len(DAYS)})::INTEGER AS added_on"
)


@dataclass(frozen=True)
class Run:
    day: dt.date
    wall_s: float
    peak_rss_mb: float
    steps: dict[str, float]  # Dagster's STEP_SUCCESS durations
    conflicts: int  # DuckLake commits retried in this run (its step log says each)


@dataclass(frozen=True)
class Backfill:
    name: str
    lanes: int
    latency: float
    makespan_s: float
    runs: list[Run]
    rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.makespan_s


@contextmanager
def environment(settings: dict[str, str]) -> Iterator[None]:
    """os.environ with `settings`, for what this process does on a project itself."""
    saved = dict(os.environ)
    os.environ.update(settings)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_project(root: Path, rows: int, db: str, data_path: str | None) -> dict[str, str]:
    """The source table and pipeline file of a new project; the environment its runs get."""
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / f"{TEXT}.yaml").write_text(pipeline_yaml(TEXT))
    env = {
        "BATCHPIPE_DB": db,
        "BATCHPIPE_PIPELINES": str(root / "pipelines"),
        "BATCHPIPE_STATE": str(root / "state"),
        "DAGSTER_HOME": str(root / "dagster"),
        **({"BATCHPIPE_DATA_PATH": data_path} if data_path else {}),
    }
    with environment(env):
        import dagster as dg

        from batchpipe import lake, state, warehouse
        from batchpipe.runs import prepare_dagster_home

        if data_path:  # as `batchpipe warehouse init` does
            lake.init(db, warehouse.duckdb_settings())
        with warehouse.connect() as con:
            state.create(con)
            con.execute(SOURCE.format(rows=rows * len(DAYS)))
        lake.close_all()
        # Dagster's storage made once, before four runs would race to make it.
        prepare_dagster_home(Path(env["DAGSTER_HOME"]))
        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
    return env


def backfill(
    name: str, env: dict[str, str], url: str, lanes: int, latency: float, rows: int
) -> Backfill:
    """Every day through `batchpipe run`, `lanes` processes at a time."""
    run_env = {
        **{k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"},
        **env,
        "ANTHROPIC_BASE_URL": url,
    }

    def one(day: dt.date) -> child.Finished:
        argv = [str(Path(sys.executable).with_name("batchpipe")), "run", TEXT, "--date", str(day)]
        return child.run(argv, run_env)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
        finished = dict(zip(DAYS, pool.map(one, DAYS), strict=True))
    makespan = time.perf_counter() - started
    with environment(env):
        steps = step_times()
    runs = [
        Run(day, f.wall_s, f.peak_rss_mb, *steps[day.isoformat()]) for day, f in finished.items()
    ]
    return Backfill(name, lanes, latency, makespan, runs, rows * len(DAYS))


def step_times() -> dict[str, tuple[dict[str, float], int]]:
    """Per partition: its run's step durations, and how many commits it retried."""
    import dagster as dg

    wanted = {dg.DagsterEventType.STEP_SUCCESS}
    out: dict[str, tuple[dict[str, float], int]] = {}
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            day = run.tags.get("dagster/partition", "")
            steps = {
                e.dagster_event.step_key.rsplit("__", 1)[-1]: (
                    e.dagster_event.event_specific_data.duration_ms / 1000
                )
                for e in instance.all_logs(run.run_id, of_type=wanted)
            }
            conflicts = sum(
                "lost a race to another writer" in (e.user_message or "")
                for e in instance.all_logs(run.run_id)
            )
            out[day] = (steps, conflicts)
    return out


def check(env: dict[str, str], url: str, rows: int) -> None:
    """Every partition whole, every row succeeded, each request billed once; then the
    emulator is emptied for the next configuration."""
    with environment(env):
        from batchpipe import lake, warehouse

        with warehouse.connect(read_only=True) as con:
            counts = con.execute(
                f"SELECT partition_date, count(*), count(DISTINCT id), "
                f"count(*) FILTER (result_status = 'succeeded') "
                f"FROM {OUTPUT_TABLES[TEXT]} GROUP BY 1 ORDER BY 1"
            ).fetchall()
        lake.close_all()
    expected = [(day, rows, rows, rows) for day in DAYS]
    if counts != expected:
        raise RuntimeError(f"the output is not whole: {counts[:3]}... (expected {rows} a day)")
    ledger = _emulator(url, "GET", "/_emulator/ledger")
    billed = ledger["requests_billed"]
    # A request goes out as `<custom_id>-<submission token>`: one sent twice shows here.
    distinct = len({row["custom_id"].rsplit("-", 1)[0] for row in ledger["data"]})
    if not billed == distinct == rows * len(DAYS):
        raise RuntimeError(f"the emulator billed {billed} lines, {distinct} distinct")
    _emulator(url, "POST", "/_emulator/reset")


def _emulator(url: str, method: str, path: str) -> dict:
    request = urllib.request.Request(
        f"{url}{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"x-api-key": "bench"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def lanes_estimate(durations: list[float], lanes: int) -> float:
    """The makespan of `durations` on `lanes` lanes, longest first to the freest lane."""
    ends = [0.0] * lanes
    for d in sorted(durations, reverse=True):
        ends[ends.index(min(ends))] += d
    return max(ends)


def measure(root: Path, rows: int, latencies: list[float]) -> list[Backfill]:
    """The three configurations at each latency, each on a project of its own."""
    results: list[Backfill] = []
    server = localpg.start(root / "localpg")
    try:
        for latency in latencies:
            process, url = start_emulator(root / f"emulator-{latency:g}", latency=latency)
            try:
                for name, lanes, lake in (("file", 1, False), ("lake x4", LANES, True),
                                          ("lake x1", 1, True)):  # fmt: skip
                    project = root / f"{name.replace(' ', '-')}-{latency:g}"
                    if lake:
                        database = f"bench_{len(results)}"
                        localpg.create_database(server, database)
                        db = f"ducklake:postgres:{server.dsn(database)}"
                        env = make_project(project, rows, db, str(project / "lake"))
                    else:
                        env = make_project(project, rows, str(project / "bench.duckdb"), None)
                    print(f"{name}, latency {latency:g} s: {len(DAYS)} partitions ...", flush=True)
                    done = backfill(name, env, url, lanes, latency, rows)
                    results.append(done)
                    check(env, url, rows)
                    print(f"   {done.makespan_s:.1f} s", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        localpg.stop(server)
    return results


def report(results: list[Backfill], rows: int, took_s: float, command: str) -> str:
    by = {(b.name, b.latency): b for b in results}
    latencies = sorted({b.latency for b in results})
    lines = [
        heading(TITLE, command),
        f"{len(DAYS)} partitions of {rows:,} rows (the pipeline benchmark's ~300-character "
        "text prompts), each a real `batchpipe run` process, against one emulator in its own "
        "process. **file**: a DuckDB file, one run at a time (its writer pool of 1); "
        f"**lake x{LANES}**: a DuckLake (catalog in a local PostgreSQL 15, data in Parquet "
        f"files on the same disk), {LANES} runs at once; **lake x1**: the same DuckLake one "
        "run at a time, each run alone on the cores. Every partition was checked whole and "
        f"every request billed once. The benchmark took {took_s:.0f} s.",
        "",
        "| emulator latency | file: backfill | lake x4: backfill | lake x4 / file | "
        "lake x1: backfill | larger machine: lake x4 (4 lanes of lake x1 runs) / file |",
        "|---|---|---|---|---|---|",
    ]
    for latency in latencies:
        file, four, one = (by[(n, latency)] for n in ("file", f"lake x{LANES}", "lake x1"))
        ideal = lanes_estimate([r.wall_s for r in one.runs], LANES)
        lines.append(
            f"| {latency:g} s a batch | {file.makespan_s:.1f} s ({file.rows_per_s:,.0f} rows/s) "
            f"| {four.makespan_s:.1f} s ({four.rows_per_s:,.0f} rows/s) "
            f"| **{file.makespan_s / four.makespan_s:.2f}x** "
            f"| {one.makespan_s:.1f} s | {file.makespan_s / ideal:.2f}x ({ideal:.1f} s) |"
        )
    slowest = max(latencies)
    file, four, one = (by[(n, slowest)] for n in ("file", f"lake x{LANES}", "lake x1"))
    ratio = file.makespan_s / four.makespan_s
    ideal = file.makespan_s / lanes_estimate([r.wall_s for r in one.runs], LANES)
    alone = statistics.median(r.wall_s for r in one.runs)
    together = statistics.median(r.wall_s for r in four.runs)
    lines += [
        "",
        f"Target: at least {TARGET:g}x the file's throughput on this machine (latency "
        f"{slowest:g} s): {'meets' if ratio >= TARGET else '**misses**'} ({ratio:.2f}x); "
        f"a machine with a core for each run: {ideal:.2f}x. The arithmetic: a DuckLake run "
        f"alone takes {alone:.1f} s, and {together:.1f} s with {LANES - 1} others on "
        f"{os.cpu_count()} cores, {together / alone:.1f}x as long, so {LANES} lanes give "
        f"{LANES * alone / together:.2f} runs' worth of progress at a time. Four runs "
        "share the cores with the emulator and PostgreSQL: the lanes can only overlap what "
        "is not CPU, the batches' processing time, which is why the ratio rises with the "
        "latency (real batches take minutes to hours).",
    ]
    lines += [
        "",
        "Median per run (seconds; Dagster's STEP_SUCCESS durations; wall is the process, "
        "spawn to exit; retries are DuckLake commits that lost a race and ran again):",
        "",
        "| configuration | latency | wall | " + " | ".join(STEPS) + " | peak RSS | retries |",
        "|---|---|---|" + "---|" * len(STEPS) + "---|---|",
    ]
    for b in results:
        cells = [statistics.median(r.steps.get(s, 0.0) for r in b.runs) for s in STEPS]
        lines.append(
            f"| {b.name} | {b.latency:g} s | {statistics.median(r.wall_s for r in b.runs):.1f} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + f" | {statistics.median(r.peak_rss_mb for r in b.runs):.0f} MB "
            f"| {sum(r.conflicts for r in b.runs)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows a partition (50,000)")
    parser.add_argument("--latency", type=float, default=10.0, help="seconds a batch takes (10)")
    parser.add_argument("--write", type=Path, help="record the results in this file")
    args = parser.parse_args()
    reason = localpg.unavailable()
    if reason:
        sys.exit(f"error: {reason}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        results = measure(Path(tmp), args.rows, [0.0, args.latency])
    command = " ".join([".venv/bin/python", "bench/scale.py", *sys.argv[1:]])
    section = report(results, args.rows, time.perf_counter() - started, command)
    print(section)
    if args.write:
        write_section(args.write, TITLE, section)


if __name__ == "__main__":
    main()
