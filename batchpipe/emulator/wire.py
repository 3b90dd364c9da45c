"""Identifiers, timestamps and error envelopes exactly as the real API puts them on the wire.

Kept in one place so every endpoint and every result line agrees on formats the SDK and
the pipeline parse: `msgbatch_01…` ids, RFC 3339 UTC timestamps with microseconds and `Z`,
and the `{"type": "error", "error": {...}, "request_id": ...}` envelope.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import string
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring
from pathlib import Path
from typing import IO, Any

CHUNK_LINES = 4096
TAIL_BLOCK = 64 * 1024
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

# HTTP status -> error.type, from the API's errors page (research §4.2).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(eq=False)
class ApiError(Exception):
    """An API failure: raised by endpoints (becomes an HTTP error) or returned by the
    responder for a batch line (becomes an `errored` result line)."""

    status: int
    type: str
    message: str
    # `error.details` (the SDK picks a narrower exception class by its `error_code`) and
    # extra response headers (`retry-after`): only the emulated account limits set them.
    details: dict[str, Any] | None = field(default=None, kw_only=True)
    headers: dict[str, str] | None = field(default=None, kw_only=True)

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"


def invalid(message: str) -> ApiError:
    """The common 400 `invalid_request_error`."""
    return ApiError(400, "invalid_request_error", message)


def not_found(message: str) -> ApiError:
    """The common 404 `not_found_error`."""
    return ApiError(404, "not_found_error", message)


# A random byte below 248 (4 * 62) is a uniform base62 digit: byte % 62. The 8 bytes
# above are dropped, not folded in, which would make 8 digits likelier than the rest.
_USABLE = 4 * 62
_DIGIT_OF_BYTE = bytes(ord(BASE62[byte % 62]) for byte in range(256))
_UNUSABLE = bytes(range(_USABLE, 256))


def _base62(length: int) -> str:
    """`length` uniform random base62 digits: fresh random bytes, the few unusable ones
    dropped and the rest mapped to digits in one `bytes.translate`. Ids are made for
    every result line, and this costs a third of dividing a big random number by 62
    digit after digit. Never from a buffer of random bytes, which a forked child would
    share (and so repeat ids)."""
    digits = b""
    while len(digits) < length:  # 1/32 of the bytes are dropped: the spare ones make a
        spare = length // 24 + 10  # second draw a 1-in-10^9 event for one id or many
        digits += secrets.token_bytes(length + spare).translate(_DIGIT_OF_BYTE, _UNUSABLE)
    return digits[:length].decode("ascii")


def new_batch_id() -> str:
    """`msgbatch_01` + 22 base62 characters, the shape of real batch ids."""
    return "msgbatch_01" + _base62(22)


def new_message_id() -> str:
    """`msg_01` + 22 base62 characters, the shape of real message ids."""
    return "msg_01" + _base62(22)


def new_message_ids(count: int) -> list[str]:
    """`count` message ids from one draw of random bytes (see _base62): a batch's lines
    need one each, and a draw per id cost more than the id's digits."""
    digits = _base62(22 * count)
    return ["msg_01" + digits[start : start + 22] for start in range(0, 22 * count, 22)]


def new_request_id() -> str:
    """`req_011C` + 20 base62 characters, the shape of real `request-id` headers."""
    return "req_011C" + _base62(20)


def new_file_id() -> str:
    """`file_011C` + 20 base62 characters, the shape of real Files API ids."""
    return "file_011C" + _base62(20)


def rfc3339(moment: dt.datetime) -> str:
    """UTC, always with microseconds and `Z`, like `2024-09-24T18:37:24.100435Z`."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_body(error: ApiError, request_id: str | None) -> dict[str, Any]:
    """The HTTP error envelope; `request_id` is the same as the `request-id` header."""
    inner: dict[str, Any] = {"type": error.type, "message": error.message}
    if error.details is not None:
        inner["details"] = error.details
    return {"type": "error", "error": inner, "request_id": request_id}


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def json_encoder(*, separators: tuple[str, str], sort_keys: bool = False) -> Callable[[Any], str]:
    """`json.dumps(obj, ensure_ascii=False, separators=..., sort_keys=...)` as a function
    that reuses one C encoder. `JSONEncoder.encode` makes a new one on every call, which
    costs more than encoding a small value, and the emulator encodes several values per
    request. No circular-reference check (a cycle is a RecursionError, not a ValueError):
    what is encoded here was parsed from JSON or built by the emulator, never cyclic."""
    if c_make_encoder is None:  # no C accelerator: the stdlib's own path
        return json.JSONEncoder(
            ensure_ascii=False, separators=separators, sort_keys=sort_keys
        ).encode
    item, key = separators
    encoder = c_make_encoder(
        None, _not_serializable, encode_basestring, None, key, item, sort_keys, False, True
    )
    join = "".join

    def encode(obj: Any) -> str:
        return join(encoder(obj, 0))

    return encode


# json.dumps(obj, separators=(",", ":"), ensure_ascii=False), for every line written.
_compact = json_encoder(separators=(",", ":"))


# `text` as a JSON string, escaped exactly as the line encoder escapes strings (the same
# C function: bound to a name, not wrapped, since templates call it several times a line).
json_string: Callable[[str], str] = encode_basestring


class Prepared(dict[str, Any]):
    """A dict that carries its own compact JSON `text`, made where the dict is built.

    A result line's Message and a ledger line are built once per request, mostly from
    constants; filling a template with their few varying values costs a fraction of
    encoding the dict key by key, and `dumps_line` puts the text in as is. Read-only,
    so the text cannot fall behind the dict; values inside it (`usage`, `content`) are
    shared with the text too and must not be changed either."""

    __slots__ = ("text",)
    text: str

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle refill through `prepared`
        return prepared, (dict(self), self.text)

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a Prepared dict is read-only: copy it to change it")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def prepared(items: dict[str, Any], text: str) -> Prepared:
    """`items` as a Prepared dict whose JSON is `text` (which the caller vouches for).
    A function rather than an __init__: dict's own, in C, costs a third as much."""
    made = Prepared(items)
    made.text = text
    return made


def _holds_prepared(obj: dict[Any, Any], depth: int) -> bool:
    """Whether a Prepared dict is among `obj`'s values, looking `depth` dicts down."""
    for value in obj.values():
        kind = type(value)
        if kind is Prepared or (kind is dict and depth and _holds_prepared(value, depth - 1)):
            return True
    return False


def _spliced(obj: dict[Any, Any]) -> str:
    """Compact JSON of `obj` with every Prepared dict reached through dicts put in as its
    text: the same bytes as encoding it whole, since a Prepared text is its encoding."""
    parts = []
    for key, value in obj.items():
        if type(key) is not str:  # json.dumps' own rules for other keys
            return _compact(obj)
        kind = type(value)
        if kind is Prepared:
            text = value.text
        elif kind is str:
            text = encode_basestring(value)
        elif kind is dict:
            text = _spliced(value)
        else:
            text = _compact(value)
        parts.append(f"{encode_basestring(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def dumps_line(obj: Any) -> str:
    """Compact JSON with no newline inside, so it can be one JSONL line. A Prepared dict,
    or one a result line wraps (two dicts down), is written from its text."""
    kind = type(obj)
    if kind is Prepared:
        return obj.text
    if kind is dict and _holds_prepared(obj, 1):
        return _spliced(obj)
    return _compact(obj)


def load_lines(path: Path) -> list[str]:
    """The complete lines of an append-only JSONL file. A crash mid-append can leave a
    torn last line without its newline: it is cut off the file, so the next append
    starts on a clean line and the lost entry is simply written again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(whole))
    # split on "\n" only: ensure_ascii=False leaves U+2028 and the like raw in a line
    return [line for line in whole.decode("utf-8").split("\n") if line]


def cut_torn_tail(path: Path) -> None:
    """load_lines' repair without reading the file: cut a torn last line (no newline)
    off an append-only JSONL file, looking back from its end a block at a time."""
    if not path.exists():
        return
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            handle.truncate(end)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of an append-only JSONL file, parsed (see load_lines)."""
    return [json.loads(line) for line in load_lines(path)]


def write_lines(handle: IO[bytes], lines: Sequence[str]) -> None:
    """Write lines, each with its newline, a chunk at a time: joining a whole batch's
    lines first would build (and page in) a 100 MB string, then its encoded copy."""
    for start in range(0, len(lines), CHUNK_LINES):
        chunk = lines[start : start + CHUNK_LINES]
        handle.write(("\n".join(chunk) + "\n").encode("utf-8"))


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see either the old or the new file, never half."""
    atomic_write_with(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`atomic_write`, the content written by `write(handle)`."""
    tmp = write_aside(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_aside(path: Path, write: Callable[[IO[bytes]], object]) -> str:
    """The first half of atomic_write_with: the content in a synced temporary file beside
    `path`, which os.replace then puts in its place. A sync can take long when much is
    waiting to be written; a rename never does, so only that need be under a lock."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; state files are meant to be inspected
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append JSONL lines, fsynced before returning."""
    if not lines:
        return
    with path.open("ab") as handle:
        write_lines(handle, lines)
        handle.flush()
        os.fsync(handle.fileno())
