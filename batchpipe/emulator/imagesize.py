"""What a file is, and an image's width and height, read from its header bytes.

The emulator checks media types and counts image tokens the way the API does, so it must
know an image's size; and it must not borrow that from Pillow (or any image library the
product might also use), or a shared bug would pass both. The four formats the API takes
keep their size in the first bytes: PNG in IHDR, GIF in the logical screen descriptor,
JPEG in its SOFn segment, WebP in its VP8/VP8L/VP8X chunk. That is all read here.
"""

from __future__ import annotations

import struct

PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
PDF = "application/pdf"
TEXT = "text/plain"
OCTETS = "application/octet-stream"
IMAGE_TYPES = (JPEG, PNG, GIF, WEBP)  # in the order the API's error message lists them
PDF_MAGIC_WITHIN = 1024  # the PDF spec lets `%PDF-` sit anywhere in the first 1 KiB

# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_NO_LENGTH = frozenset((0x01, 0xD8, *range(0xD0, 0xD8)))  # TEM, SOI, RSTn: bare markers


def sniff_image(data: bytes) -> str | None:
    """The image media type the bytes' magic number says, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:PDF_MAGIC_WITHIN]


def sniff_mime(data: bytes, declared: str | None = None) -> str:
    """The mime type the Files API records: from the magic number, else UTF-8 text is
    text/plain, else what the upload declared, else application/octet-stream."""
    found = sniff_image(data)
    if found is not None:
        return found
    if is_pdf(data):
        return PDF
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return declared or OCTETS
    return TEXT


def image_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the header of an image of `media_type`; None if the header
    is cut short or malformed."""
    try:
        if media_type == PNG:
            return _png(data)
        if media_type == GIF:
            return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None
        if media_type == JPEG:
            return _jpeg(data)
        if media_type == WEBP:
            return _webp(data)
    except (struct.error, IndexError):
        return None
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the segments after SOI to the first SOFn (a scan before any frame is bad)."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before a frame header
            return None
        length = (data[at + 2] << 8) | data[at + 3]
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then width-1 and height-1 in 14 bits
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas width-1 and height-1 in 24 bits each
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None
