"""One error family, so the CLI and Dagster can show an analyst a message, not a traceback.

Plain exceptions: this module imports neither Dagster nor the SDK. The Dagster layer
turns a BatchpipeError into a `dg.Failure` at its edge (batchpipe/defs/failures.py)."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator


class BatchpipeError(Exception):
    """Base of every error batchpipe raises on purpose.

    The CLI prints it as one `error:` block; an asset or the sensor raises it as a
    Dagster `Failure` (defs/failures.py), so a run shows the message in the UI instead
    of a stack trace.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BatchpipeError):
    """A pipeline file is wrong; every problem is listed as `file:line:col: key: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class WarehouseError(BatchpipeError):
    """DuckDB refused something: a lock held by another process, a bad query."""


class WarehouseLocked(WarehouseError):
    """Another process holds the DuckDB file's lock: a reader that comes back by itself
    (`batchpipe status --watch`) tries again instead of stopping."""


class BatchApiError(BatchpipeError):
    """The Batches API refused or failed in a way a retry will not fix."""


class ApiKeyError(BatchpipeError):
    """ANTHROPIC_API_KEY cannot be a key; the message says why without showing any of it."""


KEY_VARIABLE = "ANTHROPIC_API_KEY"
KEY_PLACEHOLDER = f"[{KEY_VARIABLE}]"
# Whose values `scrub` hides: the API key, and an object-store data path's secret key and
# session token (lake.py), which DuckDB's or a store's error text may quote.
SECRET_VARIABLES = (KEY_VARIABLE, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SCRUB_MIN_LENGTH = 8  # shorter values (test keys like "x") are not worth hunting in text


def api_key() -> str | None:
    """ANTHROPIC_API_KEY without surrounding whitespace (a key file saved on Windows ends
    in \\r\\n); None when unset or blank. A key with whitespace, a control character or
    anything but printable ASCII inside is refused before anything is sent: httpx would
    put the whole header, key and all, into its error."""
    key = os.environ.get(KEY_VARIABLE, "").strip()
    bad = next((c for c in key if not "!" <= c <= "~"), None)
    if bad is not None:
        what = {" ": "a space", "\t": "a tab", "\r": "a line break", "\n": "a line break"}.get(
            bad, "a control character" if bad.isascii() else "a character that is not ASCII"
        )
        raise ApiKeyError(
            f"{KEY_VARIABLE} has {what} inside it, which no API key has (the key is not "
            "shown here). Set it again to the key alone; nothing was sent"
        )
    return key or None


def scrub(text: str) -> str:
    """`text` with the value of ANTHROPIC_API_KEY (as set, stripped, or escaped as Python
    and httpx print it) replaced by [ANTHROPIC_API_KEY], and so on for each of
    SECRET_VARIABLES: for any error text before it is printed, logged or stored. A no-op
    for a variable that is unset or very short."""
    found: dict[str, str] = {}
    for name in SECRET_VARIABLES:
        raw = os.environ.get(name, "")
        secrets = {raw, raw.strip()}
        secrets |= {repr(s)[1:-1] for s in secrets} | {repr(s.encode())[2:-1] for s in secrets}
        found.update((s, f"[{name}]") for s in secrets if len(s) >= SCRUB_MIN_LENGTH)
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, found[secret])
    return text


def _without_key(err: Exception) -> Exception | None:
    """What to raise instead of `err` when its text or chain holds the key, else None."""
    text = "".join(traceback.format_exception(err))
    if scrub(text) == text:
        return None
    if isinstance(err, BatchpipeError):  # keep its class for the caller
        err.message = scrub(err.message)
        err.args = (err.message,)
        return err
    return BatchpipeError(scrub(f"{type(err).__name__}: {err}"))


@contextlib.contextmanager
def scrubbed() -> Iterator[None]:
    """A boundary (the CLI; in Dagster, defs/failures.py's `failing()`): an exception that
    leaves it holds no API key, in its message nor in a chained cause, so Dagster never
    stores one."""
    try:
        yield
    except Exception as err:
        clean = _without_key(err)
        if clean is None:
            raise
        raise clean from None  # and from None: the chain kept the key
