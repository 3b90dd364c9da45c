"""A million-row partition under the API's processing-queue limit (issue 18).

The real API takes at most so many batch requests queued at once across an organization
(200,000 for the lowest tier); a larger partition must go out as room appears, unattended.
This builds the benchmark's source table, starts an emulator with `--queue-limit`, runs
`batchpipe run` of the text pipeline (100,000 requests a batch) in a process of its own,
and records its wall time, the emulator's own account of the limit (429s, peak queue, any
call made before a retry-after had passed) and that every row was answered once.

    .venv/bin/python bench/queue_limit.py [--rows 1000000] [--queue-limit 200000]
        [--latency 5] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench import child
from bench.record import heading, write_section
from bench.workload import DATE, OUTPUT_TABLES, TEXT, make_project

TITLE = "A partition under the processing-queue limit"


def measure(rows: int, queue_limit: int, latency: float) -> dict:
    import duckdb

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        # A batch must fit in an empty queue: at most half the limit, and 100,000.
        per_batch = min(100_000, queue_limit // 2)
        project = make_project(root / "project", rows, max_batch_requests=per_batch)
        (project.pipelines / "struct_bench.yaml").unlink()  # one pipeline: the text one
        process, url = start_emulator(
            root / "emulator", latency=latency, extra_args=("--queue-limit", str(queue_limit))
        )
        try:
            argv = [sys.executable, "-m", "batchpipe", "run", TEXT, "--date", DATE.isoformat()]
            finished = child.run(argv, project.env(url))
            with urllib.request.urlopen(f"{url}/_emulator/limits", timeout=10) as response:
                record = json.loads(response.read())
        finally:
            process.terminate()
            process.wait(timeout=30)
        with duckdb.connect(str(project.db), read_only=True) as con:
            answered, distinct, lines, batches = con.execute(
                f"SELECT (SELECT count(*) FILTER (result_status = 'succeeded') "
                f"FROM {OUTPUT_TABLES[TEXT]}), "
                "(SELECT count(DISTINCT request_hash) FROM batchpipe_results), "
                "(SELECT count(*) FROM batchpipe_results), "
                "(SELECT count(*) FROM batchpipe_batches)"
            ).fetchone()
    return {
        "rows": rows,
        "per_batch": per_batch,
        "queue_limit": queue_limit,
        "latency_s": latency,
        "wall_s": round(finished.wall_s, 1),
        "peak_rss_mb": round(finished.peak_rss_mb),
        "batches": batches,
        "answered": answered,
        "result_lines": lines,
        "distinct_requests": distinct,
        **record,
    }


def report(figures: dict, command: str) -> str:
    once = figures["answered"] == figures["rows"] == figures["result_lines"]
    within = figures["peak_queued"] <= figures["queue_limit"]
    return (
        heading(TITLE, command)
        + f"""
| figure | value |
|---|---|
| rows in the partition | {figures["rows"]:,} |
| emulator | `--queue-limit {figures["queue_limit"]:,} --latency {figures["latency_s"]}` |
| wall time of `batchpipe run` | {figures["wall_s"]} s |
| peak RSS of `batchpipe run` | {figures["peak_rss_mb"]} MB |
| batches (a canary of 10, then {figures["per_batch"]:,} a batch) | {figures["batches"]} |
| creates refused by the queue limit (429) | {figures["refused"]} |
| calls made before a 429's retry-after had passed | {figures["refused_early"]} |
| most requests queued upstream at once | {figures["peak_queued"]:,} |
| rows answered / result lines / distinct requests | {figures["answered"]:,} / \
{figures["result_lines"]:,} / {figures["distinct_requests"]:,} |

Verdict: {"completed unattended" if once else "NOT every row answered once"}; the queue \
{"never passed" if within else "PASSED"} its limit; every row answered once: {once}.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queue-limit", type=int, default=200_000)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    args = parser.parse_args()
    figures = measure(args.rows, args.queue_limit, args.latency)
    text = report(figures, f".venv/bin/python bench/queue_limit.py {' '.join(sys.argv[1:])}")
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
