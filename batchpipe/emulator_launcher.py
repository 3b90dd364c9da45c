"""Start the local emulator in the background once, and reuse it across runs.

Without an API key batchpipe talks to the emulator. When ANTHROPIC_BASE_URL is
not set either, the first run starts one on a free loopback port, records its
address beside the database, and every later run (CLI, Dagster run workers,
`dagster dev`) finds it there. A file lock keeps two runs that start at the
same moment from starting two emulators.

This is the product starting the emulator, so it lives outside `batchpipe/emulator/`:
the product may start the emulator (as a process), the emulator never imports the product.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from batchpipe import warehouse
from batchpipe.errors import BatchApiError

START_TIMEOUT = 30.0


def ensure_emulator(announce: bool = True) -> str:
    """The base URL of a running emulator: ANTHROPIC_BASE_URL, a recorded one, or a new one."""
    configured = os.environ.get("ANTHROPIC_BASE_URL")
    if configured:
        return configured
    directory = warehouse.state_dir() / "emulator"
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "server.json"
    with _locked(directory / "server.lock"):
        info = json.loads(record.read_text()) if record.exists() else {}
        if info and healthy(info["url"]):
            how = "already running"
        else:
            url, pid = _start(directory)
            info = {"url": url, "pid": pid}
            record.write_text(json.dumps(info))
            how = "started in the background"
    if announce:
        print(
            f"batchpipe: no ANTHROPIC_API_KEY, so using the local Batches API emulator at "
            f"{info['url']} ({how}, pid {info['pid']}; state in {directory})",
            flush=True,
        )
    return info["url"]


def running_emulator() -> str | None:
    """The URL of the emulator this database started, if it is up; never starts one."""
    record = warehouse.state_dir() / "emulator" / "server.json"
    if not record.exists():
        return None
    url = json.loads(record.read_text())["url"]
    return url if healthy(url) else None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_emulator/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _start(directory: Path) -> tuple[str, int]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "server.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchpipe.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(directory / "state"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives this run, so the next run reuses it
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if healthy(url, timeout=0.5):
            return url, process.pid
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise BatchApiError(
        f"the local emulator did not start on {url}; see {directory / 'server.log'}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
