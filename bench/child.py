"""Run one measured process and read its own peak RSS and CPU time from the kernel.

Every partition, loop and CLI run is its own process, so a peak RSS or a CPU time is
that run's alone (not the benchmark's, not the emulator's, not an earlier run's). It is
read by
`bench/reap.py`, a small process between the two: Linux would otherwise carry this
process's own high-water mark (about 1 GB) into every child's `ru_maxrss`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finished:
    """A measured process: its output, wall time from spawn to exit, peak RSS and CPU."""

    stdout: str
    started: float  # time.time() just before the spawn, to compare with event timestamps
    wall_s: float
    peak_rss_mb: float
    user_s: float = 0.0  # the kernel's CPU seconds for the process (wait4's rusage)
    sys_s: float = 0.0

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds: what the process cost the machine, all threads."""
        return self.user_s + self.sys_s

    def json(self) -> dict:
        """The last stdout line, where the bench's own scripts print their figures."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run(argv: list[str], env: dict[str, str], timeout_s: float = 3600) -> Finished:
    """Run `argv` to its end; raise with its stderr if it fails.

    Output goes to temporary files, not pipes, so a chatty child never blocks and
    the wall time is the child's own.
    """
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory() as scratch,
    ):
        usage_file = Path(scratch) / "usage.json"
        started = time.time()
        clock = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "reap.py"), *argv],
            stdout=out,
            stderr=err,
            env={**env, "BENCH_USAGE_FILE": str(usage_file)},
            cwd=REPO,
            start_new_session=True,  # so a timeout can stop the run behind the reaper too
        )
        status = _wait(process, timeout_s)
        wall_s = time.perf_counter() - clock
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {code}:\n{stderr[-4000:]}")
        usage = json.loads(usage_file.read_text())
    # Linux reports ru_maxrss in KiB.
    return Finished(
        stdout, started, wall_s, usage["maxrss_kib"] / 1024, usage["user_s"], usage["sys_s"]
    )


def _wait(process: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return status
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise TimeoutError(f"{process.args} ran longer than {timeout_s} s")
        time.sleep(0.02)


def python(script: str, *args: str) -> list[str]:
    """argv for one of the bench's scripts under this interpreter (the venv's)."""
    return [sys.executable, str(REPO / "bench" / script), *args]
