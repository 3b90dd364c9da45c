"""One error family, so the CLI and Dagster can show an analyst a message, not a traceback."""

from __future__ import annotations

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
