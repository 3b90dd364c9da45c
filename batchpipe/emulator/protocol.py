"""HTTP plumbing shared by every endpoint: auth and version checks, `request-id` headers,
the error envelope, and body/query parsing with the real API's error strings.

Kept apart from app.py so that module reads as a plain list of endpoints.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpipe.emulator.wire import ERROR_TYPES, ApiError, error_body, invalid, new_request_id


def error_response(error: ApiError, request_id: str | None) -> JSONResponse:
    headers = {"request-id": request_id} if request_id else None
    return JSONResponse(error_body(error, request_id), status_code=error.status, headers=headers)


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
    version checks before any endpoint runs."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

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
            if error is not None:
                await error_response(error, request_id)(scope, receive, send_with_id)
                return
        await self.app(scope, receive, send_with_id)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, _request_id(request))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    message = "Not found" if exc.status_code == 404 else str(exc.detail)
    return error_response(ApiError(exc.status_code, kind, message), _request_id(request))


async def on_crash(request: Request, exc: Exception) -> Response:
    error = ApiError(500, "api_error", f"Internal emulator error: {exc!r}")
    return error_response(error, _request_id(request))


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, with the real API's 413 above `limit` and 400 for bad JSON."""
    too_large = ApiError(
        413, "request_too_large", f"Request exceeds the maximum size of {limit} bytes."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}") from None


def version_and_betas(request: Request) -> tuple[str, list[str]]:
    betas = request.headers.get("anthropic-beta", "")
    return request.headers["anthropic-version"], [b.strip() for b in betas.split(",") if b]


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
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
