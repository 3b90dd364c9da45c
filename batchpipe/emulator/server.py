"""Run the emulator under uvicorn on a socket we bind ourselves.

Binding first lets `--port 0` pick a free port and still print the real address, and the
single "listening" line is printed only once uvicorn has started, so a parent process
(the tests, the CLI) can wait for that line instead of guessing with sleeps.

The emulator accepts any API key by default and has control endpoints that wipe its
state, so it only listens on loopback unless told `--public`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

import uvicorn

from batchpipe.emulator import forked
from batchpipe.emulator.app import create_app
from batchpipe.emulator.faults import FaultSettings
from batchpipe.emulator.limits import LimitSettings

CUT_STREAM_LOG = "ASGI callable returned without completing response."


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; any other name or address is public."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _QuietCutStreams(logging.Filter):
    """A cut results stream (an injected fault) ends the response on purpose; uvicorn
    would log each one as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != CUT_STREAM_LOG


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # A restarted emulator must get its old port back despite TIME_WAIT connections.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: a response's headers and body go out at once,
    # instead of the body waiting ~40 ms for the client's delayed ACK on a kept-alive
    # connection (every SDK call after the first paid that).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve_and_announce(server: uvicorn.Server, sock: socket.socket, line: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(line, flush=True)
    await task


def serve(
    host: str,
    port: int,
    state_dir: Path,
    latency_seconds: float,
    api_key: str | None,
    *,
    faults: FaultSettings | None = None,
    seed: int = 0,
    public: bool = False,
    limits: LimitSettings | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, printing one line with the bound address. A host that
    is not loopback without `public` exits at once with a one-line message."""
    if not public and not is_loopback(host):
        raise SystemExit(
            f"batchpipe emulator: refusing to listen on non-loopback address {host!r}: it "
            "accepts any API key and can be reset by anyone; pass --public to allow it"
        )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(
        state_dir,
        latency_seconds=latency_seconds,
        api_key=api_key,
        faults=faults,
        seed=seed,
        limits=limits,
    )
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    line = (
        f"batchpipe emulator listening on http://{shown_host}:{bound_port} (state in {state_dir})"
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    logging.getLogger("uvicorn.error").addFilter(_QuietCutStreams())
    server = uvicorn.Server(config)
    try:
        asyncio.run(_serve_and_announce(server, sock, line))
    finally:
        forked.kill_all()  # a batch being answered when told to stop is answered again
        sock.close()
