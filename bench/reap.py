"""Run a command and write its own peak RSS (KiB) to the file named by BENCH_RSS_FILE.

Linux carries a parent's resident-set high-water mark into a child across fork and
exec: a child of the benchmark (which holds the source table and the baselines, about
1 GB) would report at least that much however little it used. This small process
stands between them: its child starts from this process's few megabytes, so the
`wait4` figure is the run's own.

    python bench/reap.py COMMAND [ARGS...]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    Path(os.environ["BENCH_RSS_FILE"]).write_text(str(usage.ru_maxrss))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
