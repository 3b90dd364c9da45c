"""How fast and how cheaply a whole partition goes through batchpipe, against DuckDB's
floor and the tutorial loop.

Issues 6 and 21's benchmark. Builds a source table of N rows (~300-character prompts)
and runs one partition of a text pipeline and of a structured-output one against one
local emulator (latency 0, its own process). Each partition runs in a process of its
own (bench/run_one.py, which calls what `batchpipe run` calls), so its peak RSS and
its CPU (user + system, from the kernel) are its own. On the same data and emulator,
each in a process of its own too: DuckDB's floor (bench/floor.py: the bare COPY of the
request JSONL, a bare `read_json` of the results files, a CREATE TABLE AS of the
enriched shape) and the tutorial loop (bench/loop.py), whose table batchpipe's must
equal row for row. The emulator says when each partition's last batch ended, set
beside the moment its enriched partition was written.

Then one partition of `--big-rows` rows (text only, batches of 100,000) with the disk
under its state sampled while it runs; when N > 100,000 both pipelines at 100,000 rows
for the memory ratio; a cProfile'd run at a smaller size; and the fixed cost of the
real `batchpipe run` on 10 rows and of `batchpipe validate`. The figures and a verdict
per target go to RESULTS.md.

    .venv/bin/python bench/pipeline.py [--rows 1000000] [--big-rows 10000000]
        [--write bench/RESULTS.md] [--keep DIR] [--profile-rows 100000] [--fixed-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench import checks, child, disk, fixed_cost, profiling
from bench.record import write_section
from bench.report import TITLE, report
from bench.workload import OUTPUTS, TEXT, Project, make_project

MEMORY_REFERENCE_ROWS = 100_000


def run_partition(project: Project, name: str, url: str, profile: Path | None = None) -> dict:
    """One partition in its own process: the driver's figures and the kernel's peak RSS
    and CPU seconds for that process (the emulator's are not in them)."""
    argv = child.python("run_one.py", name, *(("--profile", str(profile)) if profile else ()))
    finished = child.run(argv, project.env(url))
    out = finished.json()
    return {
        **out["figures"],
        "results_files": out["results_files"],
        "enriched_at": out.get("enriched_at"),
        "peak_rss_mb": finished.peak_rss_mb,
        "process_s": finished.wall_s,
        "cpu_s": finished.cpu_s,
        "user_s": finished.user_s,
        "sys_s": finished.sys_s,
    }


def batches_ended(project: Project, name: str, url: str, run: dict) -> dict:
    """The partition's batches, when the emulator says the last one ended, and how long
    after that the enriched partition was written. Read before the emulator is reset."""
    ids = checks.batch_ids(project.db, name)
    ended = checks.last_batch_end(url, ids)
    written = run.get("enriched_at")
    return {
        "batch_ids": ids,
        "last_batch_ended_at": ended,
        "last_batch_to_enriched_s": written - ended if written and ended else None,
    }


def run_floor(project: Project, name: str, url: str, run: dict) -> dict:
    """DuckDB's floor in its own process, on the run's database and results files (or,
    if the run kept none, the same results fetched from the emulator)."""
    files, source = run["results_files"], "batchpipe's"
    if not files:  # batchpipe deletes its files once loaded
        files = checks.download_results(url, run["batch_ids"], project.root / f"floor-{name}")
        source = "the emulator's"
    out = project.root / f"floor-{name}.jsonl"
    argv = child.python("floor.py", name, "--db", str(project.db), "--out", str(out), *files)
    finished = child.run(argv, {})
    out.unlink()
    shutil.rmtree(project.root / f"floor-{name}", ignore_errors=True)
    done = finished.json()
    return {
        **done["figures"],
        "rows": done["rows"],
        "results_from": source,
        "cpu_s": finished.cpu_s,
        "process_s": finished.wall_s,
        "peak_rss_mb": finished.peak_rss_mb,
    }


def run_loop(project: Project, name: str, url: str) -> dict:
    """The tutorial loop in its own process, on the same database and emulator."""
    finished = child.run(child.python("loop.py", name, "--db", str(project.db), "--url", url), {})
    out = finished.json()
    return {
        **out["figures"],
        "rows": out["rows"],
        "peak_rss_mb": finished.peak_rss_mb,
        "cpu_s": finished.cpu_s,
        "process_s": finished.wall_s,
    }


def reset_emulator(url: str) -> None:
    """Drop the emulator's batches and results once a pipeline is done with them, so a
    million-row run does not leave gigabytes of state behind for the next."""
    request = urllib.request.Request(
        f"{url}/_emulator/reset", method="POST", data=b"{}", headers={"x-api-key": "bench"}
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


def measure_pipeline(project: Project, name: str, url: str) -> dict:
    """batchpipe's partition, then on its data the floor and the loop; the loop's output
    stays in the database (`loop_<name>`), the reference batchpipe's must equal."""
    run = run_partition(project, name, url)
    run.update(batches_ended(project, name, url, run))
    figures = {
        "run": run,
        "floor": run_floor(project, name, url, run),
        "loop": run_loop(project, name, url),
        "row_for_row": checks.row_for_row(project.db, name),
    }
    reset_emulator(url)
    return figures


def measure_big(root: Path, emulator_state: Path, url: str, rows: int) -> dict:
    """One text partition of `rows` rows, the disk under its state and the emulator's
    sampled while it runs; then every row once, answered by the emulator."""
    project = make_project(root, rows)
    roots = {"state": root / "state", "emulator": emulator_state}
    with disk.Sampler(roots) as sampled:
        try:
            run = run_partition(project, TEXT, url)
        except (RuntimeError, TimeoutError) as error:  # reported; the other figures stand
            reset_emulator(url)
            return {"rows": rows, "source_s": project.source_s, "error": _last_line(error)}
    run.update(batches_ended(project, TEXT, url, run))
    reset_emulator(url)
    return {
        "rows": rows,
        "source_s": project.source_s,
        "run": run,
        "every_row": checks.every_row_once(project.db, TEXT),
        "disk_peak": sampled.peak,
        "disk_end": sampled.end,
        "warehouse_bytes": disk.used_bytes(project.db) + disk.used_bytes(Path(f"{project.db}.wal")),
    }


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def measure(
    rows: int,
    keep: Path | None = None,
    profile_rows: int = 100_000,
    fixed_repeats: int = 3,
    big_rows: int = 0,
) -> dict:
    """Every figure of the report. `keep`: leave the projects there (the test reads the
    main one, `keep/main`, and the big one, `keep/big`), else everything goes in a
    temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        process, url = start_emulator(root / "emulator", latency=0.0)
        try:
            return _measure_all(root, url, rows, profile_rows, fixed_repeats, big_rows, keep)
        finally:
            process.terminate()
            process.wait(timeout=60)


def _measure_all(
    root: Path,
    url: str,
    rows: int,
    profile_rows: int,
    fixed_repeats: int,
    big_rows: int,
    keep: Path | None,
) -> dict:
    started = time.perf_counter()
    project = make_project(root / "main", rows)
    out: dict = {"rows": rows, "source_s": project.source_s, "pipelines": {}}
    for name in OUTPUTS:
        print(f"{name}: {rows:,} rows through batchpipe, DuckDB's floor, the loop", flush=True)
        out["pipelines"][name] = measure_pipeline(project, name, url)
    if big_rows:
        print(f"{TEXT}: {big_rows:,} rows in one partition", flush=True)
        out["big"] = measure_big(root / "big", root / "emulator", url, big_rows)
        if keep is None:
            shutil.rmtree(root / "big")  # gigabytes the later runs need not share a disk with
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
        print(f"fixed cost: {fixed_repeats} x `batchpipe run` on 10 rows, `validate`", flush=True)
        out["fixed"] = fixed_cost.measure(root / "fixed", url, fixed_repeats)
    out["bench_s"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--big-rows", type=int, default=10_000_000, help="one text partition this big; 0: none"
    )
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
    figures = measure(args.rows, args.keep, args.profile_rows, args.fixed_repeats, args.big_rows)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    shown = " ".join(sys.argv[1:])
    text = report(figures, f".venv/bin/python bench/pipeline.py {shown}".strip())
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
