"""Run a command and write its own kernel figures to the file named by BENCH_USAGE_FILE:
peak RSS (KiB) and CPU seconds (user, system), as JSON.

Linux carries a parent's resident-set high-water mark into a child across fork and
exec: a child of the benchmark (which holds the source table and the baselines, about
1 GB) would report at least that much however little it used. This small process
stands between them: its child starts from this process's few megabytes, so the
`wait4` figure is the run's own. Its CPU is the kernel's count for that child (every
thread, DuckDB's included, and any process it waited for), not this one's.

    python bench/reap.py COMMAND [ARGS...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    figures = {"maxrss_kib": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}
    Path(os.environ["BENCH_USAGE_FILE"]).write_text(json.dumps(figures))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
