"""Peak RSS of one partition's run process at several sizes: does memory grow with rows?

The main benchmark compares 1,000,000 rows with 100,000, where DuckDB's share has not
yet reached its cap (`BATCHPIPE_MEMORY_LIMIT`). Going past 1,000,000 shows whether the
peak keeps climbing with the partition or stays where the cap puts it. Only the
partitions run here (no baselines, no loop), each in its own process, as in the main
benchmark, so a size costs about as long as its partition.

    .venv/bin/python bench/memory.py --rows 100000 1000000 2000000 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench.pipeline import reset_emulator, run_partition
from bench.record import heading, write_section
from bench.workload import OUTPUTS, make_project

TITLE = "Peak memory by partition size"


def measure(sizes: list[int]) -> dict[int, dict[str, dict[str, float]]]:
    """{rows: {pipeline: {peak_rss_mb, process_s}}}; each project is dropped once run."""
    figures: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        process, url = start_emulator(root / "emulator", latency=0.0)
        try:
            for rows in sizes:
                project = make_project(root / f"rows-{rows}", rows)
                figures[rows] = {}
                for name in OUTPUTS:
                    print(f"{name}: {rows:,} rows", flush=True)
                    run = run_partition(project, name, url)
                    figures[rows][name] = {k: run[k] for k in ("peak_rss_mb", "process_s")}
                    reset_emulator(url)
                shutil.rmtree(project.root)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return figures


def report(figures: dict[int, dict[str, dict[str, float]]], command: str) -> str:
    sizes = sorted(figures)
    lines = [
        heading(TITLE, command),
        "Peak RSS of the run process (the kernel's high-water mark, read by `bench/reap.py`) "
        "and, after the slash, its ratio to the size before.\n",
        "| rows | " + " | ".join(OUTPUTS) + " |",
        "|---|" + "---|" * len(OUTPUTS),
    ]
    for before, rows in zip([None, *sizes], sizes, strict=False):
        cells = []
        for name in OUTPUTS:
            mb = figures[rows][name]["peak_rss_mb"]
            ratio = f" / {mb / figures[before][name]['peak_rss_mb']:.2f}x" if before else ""
            cells.append(f"{mb:,.0f} MB{ratio}")
        lines.append(f"| {rows:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    args = parser.parse_args()
    figures = measure(sorted(args.rows))
    command = "python bench/memory.py --rows " + " ".join(str(r) for r in sorted(args.rows))
    text = report(figures, command)
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
