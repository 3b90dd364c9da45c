"""One error family, so the CLI and Dagster can show an analyst a message, not a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anthropic
import dagster as dg


class BatchpipeError(dg.Failure):
    """Base of every error batchpipe raises on purpose.

    It is a Dagster `Failure`, so a run that hits it shows the message in the UI
    instead of a stack trace; the CLI prints it as one `error:` block.
    """

    def __init__(self, message: str) -> None:
        super().__init__(description=message)
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


class BatchApiError(BatchpipeError):
    """The Batches API refused or failed in a way a retry will not fix."""


def unreachable_message(api: anthropic.Anthropic, err: anthropic.APIConnectionError) -> str:
    """Which URL could not be reached and why, without its credentials: the SDK's own
    text is only "Connection error.", which leaves an operator guessing where it went."""
    url = api.base_url.copy_with(userinfo=b"", query=None)
    reason = str(err.__cause__ or err.message).strip() or type(err).__name__
    return f"cannot reach the Anthropic API at {str(url).rstrip('/')} ({reason})"


@contextlib.contextmanager
def reaching(api: anthropic.Anthropic) -> Iterator[None]:
    """Calls through `api` whose connection failures become one clear BatchApiError.

    Safe to run again: a create that may have reached the API left its intent row, and
    the next run matches it upstream before anything is sent again.
    """
    try:
        yield
    except anthropic.APIConnectionError as err:
        raise BatchApiError(
            f"{unreachable_message(api, err)}. Check ANTHROPIC_BASE_URL and the network, "
            "then run the same command again; nothing is sent twice"
        ) from None
