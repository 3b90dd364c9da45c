"""What every benchmark records with its figures, and where: bench/RESULTS.md, one
section per benchmark, each replaced by its own next run and the others kept."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path


def heading(title: str, command: str) -> str:
    """`## title (date, commit)` and the machine and command, so a figure can be redone."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"## {title} ({dt.date.today()}, commit {commit})\n\n"
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count() or 0} cores. Command: `{command}`\n"
    )


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section headed `## title` in `path` (or append it), keeping the others."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    head, found, rest = old.partition(f"## {title}")
    tail = rest[rest.find("\n## ") + 1 :] if found and "\n## " in rest else ""
    path.write_text(head.rstrip() + "\n\n" + section + ("\n" + tail if tail else ""))
