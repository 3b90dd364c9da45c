"""The emulator as a process of its own, started and waited for: by the product's launcher
(batchpipe.api, a background emulator reused across runs), and by the tests and benchmarks
that measure batchpipe against it. It starts `python -m batchpipe.emulator`, so it needs
nothing of the rest of batchpipe."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

START_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether an emulator answers at `url`."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_emulator/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start(
    state_dir: Path,
    latency: float | None = 0.2,
    api_key: str | None = None,
    *,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    output: IO[bytes] | int = subprocess.DEVNULL,
    detached: bool = False,
) -> tuple[subprocess.Popen, str]:
    """An emulator process on loopback and its URL, once it answers. `latency` None keeps
    the emulator's default; `extra_args` adds flags (faults, seed, ...); `port` reuses a
    known port (a restart on the same address); `output` takes its log; `detached` starts
    it in a session of its own, so it outlives the process that started it. A process
    that exits or does not answer within START_SECONDS is a RuntimeError."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchpipe.emulator",
            *("--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir)),
            *(("--latency", str(latency)) if latency is not None else ()),
            *(("--api-key", api_key) if api_key else ()),
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not subprocess.DEVNULL else subprocess.DEVNULL,
        start_new_session=detached,
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if healthy(url, timeout=0.5):
            return process, url
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the emulator did not start on {url}")
