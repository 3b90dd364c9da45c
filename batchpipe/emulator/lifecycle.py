"""The batch state machine: in_progress -> (canceling) -> ended, then archived.

There is no background worker. Every access to a batch first calls `refresh`, which
applies whatever should have happened by now on the (advanceable) clock:

* not yet ended and the clock is past `expires_at` -> every line `expired`;
* `canceling` and `created_at + latency` reached -> every line `canceled`;
* `in_progress` and `created_at + latency` reached -> every line answered by the
  responder, results written, succeeded lines billed once;
* 29 days after `created_at` -> `archived_at` set; results are no longer served.

This keeps the emulator deterministic and lets tests jump through 24 h or 29 days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from batchpipe.emulator.responders import respond
from batchpipe.emulator.state import BatchRecord, Store
from batchpipe.emulator.wire import ApiError, invalid, new_batch_id, not_found, rfc3339

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EXPIRY = dt.timedelta(hours=24)
RETENTION = dt.timedelta(days=29)
COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")


def validate_create(body: Any) -> list[dict[str, Any]]:
    """The synchronous 400s of `POST /v1/messages/batches` (research §1.5). Params are
    deliberately not looked at: the real API validates them later, per line."""
    if not isinstance(body, dict):
        raise invalid("Input should be a valid dictionary")
    if "requests" not in body:
        raise invalid("requests: Field required")
    requests = body["requests"]
    if not isinstance(requests, list):
        raise invalid("requests: Input should be a valid list")
    if not requests:
        raise invalid("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > MAX_REQUESTS:
        raise invalid(
            f"requests: List should have at most {MAX_REQUESTS} items after validation, "
            f"not {len(requests)}"
        )
    seen: set[str] = set()
    cleaned = []
    for index, request in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(request, dict):
            raise invalid(f"{where}: Input should be a valid dictionary")
        if "custom_id" not in request:
            raise invalid(f"{where}.custom_id: Field required")
        custom_id = request["custom_id"]
        if not isinstance(custom_id, str):
            raise invalid(f"{where}.custom_id: Input should be a valid string")
        if len(custom_id) > 64:
            raise invalid(f"{where}.custom_id: String should have at most 64 characters")
        if not CUSTOM_ID.match(custom_id):
            raise invalid(f"{where}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'")
        if "params" not in request:
            raise invalid(f"{where}.params: Field required")
        if not isinstance(request["params"], dict):
            raise invalid(f"{where}.params: Input should be a valid dictionary")
        if custom_id in seen:
            raise invalid(
                "requests: custom_id's must be unique within a batch. "
                f"Duplicate custom_id found: {custom_id}"
            )
        seen.add(custom_id)
        cleaned.append({"custom_id": custom_id, "params": request["params"]})
    return cleaned


def create(
    store: Store, requests: list[dict[str, Any]], api_version: str, betas: Sequence[str]
) -> BatchRecord:
    with store.lock:
        now = store.clock.now()
        record = BatchRecord(
            id=new_batch_id(),
            seq=store.next_seq(),
            created_at=now,
            expires_at=now + EXPIRY,
            api_version=api_version,
            betas=list(betas),
            request_counts={key: 0 for key in COUNT_KEYS} | {"processing": len(requests)},
        )
        store.create(record, requests)
        return record


def _result_order(line: dict[str, Any]) -> str:
    """Results are served in a stable order unrelated to the request order, as the real
    API does, so pipelines that assume request order fail here and not in production."""
    return hashlib.sha1(line["custom_id"].encode()).hexdigest()


def _finish(store: Store, record: BatchRecord, outcome: str, ended_at: dt.datetime) -> None:
    """End the batch: every line gets `outcome` (canceled/expired) or, for "process", the
    responder's answer. Order: results, ledger, record - so a crash re-runs cleanly."""
    requests = store.read_requests(record.id)
    lines: list[dict[str, Any]] = []
    bills: list[dict[str, Any]] = []
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for request in requests:
        custom_id = request["custom_id"]
        if outcome != "process":
            result: dict[str, Any] = {"type": outcome}
            counts[outcome] += 1
        else:
            answer = respond(
                request["params"], api_version=record.api_version, betas=record.betas, batch=True
            )
            if isinstance(answer, ApiError):
                inner = {"type": answer.type, "message": answer.message}
                error = {"type": "error", "error": inner, "request_id": None}
                result = {"type": "errored", "error": error}
                counts["errored"] += 1
            else:
                result = {"type": "succeeded", "message": answer}
                counts["succeeded"] += 1
                usage = answer["usage"]
                bills.append(
                    {
                        "batch_id": record.id,
                        "custom_id": custom_id,
                        "model": answer["model"],
                        "input_tokens": usage["input_tokens"],
                        "output_tokens": usage["output_tokens"],
                        "billed_at": rfc3339(ended_at),
                    }
                )
        lines.append({"custom_id": custom_id, "result": result})
    lines.sort(key=_result_order)
    store.write_results(record.id, lines)
    store.bill(record.id, bills)
    record.processing_status = "ended"
    record.request_counts = counts
    record.ended_at = ended_at
    store.save(record)


def refresh(store: Store, record: BatchRecord, latency: float) -> BatchRecord:
    """Bring one batch up to date with the clock (see the module docstring)."""
    with store.lock:
        now = store.clock.now()
        due = record.created_at + dt.timedelta(seconds=latency)
        if record.processing_status != "ended":
            if now >= record.expires_at:
                outcome = "canceled" if record.processing_status == "canceling" else "expired"
                _finish(store, record, outcome, record.expires_at)
            elif now >= due:
                outcome = "canceled" if record.processing_status == "canceling" else "process"
                _finish(store, record, outcome, now)
        if record.archived_at is None and now >= record.created_at + RETENTION:
            record.archived_at = record.created_at + RETENTION
            store.save(record)
        return record


def get(store: Store, batch_id: str, latency: float) -> BatchRecord:
    """The refreshed batch, or the real API's 404."""
    record = store.get(batch_id)
    if record is None:
        raise not_found(f"Message Batch {batch_id} not found.")
    return refresh(store, record, latency)


def cancel(store: Store, batch_id: str, latency: float) -> BatchRecord:
    """in_progress -> canceling. Already canceling or ended: returned unchanged (200)."""
    with store.lock:
        record = get(store, batch_id, latency)
        if record.processing_status == "in_progress":
            record.processing_status = "canceling"
            record.cancel_initiated_at = store.clock.now()
            store.save(record)
        return record


def delete(store: Store, batch_id: str, latency: float) -> dict[str, str]:
    with store.lock:
        record = get(store, batch_id, latency)
        if record.processing_status != "ended":
            raise invalid(
                "In progress batches cannot be deleted. Consider canceling the batch instead."
            )
        store.delete(batch_id)
        return {"id": batch_id, "type": "message_batch_deleted"}


def batch_json(record: BatchRecord, base_url: str) -> dict[str, Any]:
    """The public MessageBatch: every key present, null where no value applies."""

    def stamp(moment: dt.datetime | None) -> str | None:
        return rfc3339(moment) if moment is not None else None

    ended = record.processing_status == "ended"
    return {
        "id": record.id,
        "type": "message_batch",
        "processing_status": record.processing_status,
        "request_counts": {key: record.request_counts.get(key, 0) for key in COUNT_KEYS},
        "ended_at": stamp(record.ended_at),
        "created_at": stamp(record.created_at),
        "expires_at": stamp(record.expires_at),
        "archived_at": stamp(record.archived_at),
        "cancel_initiated_at": stamp(record.cancel_initiated_at),
        "results_url": f"{base_url}v1/messages/batches/{record.id}/results" if ended else None,
    }


def page(
    items: list[Any], ids: list[str], limit: int, before_id: str | None, after_id: str | None
) -> tuple[list[Any], bool]:
    """One page of a newest-first list: `after_id` walks to older items, `before_id` to
    newer ones; `has_more` is about the direction walked. An unknown cursor gives an
    empty page."""
    start, stop = 0, len(items)
    for cursor, is_after in ((after_id, True), (before_id, False)):
        if cursor is None:
            continue
        if cursor not in ids:
            return [], False
        if is_after:
            start = max(start, ids.index(cursor) + 1)
        else:
            stop = min(stop, ids.index(cursor))
    window = items[start:stop]
    if before_id is not None and after_id is None:
        return window[-limit:], len(window) > limit
    return window[:limit], len(window) > limit
