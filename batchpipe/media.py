"""What an image or document is, from its bytes: its type, size, pixels or pages, tokens.

The API takes JPEG, PNG, GIF and WebP images and PDF or plain text documents, names the
type in the request and checks it against the bytes; it refuses images over 5 MB (of
base64) or 8000 px a side, and PDFs over their page limit. In a batch each of those comes
back a day later as an errored row, so batchpipe reads the bytes first (the type from
their magic numbers, never the file name), checks the same limits before anything is
sent, and estimates tokens as the API documents them:

- an image costs about width x height / 750 tokens, at the size the API scales it to
  (a long edge over 1568 px, or more than about 1.15 megapixels, is scaled down);
- a PDF page costs the tokens of its text plus those of an image of the page.

Pillow reads an image's size from its header (the pixels are never decoded) and pypdf a
PDF's pages; both are well-kept libraries that know the formats' corners.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from batchpipe.pricing import CHARS_PER_TOKEN

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DOCUMENT_TYPES = ("application/pdf", "text/plain")
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # base64 characters of one image
MAX_IMAGE_SIDE = 8000
MANY_IMAGES = 20  # past this many images in a request, each side is limited to:
MANY_IMAGES_SIDE = 2000
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # a Messages request, media included
MAX_PDF_BYTES = 32 * 1024 * 1024  # one PDF, however it is sent
SCALE_LONG_EDGE = 1568  # the API scales an image down past either of these
SCALE_PIXELS = 1_150_000
PIXELS_PER_TOKEN = 750
LARGE_CONTEXT = 1_000_000  # models with this window take more images and PDF pages


def max_images(context_window: int) -> int:
    """Images one request may hold: 100 for a model with a window under 1M tokens."""
    return 600 if context_window >= LARGE_CONTEXT else 100


def max_pdf_pages(context_window: int) -> int:
    """PDF pages one request may hold: 100 for a model with a window under 1M tokens."""
    return 600 if context_window >= LARGE_CONTEXT else 100


class MediaError(ValueError):
    """Bytes the API would refuse, or that are not media at all: the message says why."""


@dataclass(frozen=True)
class Info:
    """One distinct file's facts, all read from its bytes."""

    sha256: str
    media_type: str
    size: int  # bytes
    width: int | None = None  # images
    height: int | None = None
    pages: int | None = None  # PDFs
    tokens: int = 0  # estimated input tokens (a plain text document: 0, its text is sent)
    text: str | None = None  # a plain text document's text, which is sent as text


def sniff(data: bytes) -> str | None:
    """The media type the bytes are, by their magic numbers; None when none of the API's."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.lstrip(b"\x00\t\n\r \x0c")[:5] == b"%PDF-" or b"%PDF-" in data[:1024]:
        return "application/pdf"
    if _is_text(data):
        return "text/plain"
    return None


def _is_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def inspect(data: bytes) -> Info:
    """The facts of one file's bytes; MediaError for what no API block takes, or what the
    API refuses whatever the request (an image over 5 MB or 8000 px, an unreadable PDF)."""
    media_type = sniff(data)
    digest = hashlib.sha256(data).hexdigest()
    if media_type is None:
        raise MediaError(
            f"not a supported type ({_head(data)}): expected JPEG, PNG, GIF or WebP for an "
            "image, PDF or UTF-8 text for a document"
        )
    if media_type in IMAGE_TYPES:
        return _image(data, digest, media_type)
    if media_type == "application/pdf":
        if len(data) > MAX_PDF_BYTES:
            raise MediaError(
                f"is a PDF of {_size(len(data))}: over the API's {_size(MAX_PDF_BYTES)} a PDF"
            )
        return _pdf(data, digest)
    return Info(digest, media_type, len(data), text=data.decode("utf-8"))


def _image(data: bytes, digest: str, media_type: str) -> Info:
    from PIL import Image, UnidentifiedImageError

    encoded = 4 * math.ceil(len(data) / 3)
    if encoded > MAX_IMAGE_BASE64:
        raise MediaError(
            f"{media_type} of {_size(len(data))} is {encoded:,} bytes of base64, over the "
            f"API's limit of {MAX_IMAGE_BASE64:,} (5 MB) an image"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header, not the pixels
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MediaError(f"looks like {media_type} but cannot be read: {err}") from None
    if max(width, height) > MAX_IMAGE_SIDE:
        raise MediaError(
            f"{media_type} is {width}x{height} px, over the API's limit of {MAX_IMAGE_SIDE} px "
            "a side"
        )
    return Info(digest, media_type, len(data), width, height, tokens=image_tokens(width, height))


def _pdf(data: bytes, digest: str) -> Info:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise MediaError("is an encrypted PDF: the API takes only PDFs without a password")
        pages = list(reader.pages)
        tokens = 0
        for page in pages:
            box = page.mediabox
            tokens += image_tokens(round(float(box.width)), round(float(box.height)))
            tokens += math.ceil(len(page.extract_text() or "") / CHARS_PER_TOKEN)
    except MediaError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as err:
        raise MediaError(f"is not a readable PDF: {err}") from None
    if not pages:
        raise MediaError("is a PDF with no pages")
    return Info(digest, "application/pdf", len(data), pages=len(pages), tokens=tokens)


def scaled(width: int, height: int) -> tuple[int, int]:
    """The size the API scales an image to before it counts its tokens."""
    factor = min(1.0, SCALE_LONG_EDGE / max(width, height, 1))
    factor = min(factor, math.sqrt(SCALE_PIXELS / max(width * height, 1)))
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


def image_tokens(width: int, height: int) -> int:
    """About width x height / 750 tokens, at the scaled size."""
    w, h = scaled(width, height)
    return math.ceil(w * h / PIXELS_PER_TOKEN)


# What an image named by a URL, which batchpipe does not fetch, is assumed to cost: the
# most any image costs once scaled.
URL_IMAGE_TOKENS = image_tokens(SCALE_LONG_EDGE, SCALE_LONG_EDGE)


def _head(data: bytes) -> str:
    if not data:
        return "the file is empty"
    return f"it starts with {data[:8].hex(' ')}"


def _size(size: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
