"""Canary batches: a few requests go first when the request side is new, so a mistake
costs ten requests, not a day.

The API validates a batch's requests only as it processes them: a parameter the model
refuses shows as errored results when the batch ends, hours later, for every row. So
before a large partition goes out under a request side (versions.request_version) that
has not yet come back within `output.max_error_rate`, one batch of a few of its requests
is sent alone; the rest is held until that batch has ended, and sent only if its error
rate is within the limit. Otherwise the run fails naming the errors, and nothing more is
sent under that version: a fixed file is a new version, with a canary of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import duckdb

from batchpipe import state
from batchpipe.loader import PipelineFile
from batchpipe.versions import request_version

DEFAULT_SIZE = 10
DEFAULT_ABOVE = 1_000  # by default, only partitions with more than this many to send

Action = Literal["none", "send", "wait", "load", "failed"]


@dataclass(frozen=True)
class Canary:
    """What a send does about the canary: nothing (`none`: proven, off, or too small),
    send `size` requests alone (`send`), hold everything while it runs (`wait`), load
    its ended batches first and decide again (`load`), or stop (`failed`)."""

    action: Action
    size: int = 0
    why: str = ""
    submission_ids: tuple[str, ...] = ()  # `load`: the ended canary batches


def decide(con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date, pending: int) -> Canary:
    """The canary's part in sending `pending` requests of a partition now.

    `request.canary: N` gives each partition a canary of its own; unset, one canary of
    DEFAULT_SIZE proves a request version for the whole pipeline, and only partitions
    with more than DEFAULT_ABOVE requests to send wait for one."""
    configured = pf.pipeline.request.canary
    size = DEFAULT_SIZE if configured is None else configured
    # A partition too small for a canary is never held back by one, nor stopped.
    if size == 0 or pending <= size or (configured is None and pending <= DEFAULT_ABOVE):
        return Canary("none")
    version = request_version(pf)
    scope = date if configured is not None else None
    sent = state.version_batches(con, pf.pipeline.name, version, scope)
    loaded = [batch_id for _, batch_id, st, _, _ in sent if st == "loaded" and batch_id]
    max_rate = pf.pipeline.output.max_error_rate
    if loaded:  # only final errors count: a 5xx or an overload is the service's, not ours
        lines, errored, top = state.error_summary(con, loaded)
        if lines and errored / lines <= max_rate:
            return Canary("none")
        if lines:
            return Canary("failed", why=_failed(pf, loaded, lines, errored, top, max_rate))
    # An ended canary of this partition is loaded here; another partition's by its own run.
    ended = tuple(sub for sub, _, st, _, day in sent if st == "ended" and day == date)
    if ended:
        return Canary("load", submission_ids=ended)
    if any(st in state.OPEN_STATES for _, _, st, _, _ in sent):
        waiting = sum(n for _, _, st, n, _ in sent if st in state.OPEN_STATES)
        return Canary("wait", why=_waiting(waiting, pending))
    scope_words = "this partition" if configured is not None else "a new or changed request side"
    return Canary(
        "send",
        size=size,
        why=f"a canary batch of {size} request(s) goes first ({scope_words}): the other "
        f"{pending - size} wait until it has ended within output.max_error_rate "
        f"({max_rate:.0%})",
    )


def _waiting(canary: int, pending: int) -> str:
    return (
        f"the canary batch ({canary} request(s)) has not ended yet: the {pending} other "
        "request(s) go once it has, if its error rate is within output.max_error_rate"
    )


def _failed(
    pf: PipelineFile,
    batch_ids: list[str],
    lines: int,
    errored: int,
    top: list[tuple[str, int]],
    max_rate: float,
) -> str:
    errors = "; ".join(f"{message} ({count}x)" for message, count in top)
    return (
        f"the canary batch of {pf.pipeline.name} ({', '.join(batch_ids)}) came back with "
        f"{errored} of {lines} request(s) errored ({errored / lines:.0%}, above "
        f"output.max_error_rate {max_rate:.0%}): {errors}. Nothing else was sent under this "
        f"request side. Fix the request in {pf.path} (a changed file sends a new canary), "
        "or set request.canary: 0 to send without one"
    )


def describe(decision: Canary, pf: PipelineFile) -> str:
    """The plan's line: whether a canary goes first, and why."""
    if decision.action in ("send", "wait", "failed"):
        return decision.why
    if decision.action == "load":
        return "the canary batch has ended: the next run checks its errors, then sends the rest"
    if pf.pipeline.request.canary == 0:
        return "none (request.canary: 0)"
    return "none: this request side has come back within output.max_error_rate, or too few to send"
