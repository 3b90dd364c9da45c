"""How fast a whole partition goes through batchpipe, against DuckDB and the tutorial loop.

Issue 6's benchmark. Builds a source table of N rows (~300-character prompts) and
runs one partition of a text pipeline and of a structured-output one against one
local emulator (latency 0, its own process). Each partition runs in a process of its
own (bench/run_one.py, which calls what `batchpipe run` calls), so its peak RSS is
its own; when N > 100,000 both pipelines also run at 100,000 rows for the memory
ratio. On the same data and emulator it times the bare DuckDB COPY of the request
JSONL, a bare `read_json` of the results files, and the tutorial loop (bench/loop.py);
then a cProfile'd run at a smaller size, and the fixed cost of the real `batchpipe
run` on 10 rows. The figures and a verdict per target go to RESULTS.md.

    .venv/bin/python bench/pipeline.py [--rows 1000000] [--write bench/RESULTS.md]
        [--keep DIR] [--profile-rows 100000] [--fixed-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench import baselines, child, fixed_cost, profiling
from bench.record import write_section
from bench.report import TITLE, report
from bench.workload import OUTPUTS, Project, make_project

MEMORY_REFERENCE_ROWS = 100_000


def run_partition(project: Project, name: str, url: str, profile: Path | None = None) -> dict:
    """One partition in its own process: the driver's figures and the kernel's peak RSS."""
    argv = child.python("run_one.py", name, *(("--profile", str(profile)) if profile else ()))
    finished = child.run(argv, project.env(url))
    out = finished.json()
    return {
        **out["figures"],
        "results_files": out["results_files"],
        "peak_rss_mb": finished.peak_rss_mb,
        "process_s": finished.wall_s,
    }


def run_loop(project: Project, name: str, url: str) -> dict:
    """The tutorial loop in its own process, on the same database and emulator."""
    finished = child.run(child.python("loop.py", name, "--db", str(project.db), "--url", url), {})
    out = finished.json()
    return {**out["figures"], "rows": out["rows"], "peak_rss_mb": finished.peak_rss_mb}


def reset_emulator(url: str) -> None:
    """Drop the emulator's batches and results once a pipeline is done with them, so a
    million-row run does not leave gigabytes of state behind for the next."""
    request = urllib.request.Request(
        f"{url}/_emulator/reset", method="POST", data=b"{}", headers={"x-api-key": "bench"}
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


def measure_pipeline(project: Project, name: str, url: str) -> dict:
    """batchpipe's partition, then the baselines on its data: bare COPY, bare read_json,
    the loop; the loop's output stays in the database (`loop_<name>`) for the test."""
    run = run_partition(project, name, url)
    figures = {
        "run": run,
        "bare_read_json_s": baselines.bare_read_json_s(project.db, run["results_files"]),
        "bare_copy_s": baselines.bare_copy_s(project.db, name, project.root / f"bare-{name}.jsonl"),
        "loop": run_loop(project, name, url),
    }
    (project.root / f"bare-{name}.jsonl").unlink()
    reset_emulator(url)
    return figures


def measure(
    rows: int, keep: Path | None = None, profile_rows: int = 100_000, fixed_repeats: int = 3
) -> dict:
    """Every figure of the report. `keep`: leave the projects there (the test reads the
    main one, `keep/main`), else everything goes in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        process, url = start_emulator(root / "emulator", latency=0.0)
        try:
            return _measure_all(root, url, rows, profile_rows, fixed_repeats)
        finally:
            process.terminate()
            process.wait(timeout=60)


def _measure_all(root: Path, url: str, rows: int, profile_rows: int, fixed_repeats: int) -> dict:
    started = time.perf_counter()
    project = make_project(root / "main", rows)
    out: dict = {"rows": rows, "source_s": project.source_s, "pipelines": {}}
    for name in OUTPUTS:
        print(f"{name}: {rows:,} rows through batchpipe, the baselines, the loop", flush=True)
        out["pipelines"][name] = measure_pipeline(project, name, url)
    if rows > MEMORY_REFERENCE_ROWS:
        reference = make_project(root / "memory-reference", MEMORY_REFERENCE_ROWS)
        for name in OUTPUTS:
            print(f"{name}: {MEMORY_REFERENCE_ROWS:,} rows for the memory ratio", flush=True)
            out["pipelines"][name]["at_reference"] = run_partition(reference, name, url)
            reset_emulator(url)
    if profile_rows:
        out["profile_rows"] = min(rows, profile_rows)
        profiled = make_project(root / "profiled", out["profile_rows"])
        for name in OUTPUTS:
            print(f"{name}: a profiled run at {out['profile_rows']:,} rows", flush=True)
            stats = profiled.root / f"{name}.prof"
            out["pipelines"][name]["profiled"] = run_partition(profiled, name, url, stats)
            out["pipelines"][name]["profile"] = profiling.summary(stats)
            reset_emulator(url)
    if fixed_repeats:
        print(f"fixed cost: {fixed_repeats} x `batchpipe run` on 10 rows", flush=True)
        out["fixed"] = fixed_cost.measure(root / "fixed", url, fixed_repeats)
    out["bench_s"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    parser.add_argument("--keep", type=Path, help="keep the projects (databases) in this dir")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--profile-rows", type=int, default=100_000, help="size of the profiled run; 0: none"
    )
    parser.add_argument(
        "--fixed-repeats", type=int, default=3, help="10-row `batchpipe run`s; 0: none"
    )
    args = parser.parse_args()
    figures = measure(args.rows, args.keep, args.profile_rows, args.fixed_repeats)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    shown = " ".join(sys.argv[1:])
    text = report(figures, f".venv/bin/python bench/pipeline.py {shown}".strip())
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
