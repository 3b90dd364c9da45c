"""HTTP plumbing shared by every endpoint: auth and version checks, `request-id` headers,
the error envelope, injected HTTP faults, body/query parsing and create validation with
the real API's error strings, list paging, and the (possibly cut) results body.

Kept apart from app.py so that module reads as a plain list of endpoints.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpipe.emulator.faults import Faults
from batchpipe.emulator.limits import Limits
from batchpipe.emulator.state import paused_gc
from batchpipe.emulator.wire import ERROR_TYPES, ApiError, error_body, invalid, new_request_id

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CHUNK = 1024 * 1024  # of a results body read at once: few trips to a thread


def error_response(
    error: ApiError, request_id: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = dict(headers or {}) | ({"request-id": request_id} if request_id else {})
    return JSONResponse(error_body(error, request_id), status_code=error.status, headers=headers)


async def _discard(message: Message) -> None:
    """Where the real response goes when an injected fault replaces it."""


def check_headers(headers: Headers, api_key: str | None) -> ApiError | None:
    """Auth (x-api-key wins over Bearer, as on the real API) then anthropic-version."""
    key = headers.get("x-api-key")
    if not key:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    if not key:
        return ApiError(401, "authentication_error", "x-api-key header is required")
    if api_key is not None and key != api_key:
        return ApiError(401, "authentication_error", "API key is invalid.")
    if not headers.get("anthropic-version"):
        return invalid("anthropic-version: header is required")
    return None


class ApiMiddleware:
    """Gives every response a `request-id` header and guards `/v1/*` with auth and
    version checks, then the batch RPM limit, then injected HTTP faults, before any
    endpoint runs. `/_emulator/*` controls are never faulted nor limited, so a test can
    always turn faults and limits off again."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        faults: Faults | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.faults = faults
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "request-id" not in headers:
                    headers.append("request-id", request_id)
            await send(message)

        if scope["path"].startswith("/v1/"):
            error = check_headers(Headers(scope=scope), self.api_key)
            if error is None and self.limits is not None:
                error = self.limits.admit_batch_call(scope["path"])
            if error is not None:
                response = error_response(error, request_id, error.headers)
                await response(scope, receive, send_with_id)
                return
            fault = self.faults.http_fault(scope["method"], scope["path"]) if self.faults else None
            if fault is not None:
                if fault.after_processing:  # accepted and done, then the response is lost
                    await self.app(scope, receive, _discard)
                response = error_response(fault.error, request_id, fault.headers)
                await response(scope, receive, send_with_id)
                return
        await self.app(scope, receive, send_with_id)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, _request_id(request), exc.headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    message = "Not found" if exc.status_code == 404 else str(exc.detail)
    return error_response(ApiError(exc.status_code, kind, message), _request_id(request))


async def on_crash(request: Request, exc: Exception) -> Response:
    error = ApiError(500, "api_error", f"Internal emulator error: {exc!r}")
    return error_response(error, _request_id(request))


# The text Cloudflare answers oversized bodies with, as API users quote it (e.g.
# earendil-works/pi#401); the size is not in it.
TOO_LARGE = "Request exceeds the maximum size"


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, with the real API's 413 above `limit`."""
    too_large = ApiError(413, "request_too_large", TOO_LARGE)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The body as JSON, or the real API's 400 for bad JSON."""
    try:
        with paused_gc():  # a batch body is hundreds of thousands of objects
            return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}") from None


# `{"requests": [` and `]}` around the elements, as every client writes a create body
_BATCH_HEAD = re.compile(rb'\{\s*"requests"\s*:\s*\[')
_BATCH_TAIL = re.compile(rb"\]\s*\}\s*\Z")
_ELEMENT = b'{"custom_id"'
SLICE_BYTES = 1 << 20  # of the create body parsed at once


def parse_batch_json(body: bytes) -> Any:
    """parse_json of a batch create body, made a slice of about SLICE_BYTES at a time:
    one json.loads of a 100 MB body holds the GIL, so the event loop, for a second. The
    slices are cut where an element starts with its custom_id, after the comma before
    it; each parses as a list only if it holds whole elements, so if any does not (an
    element nested inside another began the same way, or the body is framed otherwise)
    the body is parsed whole, with json.loads' own result or error."""
    head = _BATCH_HEAD.match(body)
    tail = _BATCH_TAIL.search(body)
    if head is None or tail is None or tail.start() < head.end():
        return parse_json(body)
    requests: list[Any] = []
    start, end = head.end(), tail.start()
    try:
        with paused_gc():
            while start < end:
                cut = body.find(_ELEMENT, min(start + SLICE_BYTES, end), end)
                stop = end if cut < 0 else body.rindex(b",", start, cut)
                if cut >= 0 and body[stop + 1 : cut].strip():
                    return parse_json(body)
                part = json.loads(b"[" + body[start:stop] + b"]")
                if not isinstance(part, list) or not part:
                    return parse_json(body)
                requests += part
                start = stop + 1 if cut >= 0 else end
    except (ValueError, UnicodeDecodeError):
        return parse_json(body)
    return {"requests": requests}


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, with the real API's 413 above `limit` and 400 for bad JSON."""
    return parse_json(await read_body(request, limit))


def version_and_betas(request: Request) -> tuple[str, list[str]]:
    """anthropic-version, and anthropic-beta split on commas (the SDK joins its `betas`
    list that way; a repeated header counts too)."""
    values = request.headers.getlist("anthropic-beta")
    betas = [beta.strip() for value in values for beta in value.split(",") if beta.strip()]
    return request.headers["anthropic-version"], betas


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    return default if raw is None else bounded_int(name, raw, low, high)


def bounded_int(name: str, raw: str, low: int, high: int) -> int:
    """A query or form field as the API checks an integer: its words when it is not one."""
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            f"{name}: Input should be a valid integer, unable to parse string as an integer"
        ) from None
    if value < low:
        raise invalid(f"{name}: Input should be greater than or equal to {low}")
    if value > high:
        raise invalid(f"{name}: Input should be less than or equal to {high}")
    return value


@paused_gc()
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


def paged(request: Request, items: list[dict[str, Any]], limit: int) -> JSONResponse:
    """The list envelope the SDK's SyncPage reads, cut at the request's cursors."""
    data, has_more = page(
        items,
        [item["id"] for item in items],
        limit,
        request.query_params.get("before_id"),
        request.query_params.get("after_id"),
    )
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return JSONResponse({"data": data, "has_more": has_more, "first_id": first, "last_id": last})


class ResultsBody(Response):
    """A results file with its exact Content-Length. With `cut`, only that many bytes are
    sent and the connection is closed: the client sees a body shorter than announced,
    the way a dropped download looks, and must fetch again."""

    def __init__(self, handle: IO[bytes], size: int, cut: int | None = None) -> None:
        super().__init__(media_type="application/x-jsonl", headers={"content-length": str(size)})
        self.handle, self.cut = handle, cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        remaining = self.cut
        try:
            while remaining is None or remaining > 0:
                size = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = await anyio.to_thread.run_sync(self.handle.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self.handle.close()
        if self.cut is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else: return without the last message; the server then closes the connection.
