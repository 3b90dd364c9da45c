"""How fast a whole partition goes through batchpipe, against bare DuckDB baselines.

Builds a source table of N rows, writes two pipelines (text and structured output),
and runs one partition of each through Dagster in this process against a local
emulator (latency 0, its own process). Step times come from the Dagster run's
step durations (STEP_SUCCESS events); inside the results step, the download and
the DuckDB load are timed separately by wrapping `batches.download_results` and
`results.load_results_file`, and in `batch_status` the send and the wait by wrapping
`batches.submit_partition` and `batches.wait_until_ended`. Baselines on the same
data: the bare COPY statement that writes the request JSONL, and a bare
`read_json` of the results file batchpipe downloaded.

    .venv/bin/python bench/pipeline.py [--rows 100000] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.record import heading, write_section
from tests.support import start_emulator

DATE = dt.date(2026, 11, 3)
STEPS = ("requests", "batch_status", "results", "enriched")
COMMON = """\
source:
  table: items
  key: id
  partition_column: added_on
request:
  model: claude-haiku-4-5
  max_tokens: 100
  prompt: "Summarise: {{ title }} {{ body }}"
  max_batch_requests: 100000
partitions:
  start: 2026-11-01
"""
PIPELINES = {
    "text_bench": "output:\n  table: text_out\n  column: summary\n",
    "struct_bench": (
        "output:\n  table: struct_out\n  schema:\n"
        "    label: {type: enum, values: [a, b, c]}\n    score: {type: number}\n"
    ),
}
# ~300 characters varying per row: a few hashed words, then filler cut to length.
SOURCE_SQL = """
CREATE TABLE items AS
SELECT i::BIGINT AS id,
       'Item ' || i || ' ' || md5(i::VARCHAR)[1:8] AS title,
       left(md5(i::VARCHAR) || ' ' || md5((i * 7)::VARCHAR) || ' '
            || repeat('lorem ipsum dolor sit amet ', 12), 290 + (i % 21)::INTEGER) AS body,
       DATE '2026-11-03' AS added_on
FROM range({rows}) t(i)
"""
BARE_REQUESTS_SQL = """
COPY (SELECT id::VARCHAR AS custom_id,
             json_object('model', 'claude-haiku-4-5', 'max_tokens', 100,
                         'messages', json_array(json_object('role', 'user',
                             'content', concat('Summarise: ', title, ' ', body)))) AS params
      FROM items) TO '{path}' (FORMAT json)
"""


def timed(figures: dict[str, float], key: str, function: Callable) -> Callable:
    """`function`, adding its wall time to figures[key] on each call."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            figures[key] = figures.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def run_pipeline(path: Path) -> tuple[dict[str, float], list[Path]]:
    """One partition end to end: wall time, Dagster step durations, the results files."""
    import dagster as dg

    from batchpipe import batches, results, runs, warehouse
    from batchpipe.defs.resources import BatchpipeResource
    from batchpipe.loader import load_file

    figures: dict[str, float] = {}
    captured: list = []
    materialize, download = dg.materialize, batches.download_results
    load, send, wait = results.load_results_file, batches.submit_partition, batches.wait_until_ended

    def capture(*args, **kwargs):
        result = materialize(*args, **kwargs)
        captured.append(result)
        return result

    results_dir = warehouse.state_dir() / "results"
    before = set(results_dir.glob("*.jsonl")) if results_dir.exists() else set()
    dg.materialize = capture
    batches.download_results = timed(figures, "download", download)
    results.load_results_file = timed(figures, "load_file", load)
    batches.submit_partition = timed(figures, "send", send)
    batches.wait_until_ended = timed(figures, "wait", wait)
    try:
        started = time.perf_counter()
        runs.run_partition(load_file(path), DATE, BatchpipeResource(poll_seconds=0.05, wait=True))
        figures["total"] = time.perf_counter() - started
    finally:
        dg.materialize, batches.download_results = materialize, download
        results.load_results_file = load
        batches.submit_partition, batches.wait_until_ended = send, wait
    for event in captured[0].all_events:
        if event.event_type_value == "STEP_SUCCESS":
            step = event.step_key.rsplit("__", 1)[-1]
            figures[step] = event.event_specific_data.duration_ms / 1000
    return figures, sorted(set(results_dir.glob("*.jsonl")) - before)


def measure(rows: int) -> dict:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        db, pipelines = tmp_path / "bench.duckdb", tmp_path / "pipelines"
        pipelines.mkdir()
        os.environ.pop("ANTHROPIC_API_KEY", None)
        os.environ.pop("DAGSTER_HOME", None)
        os.environ["BATCHPIPE_DB"] = str(db)
        os.environ["BATCHPIPE_STATE"] = str(tmp_path / "state")
        os.environ["BATCHPIPE_PIPELINES"] = str(pipelines)
        process, url = start_emulator(tmp_path / "emulator", latency=0.0)
        os.environ["ANTHROPIC_BASE_URL"] = url
        try:
            with duckdb.connect(str(db)) as con:
                started = time.perf_counter()
                con.execute(SOURCE_SQL.format(rows=rows))
                source_s = time.perf_counter() - started
            out: dict = {"rows": rows, "source_s": source_s, "pipelines": {}}
            files: dict[str, list[Path]] = {}
            for name, output in PIPELINES.items():
                path = pipelines / f"{name}.yaml"
                path.write_text(f"name: {name}\n{COMMON}{output}")
                out["pipelines"][name], files[name] = run_pipeline(path)
            with duckdb.connect(str(db)) as con:
                started = time.perf_counter()
                con.execute(BARE_REQUESTS_SQL.format(path=tmp_path / "x.jsonl"))
                out["bare_requests_s"] = time.perf_counter() - started
                for name, paths in files.items():
                    listed = ", ".join(f"'{p}'" for p in paths)
                    started = time.perf_counter()
                    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json([{listed}])")
                    out["pipelines"][name]["bare_read_json"] = time.perf_counter() - started
                    con.execute("DROP TABLE t")
        finally:
            process.terminate()
            process.wait(timeout=30)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


TITLE = "Pipeline throughput"


def report(figures: dict, args: str) -> str:
    rows, bare = figures["rows"], figures["bare_requests_s"]
    scale = 1_000_000 / rows
    lines = [
        heading(TITLE, f".venv/bin/python bench/pipeline.py{args}"),
        f"{rows:,} source rows (built in {figures['source_s']:.2f} s), one partition per "
        "pipeline through Dagster in process, emulator at latency 0 in its own process. "
        "Step times are the Dagster run's step durations; `batch_status` waits for the "
        "batch, so it includes the emulator's processing; `results` = download + load.\n",
        "| figure | "
        + " | ".join(figures["pipelines"])
        + " | target |\n|---|"
        + "---|" * (len(figures["pipelines"]) + 1),
    ]

    def row(label: str, cells: list[str], target: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    pipes = list(figures["pipelines"].values())
    row("whole partition", [f"{p['total']:.2f} s" for p in pipes])
    # Below 1,000,000 rows this is only a linear extrapolation (fixed costs included),
    # so it gets no verdict.
    row(
        "whole partition at 1,000,000 rows"
        + ("" if rows >= 1_000_000 else " (linear extrapolation)"),
        [
            f"{p['total'] * scale:.1f} s" + (_ok(p["total"] * scale <= 60) if scale <= 1 else "")
            for p in pipes
        ],
        "≤ 60 s",
    )
    for step in STEPS:
        row(f"step `{step}`", [f"{p.get(step, 0):.2f} s" for p in pipes])
    row(
        "  batch_status: of which submit (build + POST)",
        [f"{p.get('send', 0):.2f} s" for p in pipes],
    )
    row(
        "  batch_status: of which waiting for the emulator",
        [f"{p.get('wait', 0):.2f} s" for p in pipes],
    )
    row("  results: of which download", [f"{p.get('download', 0):.2f} s" for p in pipes])
    row("  results: of which load results file", [f"{p.get('load_file', 0):.2f} s" for p in pipes])
    row("bare COPY of the request JSONL", [f"{bare:.2f} s" for _ in pipes])
    row(
        "building requests / bare COPY",
        [f"{p['requests'] / bare:.1f}x{_ok(p['requests'] / bare <= 2)}" for p in pipes],
        "≤ 2x",
    )
    row("bare read_json of the results file", [f"{p['bare_read_json']:.2f} s" for p in pipes])
    row(
        "loading results (load results file) / read_json",
        [
            f"{p['load_file'] / p['bare_read_json']:.1f}x"
            f"{_ok(p['load_file'] / p['bare_read_json'] <= 2)}"
            for p in pipes
        ],
        "≤ 2x",
    )
    rss = figures["peak_rss_mb"]
    row(
        "peak RSS of this process (both runs; not the emulator)",
        [f"{rss:,.0f} MB{_ok(rss <= 1536)}"] + [""] * (len(pipes) - 1),
        "≤ 1.5 GB",
    )
    lines.append("")
    for name, p in figures["pipelines"].items():
        slowest = max(STEPS, key=lambda s: p.get(s, 0))
        lines.append(
            f"Where the time goes ({name}): `{slowest}` is the slowest step, "
            f"{p[slowest]:.2f} s = {p[slowest] / p['total']:.0%} of the partition."
        )
    return "\n".join(lines) + "\n"


def _ok(met: bool) -> str:
    return "" if met else " (MISSES)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    args = parser.parse_args()
    shown = f" --rows {args.rows}" + (f" --write {args.write}" if args.write else "")
    text = report(measure(args.rows), shown)
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
