"""The one module that talks to the Anthropic API: which client, and riding out outages.

`client()` is the real API with a key, else the local emulator, started in the
background once and reused (the launcher, at the end). `reaching` turns a failed
connection into one clear message; `Outage` waits out an API that is down for a
while, for the calls that are safe to repeat.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anthropic
import httpx2  # the SDK's HTTP library

from batchpipe import warehouse
from batchpipe.emulator import process as emulator_process
from batchpipe.emulator.process import healthy
from batchpipe.errors import BatchApiError, api_key, scrub

# How long a run waits out an API it cannot reach (or that answers 429/5xx) while polling
# or downloading; the batches carry on upstream meanwhile, and results keep 29 days.
API_PATIENCE_SECONDS = float(os.environ.get("BATCHPIPE_API_PATIENCE", "900"))
OUTAGE_MAX_DELAY = 30.0

T = TypeVar("T")


def client() -> anthropic.Anthropic:
    """The SDK client: the real API with a key, else the emulator (started if need be)."""
    key = api_key()  # stripped; a key with whitespace inside is refused here
    base_url = os.environ.get("ANTHROPIC_BASE_URL") or None
    http = anthropic.DefaultHttpxClient(
        event_hooks={"request": [RETRY_AFTER.before], "response": [RETRY_AFTER.after]}
    )
    if key:
        return anthropic.Anthropic(api_key=key, base_url=base_url, http_client=http)
    return anthropic.Anthropic(
        api_key="batchpipe-emulator", base_url=ensure_emulator(announce=False), http_client=http
    )


class RetryAfterGate:
    """Every call waits out the last `retry-after` its endpoints were given, whoever made
    it: the batch endpoints share one requests-per-minute limit, so after a 429 on a
    create, a poll sent before its retry-after has passed is only refused again (and the
    API may count it). The SDK's own retry waits the header for the call it repeats; this
    holds back the process's other calls to the same endpoints until then too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str], float] = {}  # (host, endpoints) -> monotonic

    @staticmethod
    def _endpoints(request: httpx2.Request) -> tuple[str, str]:
        batches = request.url.path.startswith("/v1/messages/batches")
        return (request.url.host, "batches" if batches else "other")

    def before(self, request: httpx2.Request) -> None:
        with self._lock:
            until = self._until.get(self._endpoints(request), 0.0)
        if (delay := until - time.monotonic()) > 0:
            time.sleep(delay)

    def after(self, response: httpx2.Response) -> None:
        if response.status_code not in (429, 503):
            return
        seconds = _header_seconds(response.headers)
        if seconds:
            key = self._endpoints(response.request)
            with self._lock:
                self._until[key] = max(self._until.get(key, 0.0), time.monotonic() + seconds)


RETRY_AFTER = RetryAfterGate()  # one a process: every client of this process shares it


def using_emulator() -> bool:
    return api_key() is None


def unreachable_message(api: anthropic.Anthropic, err: anthropic.APIConnectionError) -> str:
    """Which URL could not be reached and why, without its credentials: the SDK's own
    text is only "Connection error.", which leaves an operator guessing where it went."""
    url = api.base_url.copy_with(userinfo=b"", query=None)
    reason = scrub(str(err.__cause__ or err.message).strip()) or type(err).__name__
    return f"cannot reach the Anthropic API at {str(url).rstrip('/')} ({reason})"


@contextlib.contextmanager
def reaching(api: anthropic.Anthropic) -> Iterator[None]:
    """Calls through `api` whose connection failures become one clear BatchApiError.

    Safe to run again: a create that may have reached the API left its intent row, and
    the next run matches it upstream before anything is sent again.
    """
    try:
        yield
    except anthropic.APIConnectionError as err:
        raise BatchApiError(
            f"{unreachable_message(api, err)}. Check ANTHROPIC_BASE_URL and the network, "
            "then run the same command again; nothing is sent twice"
        ) from None


class Outage:
    """Rides out an API that is down for a while, for calls that are safe to repeat.

    The SDK retries a failed call twice within about two seconds; an API restarting, a
    network blip or a run of 529s lasts longer, and a run that dies of it leaves its
    batches to finish upstream with nobody waiting. Retrieving a batch or downloading
    its results changes nothing upstream, so they are simply tried again, with a growing
    delay, for at most `patience` seconds from the first failure. A create is never
    passed through here: a repeated create can make a second, paid batch.
    """

    def __init__(
        self, api: anthropic.Anthropic, log: Callable[[str], None], patience: float | None = None
    ):
        self.api, self.log = api, log
        self.patience = API_PATIENCE_SECONDS if patience is None else patience
        self.since: float | None = None
        self.delay = 1.0

    def call(self, fn: Callable[[], T], doing: str) -> T:
        while True:
            try:
                result = fn()
            except (anthropic.APIConnectionError, anthropic.APIStatusError) as err:
                if not _transient(err):
                    raise
                self._wait(err, doing)
                continue
            if self.since is not None:
                down = time.monotonic() - self.since
                self.log(f"the Batches API answers again after {down:.0f} s; carrying on")
                self.since, self.delay = None, 1.0
            return result

    def _wait(self, err: anthropic.APIError, doing: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.log(
                f"the Batches API is unavailable while {doing} ({self._reason(err)}); "
                f"the batches go on upstream, so this run tries again for up to "
                f"{self.patience:.0f} s (BATCHPIPE_API_PATIENCE)"
            )
        left = self.since + self.patience - now
        # A 429 (or 503) says how long to wait: never call again sooner.
        asked = retry_after(err) if isinstance(err, anthropic.APIStatusError) else 0.0
        if left <= 0:
            raise BatchApiError(
                f"the Batches API was unavailable for {now - self.since:.0f} s while {doing} "
                f"({self._reason(err)}); gave up after BATCHPIPE_API_PATIENCE="
                f"{self.patience:.0f} s. The batches go on upstream and keep their results "
                "29 days: run the same command again once it answers; nothing is sent twice"
            ) from None
        time.sleep(max(min(self.delay, left), asked))
        self.delay = min(self.delay * 2, OUTAGE_MAX_DELAY)

    def _reason(self, err: anthropic.APIError) -> str:
        if isinstance(err, anthropic.APIStatusError):
            return f"{err.status_code}: {api_message(err)}"
        return unreachable_message(self.api, err)


def _transient(err: anthropic.APIError) -> bool:
    """Unreachable, timed out, rate limited (not a spend limit: those are subclasses),
    or a server error: worth trying again. A 4xx about the request itself is not."""
    if isinstance(err, anthropic.APIConnectionError):
        return True
    status = getattr(err, "status_code", 0)
    return status >= 500 or status == 408 or type(err) is anthropic.RateLimitError


def retry_after(err: anthropic.APIStatusError, default: float = 0.0) -> float:
    """The seconds a 429 (or 503) asks to wait, else `default`."""
    return _header_seconds(err.response.headers) or default


def _header_seconds(headers: httpx2.Headers) -> float:
    """`retry-after-ms`, else `retry-after` in seconds, as the SDK reads them (research:
    retries); 0 when neither says."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(float(headers[name]) * scale, 0.0)
        except (KeyError, ValueError):
            continue
    return 0.0


def api_message(err: anthropic.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    inner = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    return scrub(str(inner.get("message") or err.message))  # a proxy may echo the key


# --- The emulator launcher ---------------------------------------------------------------
# Without an API key batchpipe talks to the emulator. When ANTHROPIC_BASE_URL is not set
# either, the first run starts one on a free loopback port, records its address beside the
# database, and every later run (CLI, Dagster run workers, `dagster dev`) finds it there.
# A file lock keeps two runs that start at the same moment from starting two emulators.
# This is the product starting the emulator, so it lives outside `batchpipe/emulator/`:
# the product may start the emulator (as a process), the emulator never imports the product.


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


def _start(directory: Path) -> tuple[str, int]:
    """A background emulator that outlives this run, logging beside its state."""
    with (directory / "server.log").open("ab") as log:
        try:
            process, url = emulator_process.start(
                directory / "state", latency=None, output=log, detached=True
            )
        except RuntimeError as err:
            raise BatchApiError(f"{err}; see {directory / 'server.log'}") from None
    return url, process.pid


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
