"""The emulator as a process of its own, started and waited for: what the tests and the
benchmarks measure batchpipe against. It starts `python -m batchpipe.emulator`, so it
needs nothing of the rest of batchpipe (the product's own launcher is batchpipe.api)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

START_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    state_dir: Path,
    latency: float = 0.2,
    api_key: str | None = None,
    *,
    extra_args: Sequence[str] = (),
    port: int | None = None,
) -> tuple[subprocess.Popen, str]:
    """An emulator process and its URL, once it answers; `extra_args` adds flags
    (faults, seed, ...) and `port` reuses a known port (for a restart on the same
    address)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchpipe.emulator",
            *("--port", str(port), "--state-dir", str(state_dir), "--latency", str(latency)),
            *(("--api-key", api_key) if api_key else ()),
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_emulator/health", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the emulator did not start")
