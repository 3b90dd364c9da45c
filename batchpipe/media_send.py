"""Media on the way out: uploads through the Files API, and the bytes put into a body.

A request names its media by sha256 (media_build.py). When a batch's body is written,
`fill` puts in each `bp-media:<sha256>` the base64 of the bytes batchpipe_media keeps,
and each `bp-file:<sha256>` the file_id of the content's live upload. Uploads happen
before any intent is recorded (`upload_pending`), once per distinct content, each
recorded as soon as the API answers it: a crash between the two leaves an upload that
nothing names (it costs nothing and expires with its TTL), never a request sent twice.

An upload is reused across runs and partitions until it is within a day of expiring
(a batch may take 24 hours to be processed), or the API says it is gone.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import duckdb

from batchpipe import failpoints, state, warehouse
from batchpipe import media as media_module
from batchpipe.errors import BatchApiError
from batchpipe.media_build import FILE_PLACEHOLDER, MEDIA_PLACEHOLDER

if TYPE_CHECKING:
    import anthropic

FILES_BETA = "files-api-2025-04-14"
UPLOAD_TTL_SECONDS = 30 * 24 * 3600  # an upload nothing names any more goes by itself
REUSE_MARGIN = dt.timedelta(hours=25)  # a batch ends within 24 hours of its create
CHECKS_AT_ONCE = 8
# A base64 source's data, or a whole file source (which count_tokens, taking no file ids
# without the beta, gets as a base64 source instead): the compact JSON media_build writes.
PLACEHOLDERS = re.compile(
    f'"{re.escape(MEDIA_PLACEHOLDER)}(?P<media>[0-9a-f]{{64}})"'
    f'|\\{{"type":"file","file_id":"{re.escape(FILE_PLACEHOLDER)}(?P<file>[0-9a-f]{{64}})"\\}}'
)
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "application/pdf": "pdf",
}

Log = Callable[[str], None]


def has_placeholders(text: str) -> bool:
    return MEDIA_PLACEHOLDER in text or FILE_PLACEHOLDER in text


def has_placeholders_bytes(body: bytes) -> bool:
    """The same test on a body's bytes: a text-only body is never decoded to be filled."""
    return MEDIA_PLACEHOLDER.encode() in body or FILE_PLACEHOLDER.encode() in body


def filler(
    connect: Callable[[], duckdb.DuckDBPyConnection],
    *,
    media: str = "batchpipe_media",
    inline: bool = False,
) -> Callable[[str], str]:
    """A function that fills one piece of body text; each distinct file's base64 is made
    once per filler. `connect` gives the connection to read from, asked for only when a
    placeholder is met (a body's cursor is busy streaming its lines); `media` is the
    relation holding (sha256, data); `inline` sends bytes for file placeholders too
    (count_tokens, which takes them without an upload)."""
    encoded: dict[str, str] = {}
    types: dict[str, str] = {}  # each file's media type, from its bytes
    file_ids: dict[str, str] = {}
    opened: list[duckdb.DuckDBPyConnection] = []

    def conn() -> duckdb.DuckDBPyConnection:
        if not opened:
            opened.append(connect())
        return opened[0]

    def base64_of(sha256: str) -> str:
        if sha256 not in encoded:
            row = conn().execute(f"SELECT data FROM {media} WHERE sha256 = ?", [sha256]).fetchone()
            if row is None:
                raise BatchApiError(
                    f"the bytes of media sha256:{sha256[:12]} are not in the warehouse; run "
                    "the partition again: its requests are rebuilt from the files"
                )
            data = bytes(row[0])
            encoded[sha256] = base64.b64encode(data).decode("ascii")
            types[sha256] = media_module.sniff(data) or "application/octet-stream"
        return encoded[sha256]

    def file_id_of(sha256: str) -> str:
        if sha256 not in file_ids:
            found = state.live_upload(conn(), sha256)
            if found is None:
                raise BatchApiError(
                    f"media sha256:{sha256[:12]} has no live upload; run the partition again: "
                    "it is uploaded before anything is sent"
                )
            file_ids[sha256] = found
        return file_ids[sha256]

    def replace(match: re.Match[str]) -> str:
        if match["media"]:
            return f'"{base64_of(match["media"])}"'
        sha256 = match["file"]
        if inline:
            data = base64_of(sha256)
            return f'{{"type":"base64","media_type":"{types[sha256]}","data":"{data}"}}'
        return f'{{"type":"file","file_id":"{file_id_of(sha256)}"}}'

    def fill(text: str) -> str:
        return PLACEHOLDERS.sub(replace, text) if has_placeholders(text) else text

    return fill


def count_params(
    con: duckdb.DuckDBPyConnection, params: str, media: str = "batchpipe_media"
) -> str:
    """A request's params as count_tokens takes them: every media's bytes inline."""
    return filler(lambda: con, media=media, inline=True)(params)


def upload_pending(
    con: duckdb.DuckDBPyConnection,
    api: anthropic.Anthropic,
    pipeline: str,
    date: dt.date,
    max_attempts: int,
    log: Log,
) -> int:
    """Upload every content the partition's unsent requests name by file and that has no
    live upload; returns how many were uploaded. Recorded uploads are checked upstream
    first: one deleted or expired is uploaded again."""
    import anthropic

    needed = state.files_needed(con, pipeline, date, max_attempts)
    if not needed:
        return 0
    now = _now()
    live = state.live_uploads(con, needed, now + REUSE_MARGIN)
    gone = _gone_upstream(api, live)
    if gone:
        for attempt in warehouse.transactions(con, "record uploads found gone"):
            with attempt:
                state.mark_uploads_gone(con, gone, now)
        log(f"{len(gone)} upload(s) were deleted or expired upstream: uploading them again")
    missing = [sha for sha in needed if sha not in live or live[sha] in gone]
    for sha256 in missing:
        media_type, data = state.media_bytes(con, sha256)
        name = f"{sha256[:16]}.{EXTENSIONS.get(media_type, 'txt')}"
        try:
            uploaded = api.beta.files.upload(
                file=(name, data, media_type),
                expires_in_seconds=UPLOAD_TTL_SECONDS,
                betas=[FILES_BETA],
            )
        except anthropic.APIError as err:
            from batchpipe.api import api_message

            words = api_message(err) if isinstance(err, anthropic.APIStatusError) else str(err)
            raise BatchApiError(
                f"uploading {name} ({media_type}, {len(data):,} bytes) to the Files API "
                f"failed: {words}; nothing was sent, run again to retry"
            ) from None
        # Killed here, the upload is an orphan nobody names: the next run uploads the file
        # again (an upload costs nothing) and the orphan expires with its TTL.
        failpoints.kill_point("after_upload")
        expires = (
            uploaded.expires_at.astimezone(dt.UTC).replace(tzinfo=None)
            if uploaded.expires_at
            else None
        )
        for attempt in warehouse.transactions(con, "record an upload"):
            with attempt:
                state.record_upload(con, sha256, uploaded.id, _now(), expires)
    if missing:
        log(
            f"uploaded {len(missing)} file(s) through the Files API; "
            f"{len(needed) - len(missing)} already uploaded were reused"
        )
    return len(missing)


def _gone_upstream(api: anthropic.Anthropic, live: dict[str, str]) -> set[str]:
    """The file ids among `live` the API no longer has (deleted, or expired early)."""
    import anthropic

    def gone(file_id: str) -> str | None:
        try:
            api.beta.files.retrieve_metadata(file_id, betas=[FILES_BETA])
        except anthropic.NotFoundError:
            return file_id
        return None

    with ThreadPoolExecutor(max_workers=CHECKS_AT_ONCE) as pool:
        return {f for f in pool.map(gone, live.values()) if f is not None}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
