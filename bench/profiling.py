"""A cProfile of a partition run, cut down to what a reader of RESULTS.md needs.

Two short tables: batchpipe's own functions by cumulative time (which step and
which statement the time is under), and every function by own time (where the
interpreter actually spends it: DuckDB's execute, JSON, sockets, Dagster). Profiling
slows Python code, not DuckDB's or the emulator's, so shares are a guide, not figures.
"""

from __future__ import annotations

import pstats
import sysconfig
from pathlib import Path

Key = tuple[str, int, str]
# Prefixes cut from a function's file: the venv's packages, the repo, the standard library.
PREFIXES = (
    "site-packages/",
    str(Path(__file__).resolve().parent.parent) + "/",
    sysconfig.get_paths()["stdlib"] + "/",
)


def _where(key: Key) -> str:
    """`package/module.py:line(function)` with the site-packages or repo prefix dropped."""
    path, line, function = key
    if path == "~":
        return function  # a builtin, e.g. <method 'execute' of 'duckdb...' objects>
    for marker in PREFIXES:
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({function})"


def _rows(entries: list[tuple[Key, tuple]], total: float) -> list[str]:
    lines = ["| function | calls | own s | cumulative s | of the run |", "|---|---|---|---|---|"]
    for key, (_, calls, own, cumulative, _) in entries:
        where = _where(key).replace("|", "\\|")
        lines.append(
            f"| `{where}` | {calls:,} | {own:.2f} | {cumulative:.2f} | {cumulative / total:.0%} |"
        )
    return lines


def _statements(stats: dict, total: float, top: int) -> list[str]:
    """DuckDB's execute, split by the function that called it: which statements cost."""
    executes = [
        key for key in stats if key[0] == "~" and "duckdb" in key[2] and "execute" in key[2]
    ]
    callers: dict[Key, list[float]] = {}
    for key in executes:
        for caller, (_, calls, _, cumulative) in stats[key][4].items():
            entry = callers.setdefault(caller, [0, 0.0])
            entry[0] += calls
            entry[1] += cumulative
    lines = ["| called from | statements | s | of the run |", "|---|---|---|---|"]
    for caller, (calls, seconds) in sorted(callers.items(), key=lambda c: -c[1][1])[:top]:
        where = _where(caller).replace("|", "\\|")
        lines.append(f"| `{where}` | {calls:,} | {seconds:.2f} | {seconds / total:.0%} |")
    return lines


def summary(stats_file: Path, top: int = 12) -> str:
    """Markdown: batchpipe's functions by cumulative time, DuckDB statements by caller,
    all functions by own time."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in stats.values())
    ours = [
        item
        for item in stats.items()
        if "/batchpipe/" in item[0][0] and "/emulator/" not in item[0][0]
    ]
    by_cumulative = sorted(ours, key=lambda item: item[1][3], reverse=True)[:top]
    by_own = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return "\n".join(
        [
            f"batchpipe's functions by cumulative time (profiled run: {total:.1f} s):",
            "",
            *_rows(by_cumulative, total),
            "",
            "DuckDB statements by the function that ran them:",
            "",
            *_statements(stats, total, top),
            "",
            "All functions by own time:",
            "",
            *_rows(by_own, total),
        ]
    )
