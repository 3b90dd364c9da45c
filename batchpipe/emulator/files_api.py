"""The Files API (beta) over HTTP: upload, list, metadata, delete, and the referee's view.

Routes follow the real API as the official SDK (2.14) calls them through
`client.beta.files`: every one requires `anthropic-beta: files-api-2025-04-14` (a 400
otherwise). Uploads are multipart (`file`, optional `expires_in_seconds` 3600..7776000),
parsed here with the stdlib since the emulator has no multipart dependency. Lists carry
both the beta's paging (`has_more`, `first_id`, `last_id`, `after_id`/`before_id`) and
the cursor SDK 2.14 follows (`next_page`, sent back as `page`), so either walks them.

`GET /_emulator/files` (no key, never faulted) is for tests: counters `uploads`,
`deletes`, `bytes_uploaded`, `live`, `expired`, `reads`, `reads_without_beta`,
`url_fetches`, `url_failures`, and every kept file with its `state` and `reads`.

Inferred, not captured: the missing-beta message, the multipart messages, the expired
file's message (its `error_code` `file_expired` is the SDK's) and the download refusal.
"""

from __future__ import annotations

import datetime as dt
import email.message
import re
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from batchpipe.emulator.files import FileRecord
from batchpipe.emulator.imagesize import GIF, JPEG, PDF, PNG, TEXT, WEBP, sniff_mime
from batchpipe.emulator.media import FILES_BETA
from batchpipe.emulator.protocol import (
    bounded_int,
    int_param,
    page,
    read_body,
    version_and_betas,
)
from batchpipe.emulator.state import Store
from batchpipe.emulator.wire import ApiError, invalid, new_file_id, not_found

MAX_FILE_BODY = 500 * 1024 * 1024  # the Files API's limit (research §4.2)
MIN_EXPIRY, MAX_EXPIRY = 3600, 7_776_000
MAX_IDS = 100
BETA_REQUIRED = f"The Files API requires the beta header 'anthropic-beta: {FILES_BETA}'."
EXTENSIONS = {PNG: ".png", JPEG: ".jpg", GIF: ".gif", WEBP: ".webp", PDF: ".pdf", TEXT: ".txt"}
PAGE_PREFIX = "page_"


def _store(request: Request) -> Store:
    return request.app.state.emulator.store


def _now(request: Request) -> dt.datetime:
    return _store(request).clock.now()


def require_beta(request: Request) -> None:
    if FILES_BETA not in version_and_betas(request)[1]:
        raise invalid(BETA_REQUIRED)


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data body by field name (the first of each)."""
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise invalid("The request body must be multipart/form-data with a `file` field")
    delimiter = b"--" + boundary.encode("latin-1")
    parts: dict[str, Part] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        chunk = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            continue
        part = _part(head.decode("utf-8", "replace"), data)
        if part is not None and part.name not in parts:
            parts[part.name] = part
    return parts


def _part(head: str, data: bytes) -> Part | None:
    headers = email.message.Message()
    for line in head.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    name = headers.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        return None
    filename = headers.get_filename()
    declared = headers.get_content_type() if headers.get("content-type") else None
    return Part(name, filename, declared, data)


def _filename(given: str | None, mime_type: str) -> str:
    """Only the final path component is kept; none is `unnamed` plus the extension of
    the stored mime type, when known (the API's rule)."""
    name = re.split(r"[\\/]", given or "")[-1]
    return name[:500] if name else "unnamed" + EXTENSIONS.get(mime_type, "")


def _expiry(value: Part | None) -> int | None:
    if value is None:
        return None
    text = value.data.decode("utf-8", "replace").strip()
    return bounded_int("expires_in_seconds", text, MIN_EXPIRY, MAX_EXPIRY)


async def upload_file(request: Request) -> Response:
    require_beta(request)
    body = await read_body(request, MAX_FILE_BODY)
    parts = parse_multipart(request.headers.get("content-type", ""), body)
    upload = parts.get("file")
    if upload is None:
        raise invalid("file: Field required")
    seconds = _expiry(parts.get("expires_in_seconds"))
    mime_type = sniff_mime(upload.data, upload.content_type)
    now = _now(request)
    record = FileRecord(
        id=new_file_id(),
        seq=0,
        filename=_filename(upload.filename, mime_type),
        mime_type=mime_type,
        size_bytes=len(upload.data),
        created_at=now,
        expires_at=None if seconds is None else now + dt.timedelta(seconds=seconds),
    )
    stored = await run_in_threadpool(_store(request).files.add, record, upload.data)
    return JSONResponse(stored.metadata())


def _ids(request: Request) -> list[str] | None:
    values = request.query_params.getlist("ids") + request.query_params.getlist("ids[]")
    ids = list(dict.fromkeys(i for value in values for i in value.split(",") if i))
    if not values:
        return None
    if len(ids) > MAX_IDS:
        raise invalid(f"ids: List should have at most {MAX_IDS} items after validation")
    return ids


async def list_files(request: Request) -> Response:
    require_beta(request)
    limit = int_param(request, "limit", 20, 1, 1000)
    items = [record.metadata() for record in _store(request).files.newest_first(_now(request))]
    wanted = _ids(request)
    if wanted is not None:
        data = [item for item in items if item["id"] in wanted]
        has_more = False
    else:
        cursor = request.query_params.get("page")
        after = cursor.removeprefix(PAGE_PREFIX) if cursor else None
        after = after or request.query_params.get("after_id")
        before = request.query_params.get("before_id")
        data, has_more = page(items, [item["id"] for item in items], limit, before, after)
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    forward = request.query_params.get("before_id") is None
    return JSONResponse(
        {
            "data": data,
            "has_more": has_more,
            "first_id": first,
            "last_id": last,
            "next_page": f"{PAGE_PREFIX}{last}" if has_more and forward else None,
        }
    )


def _usable(request: Request) -> FileRecord:
    """The path's file, or 404: never uploaded or deleted, or expired."""
    file_id = request.path_params["file_id"]
    record = _store(request).files.find(file_id)
    if record is None:
        raise not_found(f"File not found: {file_id}")
    if record.expired(_now(request)):
        raise ApiError(
            404,
            "not_found_error",
            f"File {file_id} has expired and is no longer available.",
            details={"error_code": "file_expired"},
        )
    return record


async def get_file(request: Request) -> Response:
    require_beta(request)
    return JSONResponse(_usable(request).metadata())


async def delete_file(request: Request) -> Response:
    require_beta(request)
    record = _usable(request)
    await run_in_threadpool(_store(request).files.delete, record.id)
    return JSONResponse({"id": record.id, "type": "file_deleted"})


async def download_file(request: Request) -> Response:
    """Uploaded files are never downloadable (`downloadable: false`)."""
    require_beta(request)
    record = _usable(request)
    raise ApiError(
        400,
        "invalid_request_error",
        f"File {record.id} is not downloadable.",
        details={"error_code": "file_not_downloadable"},
    )


async def files_report(request: Request) -> Response:
    store = _store(request)
    report: dict[str, Any] = store.files.report(store.clock.now()) | store.urls.report()
    return JSONResponse(report)
