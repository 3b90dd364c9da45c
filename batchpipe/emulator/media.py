"""Image and document blocks: their sources resolved, checked as the real API checks
them, and measured (mediainfo.py) for token counts and reply lines.

A pipeline that sends media must meet, against the emulator, the refusals production
gives: a media type that is not allowed or not what the bytes are, bad base64, an image
over 5 MB of base64 or over 8000 px a side, more than 20 images with one over 2000 px,
more media than the model takes (images plus PDF pages: 100, or 600 for a 1M-token
context window), a PDF over that many pages, a file id that is unknown, deleted or
expired, a URL that cannot be downloaded. In a batch each is an errored line
(`invalid_request_error`) for that custom_id; in `/v1/messages` and count_tokens a 400.

Error strings are the real API's where they were seen in the wild (the GitHub issues of
API users quote them); these are inferred and may differ from the real wording:
`Could not process image` for a file or URL whose bytes are no image, the messages for a
file of the wrong kind, "PDF cannot be empty", and `File not found: <id>`.

Sources: `base64` and `text` are inline; `url` is fetched by fetch.UrlFetcher (loopback
only); `file` is looked up in files.FileStore at the moment the request is answered.
Outside a batch a `file` source needs the Files API beta header, as on the real API
(without it the source tag is unknown); inside a batch nothing extra is required, but
each file use without the header is counted (`reads_without_beta`).

A base64 or text source without a `media_type` is left as it always was (an opaque
block of tokens.MEDIA_TOKENS, or its text): requests written before media were checked,
the golden batches among them, keep their answers and costs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchpipe.emulator import pdf
from batchpipe.emulator.fetch import UrlFetcher
from batchpipe.emulator.files import FileRecord, FileStore
from batchpipe.emulator.imagesize import IMAGE_TYPES, PDF, TEXT, image_size, sniff_image
from batchpipe.emulator.mediainfo import (
    MediaInfo,
    image_info,
    pdf_info,
    remembered,
    text_info,
    text_key,
)
from batchpipe.emulator.models import ModelSpec
from batchpipe.emulator.tokens import count_tokens
from batchpipe.emulator.wire import invalid

FILES_BETA = "files-api-2025-04-14"
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # characters of base64, as the API measures it
MAX_IMAGE_SIDE = 8000
MANY_IMAGES = 20  # more images than this, and each side must be <= MANY_IMAGES_SIDE
MANY_IMAGES_SIDE = 2000
LARGE_CONTEXT = 1_000_000
CANNOT_PROCESS = "Could not process image"
IMAGE_TYPE_LIST = "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
# Blocks that are or hold media; a tuple, so a `type` that is no string cannot raise.
_HOLDERS = ("image", "document", "tool_result")


def media_limit(spec: ModelSpec) -> int:
    """Images plus PDF pages a request may carry, and pages a PDF may have."""
    return 600 if spec.context_window >= LARGE_CONTEXT else 100


@dataclass(frozen=True)
class Sources:
    """Where `file` and `url` sources are found; None: nowhere (every such one fails)."""

    files: FileStore | None = None
    urls: UrlFetcher | None = None


@dataclass(frozen=True)
class Found:
    """One checked media block: where it is (the API's path to its source), what it is,
    and the tokens its document title and context add."""

    block: dict[str, Any]
    where: str
    info: MediaInfo
    extra_tokens: int = 0


class Media:
    """A request's checked media blocks, looked up by the block itself (the request's
    params are not copied while it is answered, so a block's identity is stable)."""

    def __init__(self, found: list[Found]) -> None:
        self.found = found
        self._by_id = {id(item.block): item for item in found}

    def tokens_of(self, block: Any) -> int | None:
        item = self._by_id.get(id(block))
        return None if item is None else item.info.tokens + item.extra_tokens

    def lines(self, messages: Sequence[Any]) -> list[str]:
        """The reply lines of the last user message's media, in order."""
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return [item.info.line() for item in self._in(message.get("content"))]
        return []

    def _in(self, content: Any) -> list[Found]:
        found = []
        for block in content if isinstance(content, list) else ():
            if id(block) in self._by_id:
                found.append(self._by_id[id(block)])
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                found += self._in(block.get("content"))
        return found


@dataclass(frozen=True)
class _Context:
    spec: ModelSpec
    sources: Sources
    files_allowed: bool  # a `file` source is a known tag (batch, or the beta header)
    with_beta: bool
    now: dt.datetime


def inspect(
    params: dict[str, Any],
    spec: ModelSpec,
    *,
    sources: Sources | None,
    batch: bool,
    betas: Sequence[str],
    now: dt.datetime,
) -> Media | None:
    """The request's media, checked; None when it has none. Raises the API's ApiError."""
    with_beta = FILES_BETA in betas
    context = _Context(spec, sources or Sources(), batch or with_beta, with_beta, now)
    found: list[Found] = []
    messages = params.get("messages")
    for m_index, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is not list:
            continue
        for b_index, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") not in _HOLDERS:
                continue  # text and the like: no path made for them
            where = f"messages.{m_index}.content.{b_index}"
            _visit(block, where, context, found)
            if block["type"] == "tool_result":
                inner = block.get("content")
                for index, part in enumerate(inner if isinstance(inner, list) else ()):
                    _visit(part, f"{where}.tool_result.content.{index}", context, found)
    if not found:
        return None
    _check_counts(found, spec)
    return Media(found)


def _visit(block: Any, where: str, context: _Context, found: list[Found]) -> None:
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "image":
        info = _image(block, where, context)
        if info is not None:
            found.append(Found(block, f"{where}.image.source.{block['source']['type']}", info))
    elif kind == "document":
        info = _document(block, where, context)
        if info is not None:
            found.append(Found(block, f"{where}.document", info, _document_text(block, where)))


def _check_counts(found: list[Found], spec: ModelSpec) -> None:
    images = [item for item in found if item.info.kind == "image"]
    if len(images) > MANY_IMAGES:
        for item in images:
            if max(item.info.width, item.info.height) > MANY_IMAGES_SIDE:
                raise invalid(
                    f"{item.where}.data: At least one of the image dimensions exceed max "
                    f"allowed size for many-image requests: {MANY_IMAGES_SIDE} pixels"
                )
    pages = sum(item.info.pages for item in found)
    limit = media_limit(spec)
    if pages + len(images) > limit:
        raise invalid(f"Too much media: {pages} document pages + {len(images)} images > {limit}")


def _document_text(block: dict[str, Any], where: str) -> int:
    """The tokens of a document's `title` and `context`, which reach the model too."""
    tokens = 0
    for key in ("title", "context"):
        value = block.get(key)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{where}.document.{key}: Input should be a valid string")
        tokens += count_tokens(value or "")
    return tokens


def _source(block: dict[str, Any], where: str, kind: str, context: _Context) -> dict[str, Any]:
    """The block's source, or the API's error for a missing or unknown one."""
    if "source" not in block:
        raise invalid(f"{where}.{kind}.source: Field required")
    source = block["source"]
    if not isinstance(source, dict):
        raise invalid(f"{where}.{kind}.source: Input should be a valid dictionary")
    tags = ["base64", "url"] if kind == "image" else ["base64", "content", "text", "url"]
    if context.files_allowed:
        tags = sorted([*tags, "file"])
    tag = source.get("type")
    if tag not in tags:
        if "type" not in source:
            raise invalid(
                f"{where}.{kind}.source: Unable to extract tag using discriminator 'type'"
            )
        expected = ", ".join(f"'{name}'" for name in tags)
        raise invalid(
            f"{where}.{kind}.source: Input tag '{tag}' found using 'type' does not match any "
            f"of the expected tags: {expected}"
        )
    return source


def _string(source: dict[str, Any], key: str, where: str) -> str:
    if key not in source:
        raise invalid(f"{where}.{key}: Field required")
    value = source[key]
    if not isinstance(value, str):
        raise invalid(f"{where}.{key}: Input should be a valid string")
    return value


def _decoded(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}: invalid base64 data") from None


# Images


def _image(block: dict[str, Any], where: str, context: _Context) -> MediaInfo | None:
    source = _source(block, where, "image", context)
    tag = source["type"]
    at = f"{where}.image.source.{tag}"
    if tag == "base64":
        if "media_type" not in source:
            return None  # opaque, as before media were checked (see the docstring)
        media_type = source["media_type"]
        if media_type not in IMAGE_TYPES:
            raise invalid(f"{at}.media_type: Input should be {IMAGE_TYPE_LIST}")
        data = _string(source, "data", at)
        if not data:
            raise invalid(f"{at}: image cannot be empty")
        if len(data) > MAX_IMAGE_BASE64:
            raise invalid(
                f"{at}: image exceeds 5 MB maximum: {len(data)} bytes > {MAX_IMAGE_BASE64} bytes"
            )
        key = text_key(f"image {media_type}", data)
        return remembered(key, lambda: _image_bytes(_decoded(data, at), media_type, at))
    if tag == "url":
        raw = _fetched(source, at, context)
        return remembered(("image url", len(raw), hash(raw)), lambda: _image_bytes(raw, None, at))
    record, raw = _file(source, at, context)
    if record.mime_type not in IMAGE_TYPES:
        raise invalid(
            f"{at}: The file {record.id} has mime type {record.mime_type}, which is not a "
            f"supported image type ({IMAGE_TYPE_LIST})"
        )
    return remembered(("image file", record.id), lambda: _image_bytes(raw(), None, at))


def _image_bytes(data: bytes, declared: str | None, at: str) -> MediaInfo:
    """An image's info from its bytes; `declared` is the media type the request gave
    (None for URL and file sources, which are taken for what their bytes are)."""
    found = sniff_image(data)
    if declared is not None and found is None:
        raise invalid(f"{at}.data: Image does not match the provided media type {declared}")
    if declared is not None and found != declared:
        raise invalid(
            f"{at}: The image was specified using the {declared} media type, but the image "
            f"appears to be a {found} image"
        )
    size = image_size(data, found) if found is not None else None
    if size is None or min(size) < 1:
        raise invalid(CANNOT_PROCESS)
    if max(size) > MAX_IMAGE_SIDE:
        raise invalid(
            f"{at}.data: At least one of the image dimensions exceed max allowed size: "
            f"{MAX_IMAGE_SIDE} pixels"
        )
    assert found is not None
    return image_info(data, found, *size)


# Documents


def _document(block: dict[str, Any], where: str, context: _Context) -> MediaInfo | None:
    source = _source(block, where, "document", context)
    tag = source["type"]
    at = f"{where}.document.source.{tag}"
    if tag == "content":
        return None  # content blocks as a document: counted as before
    if tag == "text":
        if "media_type" not in source:
            return None  # counted by its text, as before media were checked
        if source["media_type"] != TEXT:
            raise invalid(f"{at}.media_type: Input should be '{TEXT}'")
        text = _string(source, "data", at)
        return remembered(text_key("text", text), lambda: text_info(text))
    if tag == "base64":
        if "media_type" not in source:
            return None  # opaque, as before media were checked
        if source["media_type"] != PDF:
            raise invalid(f"{at}.media_type: Input should be '{PDF}'")
        data = _string(source, "data", at)
        at = f"{where}.pdf.source.base64"  # the API names PDF problems so
        if not data:
            raise invalid(f"{at}: PDF cannot be empty")
        info = remembered(text_key("pdf", data), lambda: _pdf_bytes(_decoded(data, at), at))
    elif tag == "url":
        raw = _fetched(source, at, context)
        at = f"{where}.pdf.source.url"
        info = remembered(("pdf url", len(raw), hash(raw)), lambda: _pdf_bytes(raw, at))
    else:
        record, read = _file(source, at, context)
        if record.mime_type == TEXT:
            return remembered(("text file", record.id), lambda: text_info(_utf8(read())))
        if record.mime_type != PDF:
            raise invalid(
                f"{at}: The file {record.id} has mime type {record.mime_type}, which is not "
                f"a supported document type ('{PDF}' or '{TEXT}')"
            )
        at = f"{where}.pdf.source.file"
        info = remembered(("pdf file", record.id), lambda: _pdf_bytes(read(), at))
    limit = media_limit(context.spec)
    if info.pages > limit:
        raise invalid(f"{at}.data: A maximum of {limit} PDF pages may be provided.")
    return info


def _pdf_bytes(data: bytes, at: str) -> MediaInfo:
    pages = pdf.pages(data)
    if not pages:
        raise invalid(f"{at}.data: The PDF specified was not valid.")
    return pdf_info(data, pages)


def _utf8(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# URL and file sources


def _fetched(source: dict[str, Any], at: str, context: _Context) -> bytes:
    url = _string(source, "url", at)
    if context.sources.urls is None:
        raise invalid("Unable to download the file. Please verify the URL and try again.")
    return context.sources.urls.get(url)


def _file(
    source: dict[str, Any], at: str, context: _Context
) -> tuple[FileRecord, Callable[[], bytes]]:
    """The live file a `file` source names, and a function reading its bytes."""
    file_id = _string(source, "file_id", at)
    files = context.sources.files
    record = files.live(file_id, context.now) if files is not None else None
    if files is None or record is None:
        raise invalid(f"File not found: {file_id}")
    files.note_read(file_id, context.with_beta)

    def read() -> bytes:
        try:
            return files.read(record)
        except FileNotFoundError:  # deleted while this request was answered
            raise invalid(f"File not found: {file_id}") from None

    return record, read
