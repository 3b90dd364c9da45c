"""The real service's account limits, played on demand: the processing queue, the batch
requests-per-minute limit, the tier spend cap, a workspace spend limit, running out of
credit mid-batch, and a retrieve that answers 404 just after its create.

A pipeline meets these in production (research, "Limits of the real service") and must
tell them apart: a 429 with `retry-after` is worth waiting for, a 429 carrying
`enforced_spend_limit_reached` (no `retry-after`) and the workspace limit's 400 are not,
and lines errored for lack of credit must be resubmitted once there is credit again.

Everything is off by default (None), set by flags or `POST /_emulator/faults`, and never
persisted. The checks here decide and build the error; app.py and protocol.py call them.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from batchpipe.emulator.wire import ApiError, invalid

INT_KEYS = ("queue_limit", "batch_rpm", "max_batch_bytes", "max_messages_bytes")
NUMBER_KEYS = ("spend_limit_usd", "workspace_limit_usd", "credit_usd", "not_found_after_create")
KEYS = (*INT_KEYS, *NUMBER_KEYS)
BATCHES_PATH = "/v1/messages/batches"
WINDOW_SECONDS = 60.0
RATE_LIMITS_DOCS = "https://docs.claude.com/en/api/rate-limits"
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
WORKSPACE_LIMIT = "You have reached your specified workspace API usage limits."


@dataclass(frozen=True)
class LimitSettings:
    """What `--queue-limit`, `--batch-rpm`, `--*-usd`, `--not-found-after-create` and
    `--max-*-bytes` (and the same keys of `POST /_emulator/faults`) set; None is off,
    or for the body sizes the real limits (256 MB a batch create, 32 MB a Messages or
    count_tokens call): a small one lets a test make a partition need several batches."""

    queue_limit: int | None = None
    batch_rpm: int | None = None
    spend_limit_usd: float | None = None
    workspace_limit_usd: float | None = None
    credit_usd: float | None = None
    not_found_after_create: float | None = None
    max_batch_bytes: int | None = None
    max_messages_bytes: int | None = None

    def updated(self, changes: dict[str, Any]) -> LimitSettings:
        """A copy with those of `changes` that are limits applied; a bad value is a 400."""
        picked = {key: value for key, value in changes.items() if key in KEYS}
        for key, value in picked.items():
            if not _valid(key, value):
                rule = "an integer >= 1" if key in INT_KEYS else "a number >= 0"
                raise invalid(f"{key}: Input should be {rule} or null")
        cast = {k: v if v is None or k in INT_KEYS else float(v) for k, v in picked.items()}
        return replace(self, **cast)

    def shown(self) -> dict[str, Any]:
        """The limits that are on, for `GET /_emulator/faults` (none: nothing added, so
        the answer is what it was before limits existed)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def _valid(key: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) and value >= 1 if key in INT_KEYS else value >= 0


def is_batch_call(path: str) -> bool:
    """Whether `path` is one of the Message Batches endpoints the batch RPM limit counts."""
    return path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/")


def rate_limited(message: str, retry_after: float) -> ApiError:
    """The 429 a rate limit answers, with `retry-after` in whole seconds (at least 1)."""
    seconds = str(max(1, math.ceil(retry_after)))
    return ApiError(429, "rate_limit_error", message, headers={"retry-after": seconds})


def next_month(now: dt.datetime) -> dt.datetime:
    """00:00 UTC on the 1st of the month after `now`: when a tier spend cap lifts."""
    utc = now.astimezone(dt.UTC)
    year, month = (utc.year + 1, 1) if utc.month == 12 else (utc.year, utc.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def spend_limit_reached(limit: float, now: dt.datetime) -> ApiError:
    """The tier spend cap: a 429 the SDK raises as `EnforcedSpendLimitReachedError`,
    without `retry-after`, since waiting minutes does not help."""
    resumes = next_month(now).strftime("%Y-%m-%d at 00:00 UTC")
    message = (
        f"You have reached your API usage limit of ${limit:,.2f} for this month. "
        f"You will regain access on {resumes}."
    )
    details = {"error_code": "enforced_spend_limit_reached"}
    return ApiError(429, "rate_limit_error", message, details=details)


def workspace_limit_reached(limit: float) -> ApiError:
    """A spend limit the customer set on the workspace: a plain 400."""
    return invalid(
        f"{WORKSPACE_LIMIT} Raise the workspace's limit of ${limit:,.2f} in the Console "
        "to regain access."
    )


def queue_full(limit: int, queued: int, adding: int, latency: float) -> ApiError:
    """The processing-queue limit; retrying once the emulator's latency has passed (when
    queued requests start being processed) is the earliest a retry could succeed."""
    message = (
        f"This request would exceed your organization's rate limit of {limit:,} batch "
        f"requests in the processing queue ({queued:,} queued, this batch adds "
        f"{adding:,}). For details, refer to: {RATE_LIMITS_DOCS}. Please wait for queued "
        "requests to be processed, or submit fewer requests at once."
    )
    return rate_limited(message, latency)


def no_credit_result() -> dict[str, Any]:
    """The `result` of a line that was not run because the credit ran out (not billed)."""
    inner = {"type": "invalid_request_error", "message": NO_CREDIT}
    return {"type": "errored", "error": {"type": "error", "error": inner, "request_id": None}}


@dataclass
class LimitRecord:
    """What the limits did since startup (or the last reset), for `GET /_emulator/limits`:
    the referee's own account of whether a client waited as it was told."""

    refused: int = 0  # 429s of the RPM and queue limits
    refused_early: int = 0  # of them, calls made before the previous 429's retry-after
    peak_queued: int = 0  # the most requests in the processing queue after a create
    early_calls: list[str] = field(default_factory=list)  # the last 20 early ones' paths

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Limits:
    """The live limit settings and the batch RPM window, shared by all requests."""

    startup: LimitSettings = field(default_factory=LimitSettings)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the startup flags, the RPM window emptied, the record cleared."""
        with self._lock:
            self.settings = self.startup
            self._calls: collections.deque[float] = collections.deque()
            self._not_before = 0.0  # monotonic: when the last 429's retry-after ends
            self.record = LimitRecord()

    def _refused(self, error: ApiError, path: str) -> ApiError:
        """Count a 429 in the record, and whether it came inside the retry-after of the
        one before it (a client that did not wait); call with the lock held."""
        now = time.monotonic()
        self.record.refused += 1
        if now < self._not_before:
            self.record.refused_early += 1
            self.record.early_calls = [*self.record.early_calls, path][-20:]
        self._not_before = now + float((error.headers or {}).get("retry-after", "0"))
        return error

    def note_queued(self, queued: int) -> None:
        """The processing queue just after a create was admitted, for the record's peak."""
        with self._lock:
            self.record.peak_queued = max(self.record.peak_queued, queued)

    def update(self, changes: Any) -> LimitSettings:
        """The settings `changes` would give, validated but not applied (see `apply`), so
        a bad fault setting in the same call leaves the limits alone too."""
        return self.settings.updated(changes) if isinstance(changes, dict) else self.settings

    def apply(self, settings: LimitSettings) -> None:
        with self._lock:
            self.settings = settings

    def admit_batch_call(self, path: str) -> ApiError | None:
        """Count one call on a batch endpoint in the sliding minute, or the 429 that
        refuses it: `retry-after` is when the oldest counted call leaves the window.
        Refused calls are not counted, so a client that waits is let in."""
        limit = self.settings.batch_rpm
        if limit is None or not is_batch_call(path):
            return None
        with self._lock:
            now = time.monotonic()
            while self._calls and self._calls[0] <= now - WINDOW_SECONDS:
                self._calls.popleft()
            if len(self._calls) < limit:
                self._calls.append(now)
                return None
            wait = self._calls[0] + WINDOW_SECONDS - now
            message = (
                f"This request would exceed your organization's rate limit of {limit:,} "
                f"requests per minute to the Message Batches API. For details, refer to: "
                f"{RATE_LIMITS_DOCS}. Please try again later."
            )
            return self._refused(rate_limited(message, wait), path)

    def check_create(
        self, billed_usd: float, queued: int, adding: int, latency: float, now: dt.datetime
    ) -> ApiError | None:
        """The error a create meets, if any: the tier spend cap, then a workspace limit
        (both once `billed_usd` reaches them), then the processing queue."""
        settings = self.settings
        if settings.spend_limit_usd is not None and billed_usd >= settings.spend_limit_usd:
            return spend_limit_reached(settings.spend_limit_usd, now)
        if settings.workspace_limit_usd is not None and billed_usd >= settings.workspace_limit_usd:
            return workspace_limit_reached(settings.workspace_limit_usd)
        if settings.queue_limit is not None and queued + adding > settings.queue_limit:
            with self._lock:
                error = queue_full(settings.queue_limit, queued, adding, latency)
                return self._refused(error, BATCHES_PATH)
        return None

    def needs_billing(self) -> bool:
        """Whether a create must know what is billed or queued (so open batches are
        brought up to date first)."""
        s = self.settings
        return any(v is not None for v in (s.queue_limit, s.spend_limit_usd, s.workspace_limit_usd))

    def hides(self, created_at: dt.datetime, now: dt.datetime) -> bool:
        """Whether a retrieve of a batch created at `created_at` answers 404 still."""
        delay = self.settings.not_found_after_create
        return delay is not None and now < created_at + dt.timedelta(seconds=delay)
