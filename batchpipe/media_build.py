"""The media blocks of a partition's requests: read each distinct file once, check it,
and stage what every row's blocks put in its request.

A media block's template gives, for each row, a path, an http(s) URL or (a bare
`{{ column }}` of a BLOB column) the bytes. The rows' values are gathered in one
statement; each *distinct* value is read and inspected once in Python (reading files is
the one thing SQL cannot do here), and what it is joins back to every row in SQL.

What goes in a request is not the bytes but their sha256: the source of an inline image
is `{"type": "base64", "media_type": "image/png", "data": "bp-media:<sha256>"}`, of an
uploaded one `{"type": "file", "file_id": "bp-file:<sha256>"}`. So the request hash
covers the content, not where it was read from (a moved file, or the same photo on two
rows, is the same request), batchpipe_requests stays small, and the bytes are put in
only when a batch's body is written (media_send.py), from batchpipe_media, which keeps
each distinct file once.

Everything the API would refuse is refused here, before anything is sent, naming the
row's key, the limit and the value: a missing or unreadable file, a type no block takes,
an image over 5 MB or 8000 px, more images or PDF pages in a request than the model takes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from batchpipe import media, models, templates
from batchpipe.errors import ConfigError
from batchpipe.pipeline_sql import Block, Resolved
from batchpipe.sqlcheck import quote_ident, sql_string

MEDIA_PLACEHOLDER = "bp-media:"  # + sha256: inline bytes, put in when the body is written
FILE_PLACEHOLDER = "bp-file:"  # + sha256: the file_id of its upload
PLACEHOLDER_CHARS = len(MEDIA_PLACEHOLDER) + 64
EXAMPLES = 3
# Temp tables of one connection: every row's media values, what each distinct value is,
# and the bytes of each distinct file (what batchpipe_media keeps once the run stores it).
REFS, VALUES, BYTES, ROWS = "bp_media_refs", "bp_media_values", "bp_media_bytes", "bp_media_rows"


@dataclass(frozen=True)
class Staged:
    """What the partition's media blocks hold, for logs and `plan`."""

    files: int  # distinct files read (bytes or downloads)
    urls: int  # distinct URLs sent as URLs, for the API to fetch
    tokens: int  # estimated input tokens of the media over all rows
    bytes: int  # of the distinct files

    def describe(self) -> str:
        parts = [f"{self.files} distinct file(s), {media._size(self.bytes)}"]
        if self.urls:
            parts.append(f"{self.urls} URL(s) the API fetches")
        return ", ".join(parts)


def stage(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, date: dt.date, fetch: Callable | None
) -> Staged | None:
    """Read, check and stage the partition's media (the date bound on `con`); None when
    the pipeline has no media blocks. Raises the file's ConfigError for what the API would
    refuse. `fetch(url) -> bytes` downloads a URL when media.fetch_urls is set."""
    blocks = resolved.media_blocks
    if not blocks:
        return None
    _gather(con, resolved, blocks)
    _inspect(con, resolved, fetch)
    _refuse(con, resolved, blocks, date)
    return _stage_rows(con, resolved, blocks)


def _gather(con: duckdb.DuckDBPyConnection, resolved: Resolved, blocks: list[Block]) -> None:
    """Every row's value of every media block, in one statement."""
    selects = []
    for block in blocks:
        value, blob = "NULL::VARCHAR", "NULL::BLOB"
        if block.blob_column is not None:
            blob = f"s.{quote_ident(block.blob_column)}"
        else:
            value = templates.to_sql(block.template, "s")
        selects.append(
            f"SELECT {resolved.custom_id_sql('s')} AS custom_id, "
            f"CAST({resolved.key_values_sql('s')} AS VARCHAR) AS key_values, {block.slot} AS slot, "
            f"{value} AS value, {blob} AS blob, "
            f"CASE WHEN {blob} IS NULL THEN NULL ELSE md5({blob}) END AS blob_md5 "
            f"FROM ({resolved.partition_rows_sql()}) AS s"
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {REFS} AS {' UNION ALL '.join(selects)}")


def _inspect(con: duckdb.DuckDBPyConnection, resolved: Resolved, fetch: Callable | None) -> None:
    """What each distinct value is: one read and one inspection a file, not a row."""
    settings = resolved.file.pipeline.media
    base = resolved.file.path.parent
    root = base / settings.root if settings.root else base
    root_inside = root.resolve()
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {VALUES} (value VARCHAR, blob_md5 VARCHAR, "
        "sha256 VARCHAR, media_type VARCHAR, size BIGINT, width INTEGER, height INTEGER, "
        "pages INTEGER, tokens BIGINT, text VARCHAR, url VARCHAR, error VARCHAR)"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {BYTES} (sha256 VARCHAR, data BLOB)")
    rows: list[tuple] = []
    kept: dict[str, bytes] = {}

    def inspected(value: str | None, blob_md5: str | None, data: bytes) -> tuple:
        try:
            info = media.inspect(data)
        except media.MediaError as err:
            return (value, blob_md5, None, None, len(data), None, None, None, 0, None, None,
                    str(err))  # fmt: skip
        if info.text is None:
            kept.setdefault(info.sha256, data)
        return (value, blob_md5, info.sha256, info.media_type, info.size, info.width,
                info.height, info.pages, info.tokens, info.text, None, None)  # fmt: skip

    for (value,) in con.execute(
        f"SELECT DISTINCT value FROM {REFS} WHERE blob_md5 IS NULL AND value IS NOT NULL"
    ).fetchall():
        if value.strip().lower().startswith(("http://", "https://")):
            if fetch is None:
                rows.append((value, None, None, None, None, None, None, None, 0, None, value, None))
                continue
            try:
                data = fetch(value.strip())
            except Exception as err:  # any failure to download is the row's error
                rows.append((value, None, None, None, None, None, None, None, 0, None, None,
                             f"could not be downloaded: {err}"))  # fmt: skip
                continue
            rows.append(inspected(value, None, data))
            continue
        if not value.strip():
            rows.append((value, None, None, None, None, None, None, None, 0, None, None,
                         "is empty: expected a file path, an http(s) URL or a BLOB"))  # fmt: skip
            continue
        path = Path(value)
        path = path if path.is_absolute() else root / path
        # A row's value is data: it may name a file only inside media.root, so a table's
        # contents can never send the machine's other files (keys, configs) to the API.
        if not path.resolve().is_relative_to(root_inside):
            rows.append((value, None, None, None, None, None, None, None, 0, None, None,
                         f"is outside media.root ({root_inside}): only files inside it are "
                         "sent; set media.root to a folder that holds them"))  # fmt: skip
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            why = "no such file" if isinstance(err, FileNotFoundError) else err.strerror
            rows.append((value, None, None, None, None, None, None, None, 0, None, None,
                         f"cannot be read ({path}: {why})"))  # fmt: skip
            continue
        rows.append(inspected(value, None, data))
    cursor = con.execute(
        f"SELECT blob_md5, any_value(blob) FROM {REFS} WHERE blob_md5 IS NOT NULL GROUP BY ALL"
    )
    while batch := cursor.fetchmany(256):
        rows.extend(inspected(None, md5, bytes(data)) for md5, data in batch)
    if rows:
        con.executemany(f"INSERT INTO {VALUES} VALUES ({', '.join('?' * 12)})", rows)
    if kept:
        con.executemany(f"INSERT INTO {BYTES} VALUES (?, ?)", list(kept.items()))


def _joined() -> str:
    """Every row's media value beside what the value is."""
    return (
        f"(SELECT r.custom_id, r.key_values, r.slot, r.value, v.* EXCLUDE (value, blob_md5) "
        f"FROM {REFS} r LEFT JOIN {VALUES} v ON (r.blob_md5 IS NULL AND v.value = r.value) "
        "OR (r.blob_md5 IS NOT NULL AND v.blob_md5 = r.blob_md5))"
    )


def _refuse(
    con: duckdb.DuckDBPyConnection, resolved: Resolved, blocks: list[Block], date: dt.date
) -> None:
    """One ConfigError listing each block's refused rows (a few examples each) and each
    request over a per-request limit."""
    pf = resolved.file
    info = models.model(pf.pipeline.request.model)
    problems: list[str] = []

    def examples(sql: str) -> tuple[int, str] | None:
        rows = con.execute(sql + f" LIMIT {EXAMPLES}").fetchall()
        if not rows:
            return None
        return rows[0][0], "; ".join(row[1] for row in rows)

    for block in blocks:
        shown = "'the BLOB'" if block.blob_column else "CAST(to_json(value) AS VARCHAR)"
        if block.kind == "image":
            wrong = f"media_type NOT IN {media.IMAGE_TYPES}"
            expected = "an image (JPEG, PNG, GIF or WebP)"
        else:
            wrong = f"media_type NOT IN {media.DOCUMENT_TYPES}"
            expected = "a document (PDF or UTF-8 text)"
        reason = (
            "CASE WHEN value IS NULL AND error IS NULL AND media_type IS NULL AND url IS NULL "
            "THEN 'has no value (NULL): expected a file path, an http(s) URL or a BLOB' "
            "WHEN error IS NOT NULL THEN error "
            f"ELSE 'is ' || media_type || ', not ' || {sql_string(expected)} END"
        )
        found = examples(
            f"SELECT count(*) OVER (), 'key ' || key_values || ': ' || {shown} "
            f"|| ' ' || {reason} FROM {_joined()} WHERE slot = {block.slot} AND (error IS NOT NULL "
            f"OR (media_type IS NULL AND url IS NULL) OR {wrong}) ORDER BY key_values"
        )
        if found:
            count, text = found
            problems.extend(
                pf.error(
                    block.key,
                    f"{count} row(s) of {date} cannot be sent: {text}; nothing was sent",
                ).problems
            )
    if problems:
        raise ConfigError(problems)
    # Limits of a whole request: how many images, their sides past 20 images, PDF pages,
    # and the request's size with its bytes in base64.
    most_images, most_pages = (
        media.max_images(info.context_window),
        media.max_pdf_pages(info.context_window),
    )
    inline = pf.pipeline.media.upload == "inline"
    image_slots = ", ".join(str(b.slot) for b in blocks if b.kind == "image") or "-1"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE bp_media_requests AS SELECT custom_id, "
        "any_value(key_values) AS key_values, "
        "count(*) FILTER (media_type LIKE 'image/%' OR (url IS NOT NULL AND slot IN "
        f"({image_slots}))) AS images, "
        "coalesce(sum(pages), 0) AS pages, "
        "max(greatest(width, height)) FILTER (media_type LIKE 'image/%') AS side, "
        f"coalesce(sum(CASE WHEN {inline} AND text IS NULL THEN 4 * ceil(size / 3) END), 0) "
        f"AS b64 FROM {_joined()} GROUP BY custom_id"
    )
    checks = [
        (
            f"images > {most_images}",
            "'holds ' || images || ' images'",
            f"more images than {info.id} takes in one request ({most_images})",
        ),
        (
            f"images > {media.MANY_IMAGES} AND side > {media.MANY_IMAGES_SIDE}",
            "'holds ' || images || ' images, one of them ' || side || ' px a side'",
            f"past {media.MANY_IMAGES} images in a request the API takes at most "
            f"{media.MANY_IMAGES_SIDE} px a side",
        ),
        (
            f"pages > {most_pages}",
            "'holds ' || pages || ' PDF pages'",
            f"more PDF pages than {info.id} takes in one request ({most_pages})",
        ),
        (
            f"b64 > {media.MAX_REQUEST_BYTES}",
            "'holds ' || round(b64 / 1048576, 1) || ' MB of base64'",
            f"over the API's request size limit of {media.MAX_REQUEST_BYTES // 1048576} MB "
            "(media.upload: files_api sends file ids instead of the bytes)",
        ),
    ]
    for condition, value, limit in checks:
        found = examples(
            f"SELECT count(*) OVER (), 'key ' || key_values || ' ' || {value} "
            f"FROM bp_media_requests WHERE {condition} ORDER BY key_values"
        )
        if found:
            count, text = found
            problems.extend(
                pf.error(
                    ("request", "prompt"),
                    f"{count} request(s) of {date} cannot be sent: {text}: {limit}; "
                    "nothing was sent",
                ).problems
            )
    if problems:
        raise ConfigError(problems)


def _source_sql(upload: str) -> str:
    """A media value's `source` object, as JSON text."""
    placeholder = (
        f'\'{{"type":"file","file_id":"{FILE_PLACEHOLDER}\' || sha256 || \'"}}\''
        if upload == "files_api"
        else '\'{"type":"base64","media_type":"\' || media_type || '
        f'\'","data":"{MEDIA_PLACEHOLDER}\' || sha256 || \'"}}\''
    )
    return (
        'CASE WHEN url IS NOT NULL THEN \'{"type":"url","url":\' || to_json(url) || \'}\' '
        "WHEN text IS NOT NULL THEN "
        '\'{"type":"text","media_type":"text/plain","data":\' || to_json(text) || \'}\' '
        f"ELSE {placeholder} END"
    )


def _stage_rows(con: duckdb.DuckDBPyConnection, resolved: Resolved, blocks: list[Block]) -> Staged:
    """One row a request: each media block's source JSON (s0, s1, ...), the media's
    estimated tokens and the bytes the body gains when the placeholders are filled."""
    upload = resolved.file.pipeline.media.upload
    sources = ", ".join(
        f"any_value({_source_sql(upload)}) FILTER (slot = {b.slot}) AS s{b.slot}" for b in blocks
    )
    image_slots = ", ".join(str(b.slot) for b in blocks if b.kind == "image") or "-1"
    tokens = (
        f"coalesce(tokens, 0) + CASE WHEN url IS NOT NULL AND slot IN ({image_slots}) "
        f"THEN {media.URL_IMAGE_TOKENS} ELSE 0 END"
    )
    grows = (
        f"CASE WHEN {sql_string(upload)} = 'inline' AND url IS NULL AND text IS NULL "
        f"THEN 4 * ceil(size / 3) - {PLACEHOLDER_CHARS} ELSE 0 END"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {ROWS} AS SELECT custom_id, {sources}, "
        f"CAST(sum({tokens}) AS BIGINT) AS media_tokens, "
        f"CAST(sum({grows}) AS BIGINT) AS media_bytes FROM {_joined()} GROUP BY custom_id"
    )
    files, urls, size = con.execute(
        f"SELECT count(*) FILTER (url IS NULL), count(*) FILTER (url IS NOT NULL), "
        f"coalesce(sum(size), 0) FROM {VALUES}"
    ).fetchone()
    (total,) = con.execute(f"SELECT coalesce(sum(media_tokens), 0) FROM {ROWS}").fetchone()
    return Staged(int(files), int(urls), int(total), int(size))


def store(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the bytes of each distinct file the requests name that batchpipe_media does
    not hold yet (inside the caller's transaction): a batch body is written from them."""
    con.execute(
        "INSERT INTO batchpipe_media (sha256, media_type, size_bytes, width, height, pages, "
        "tokens, data, stored_at) "
        f"SELECT b.sha256, v.media_type, v.size, v.width, v.height, v.pages, v.tokens, b.data, "
        f"timezone('UTC', now()) FROM {BYTES} b "
        f"JOIN (SELECT sha256, any_value(COLUMNS(* EXCLUDE (sha256))) FROM {VALUES} "
        "WHERE sha256 IS NOT NULL GROUP BY sha256) v USING (sha256) "
        "WHERE b.sha256 NOT IN (SELECT sha256 FROM batchpipe_media)"
    )


def drop(con: duckdb.DuckDBPyConnection) -> None:
    for table in (REFS, VALUES, BYTES, ROWS, "bp_media_requests"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
