"""Seeded, reproducible fault injection: failed HTTP calls, cut result streams, errored and
expired result lines, slow processing.

A pipeline that only ever meets a healthy API never exercises its retry, reconcile and
resubmit paths. These faults are the ones production produces (research §4): 429/500/529
answers the SDK retries, a create the server accepted although its response failed (there
is no idempotency key, so clients must reconcile through `list`), downloads that stop part
way, and lines that come back errored or expired and must not be billed.

Everything is off by default. Per-call decisions (HTTP errors, stream cuts) come from one
`random.Random(seed)`, so the same sequence of calls meets the same faults. Per-line
decisions hash (seed, batch sequence number, custom_id, purpose) instead, so a line's fate
is fixed when the batch is created and survives restarts; the sequence number (not the
random batch id) keeps them reproducible from run to run on a fresh state dir.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from batchpipe.emulator.wire import ApiError, invalid

RATE_KEYS = ("http_error_rate", "stream_cut_rate", "errored_rate", "expired_rate")
RETRY_AFTER_SECONDS = "1"  # small, so SDK retries through a 429 stay quick in tests
HTTP_FAULTS: tuple[tuple[int, str, str], ...] = (
    (429, "rate_limit_error", "Number of requests has exceeded your rate limit (emulated)."),
    (500, "api_error", "Internal server error (emulated)."),
    (529, "overloaded_error", "Overloaded (emulated)."),
)
# An injected fault is the service failing, never the request: a valid request is not
# refused as invalid by chance, so `--errored-rate` draws only the errors a retry can cure.
# (Invalid requests still come back `invalid_request_error`, from validating them.)
LINE_ERRORS: tuple[tuple[str, str], ...] = (
    ("api_error", "Internal server error (emulated)."),
    ("overloaded_error", "Overloaded (emulated)."),
)


@dataclass(frozen=True)
class FaultSettings:
    """What `--*-rate` / `--requests-per-second` and `POST /_emulator/faults` set."""

    http_error_rate: float = 0.0
    stream_cut_rate: float = 0.0
    errored_rate: float = 0.0
    expired_rate: float = 0.0
    requests_per_second: float | None = None  # None: every line done once latency passed

    def updated(self, changes: Any) -> FaultSettings:
        """A copy with `changes` applied; any unknown key or bad value is a 400."""
        if not isinstance(changes, dict):
            raise invalid("Input should be a valid dictionary")
        known = (*RATE_KEYS, "requests_per_second")
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise invalid(f"unknown fault setting(s) {', '.join(unknown)}; known: {known}")
        for key, value in changes.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key == "requests_per_second":
                if value is not None and not (number and value > 0):
                    raise invalid(f"{key}: Input should be a number > 0 or null")
            elif not (number and 0 <= value <= 1):
                raise invalid(f"{key}: Input should be a number between 0 and 1")
        return replace(self, **{k: None if v is None else float(v) for k, v in changes.items()})


class LineFaults(BaseModel):
    """The per-line part of the settings, frozen into a batch at creation so its progress
    and line outcomes never change afterwards (not by `POST /_emulator/faults`, not by a
    restart with other flags)."""

    seed: int = 0
    errored_rate: float = 0.0
    expired_rate: float = 0.0
    requests_per_second: float | None = None


def unit(seed: int, *parts: object) -> float:
    """A stable number in [0, 1) for these parts: the same on every run and process."""
    text = "\x00".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def never_processed(faults: LineFaults, seq: int, custom_id: str) -> bool:
    """Lines picked by `expired_rate` are never processed and end `expired`. A rate of 0
    picks none (unit() is never below 0), so the hash is skipped then."""
    return (
        faults.expired_rate > 0
        and unit(faults.seed, seq, custom_id, "expired") < faults.expired_rate
    )


def line_error(faults: LineFaults, seq: int, custom_id: str) -> ApiError | None:
    """The injected execution-time failure of this line, if `errored_rate` picks it."""
    if (
        faults.errored_rate <= 0
        or unit(faults.seed, seq, custom_id, "errored") >= faults.errored_rate
    ):
        return None
    pick = int(unit(faults.seed, seq, custom_id, "error_type") * len(LINE_ERRORS))
    kind, message = LINE_ERRORS[pick]
    return ApiError(400 if kind == "invalid_request_error" else 500, kind, message)


def worker_request_id(faults: LineFaults, seq: int, custom_id: str) -> str:
    """The `workerreq_...` id errored lines carry for failures while executing (research
    §3), derived like the decision itself so a rerun writes the same results."""
    text = f"{faults.seed}\x00{seq}\x00{custom_id}"
    return "workerreq_" + hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class HttpFault:
    """An injected HTTP failure; `after_processing` means the endpoint ran first (the
    server accepted the call, then the response failed)."""

    error: ApiError
    headers: dict[str, str]
    after_processing: bool


@dataclass
class Faults:
    """The live settings plus the seeded per-call random stream, shared by all requests."""

    startup: FaultSettings = field(default_factory=FaultSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the startup flags, the random stream restarted, counters zeroed."""
        with self._lock:
            self.settings = self.startup
            self._rng = random.Random(self.seed)
            self.injected: Counter[str] = Counter()

    def update(self, changes: Any) -> None:
        """Apply a partial update; `seed` restarts the per-call random stream."""
        seed = changes.get("seed") if isinstance(changes, dict) else None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise invalid("seed: Input should be a valid integer")
        if isinstance(changes, dict):
            changes = {key: value for key, value in changes.items() if key != "seed"}
        with self._lock:
            self.settings = self.settings.updated(changes)
            if seed is not None:
                self.seed, self._rng = seed, random.Random(seed)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.injected)
            return asdict(self.settings) | {"seed": self.seed, "injected": counts}

    def for_new_batch(self) -> LineFaults:
        settings = self.settings
        return LineFaults(
            seed=self.seed,
            errored_rate=settings.errored_rate,
            expired_rate=settings.expired_rate,
            requests_per_second=settings.requests_per_second,
        )

    def http_fault(self, method: str, path: str) -> HttpFault | None:
        """Whether this `/v1/*` call fails. A failed create is, for 500/529, half the time
        created anyway: the case that makes duplicate batches in production."""
        with self._lock:
            rate = self.settings.http_error_rate
            if rate <= 0 or self._rng.random() >= rate:
                return None
            status, kind, message = self._rng.choice(HTTP_FAULTS)
            creates = method == "POST" and path.rstrip("/") == "/v1/messages/batches"
            after = creates and status != 429 and self._rng.random() < 0.5
            self.injected[str(status)] += 1
            if after:
                self.injected["created_anyway"] += 1
        headers = {"x-should-retry": "true"}
        if status == 429:
            headers["retry-after"] = RETRY_AFTER_SECONDS
        return HttpFault(ApiError(status, kind, message), headers, after)

    def stream_cut(self, size: int) -> int | None:
        """Where to cut a results body of `size` bytes (0 < cut < size), or None."""
        with self._lock:
            rate = self.settings.stream_cut_rate
            if size < 2 or rate <= 0 or self._rng.random() >= rate:
                return None
            self.injected["stream_cut"] += 1
            return min(size - 1, max(1, int(size * self._rng.uniform(0.05, 0.95))))
