"""What one image or document costs in tokens, and the line a reply quotes it by.

The emulator's own arithmetic (tests hold the pipeline's cost accounting to it):

* An image is first scaled down as the API does: the long edge to at most 1568 px,
  then the area to at most 1,150,000 px, keeping the aspect ratio and rounding each
  side down (never below 1 px). It then costs ceil(width * height / 750) tokens.
* A PDF page costs the tokens of its text (tokens.count_tokens, the rule for all text)
  plus an image of the page: its MediaBox at 1 pt = 1 px (rounded), scaled as above;
  1568 x 1568 when the page has no readable MediaBox.
* A plain-text document costs the tokens of its text.

`MediaInfo.line` is what a reply adds for each media block of the last user message, so
a test can tell which answer belongs to which image: its type, size, byte count and the
first 12 hex digits of the bytes' SHA-256.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from batchpipe.emulator.imagesize import PDF, TEXT
from batchpipe.emulator.pdf import Page
from batchpipe.emulator.tokens import count_tokens

MAX_EDGE = 1568
MAX_PIXELS = 1_150_000
PIXELS_PER_TOKEN = 750
UNKNOWN_PAGE = (1568, 1568)  # a page without a readable MediaBox
MAX_INFOS = 4096  # inspected media remembered; more and the memo starts over


def scaled_size(width: int, height: int) -> tuple[int, int]:
    """The size the API resizes an image to before counting it (see the docstring)."""
    longest = max(width, height)
    if longest > MAX_EDGE:
        width = max(1, width * MAX_EDGE // longest)
        height = max(1, height * MAX_EDGE // longest)
    if width * height > MAX_PIXELS:
        scale = math.sqrt(MAX_PIXELS / (width * height))
        width = max(1, math.floor(width * scale + 1e-9))
        height = max(1, math.floor(height * scale + 1e-9))
        while width * height > MAX_PIXELS:  # float rounding may leave a pixel over
            if width >= height:
                width -= 1
            else:
                height -= 1
    return width, height


def image_tokens(width: int, height: int) -> int:
    scaled_width, scaled_height = scaled_size(width, height)
    return -(-(scaled_width * scaled_height) // PIXELS_PER_TOKEN)


def page_tokens(page: Page) -> int:
    """One PDF page: its text, plus its image at 1 pt = 1 px."""
    width, height = UNKNOWN_PAGE
    if page.width is not None and page.height is not None and min(page.width, page.height) >= 0.5:
        width, height = round(page.width), round(page.height)
    return image_tokens(width, height) + count_tokens(page.text)


@dataclass(frozen=True)
class MediaInfo:
    """One inspected image or document (never its bytes: it is kept in a memo)."""

    kind: str  # "image", "pdf" or "text"
    media_type: str
    size: int  # bytes
    sha12: str  # first 12 hex digits of the bytes' SHA-256
    tokens: int
    width: int = 0
    height: int = 0
    pages: int = 0

    def line(self) -> str:
        where = f"{self.size} bytes sha256:{self.sha12}"
        if self.kind == "image":
            return f"[image {self.media_type} {self.width}x{self.height} {where}]"
        if self.kind == "pdf":
            return f"[document {self.media_type} {self.pages} pages {where}]"
        return f"[document {self.media_type} {where}]"


def _sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def image_info(data: bytes, media_type: str, width: int, height: int) -> MediaInfo:
    tokens = image_tokens(width, height)
    return MediaInfo("image", media_type, len(data), _sha12(data), tokens, width, height)


def pdf_info(data: bytes, pages: list[Page]) -> MediaInfo:
    tokens = sum(page_tokens(page) for page in pages)
    return MediaInfo("pdf", PDF, len(data), _sha12(data), tokens, pages=len(pages))


def text_info(text: str) -> MediaInfo:
    data = text.encode("utf-8", "surrogatepass")
    return MediaInfo("text", TEXT, len(data), _sha12(data), count_tokens(text))


_INFOS: dict[Hashable, MediaInfo] = {}


def remembered(key: Hashable, make: Callable[[], MediaInfo]) -> MediaInfo:
    """`make()`, memoised by `key`: a batch's lines mostly repeat a few pictures, and
    decoding and hashing 5 MB for each would dominate answering them. No lock (dict
    operations are atomic, and a forked child must never inherit a held lock); only
    valid media are kept, errors are raised again each time."""
    info = _INFOS.get(key)
    if info is None:
        info = make()
        if len(_INFOS) >= MAX_INFOS:
            _INFOS.clear()
        _INFOS[key] = info
    return info


def text_key(kind: str, text: str) -> tuple[Hashable, ...]:
    """A memo key for a long string without keeping it: its length, 64-bit hash and ends
    (two texts of one length with the same ends and hash: about 1 in 2**64)."""
    return (kind, len(text), hash(text), text[:32], text[-32:])
