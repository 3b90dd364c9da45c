"""Where batchpipe's errors meet Dagster: asset bodies and the sensor run inside `failing()`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from batchpipe.errors import BatchpipeError, scrubbed


@contextlib.contextmanager
def failing() -> Iterator[None]:
    """What `errors.scrubbed()` does (no API key leaves, in a message nor a chained cause),
    and a BatchpipeError leaves as a `dg.Failure` whose description is its message: the
    UI, the run's failure and `batchpipe run` show that message, not a stack trace."""
    try:
        with scrubbed():
            yield
    except BatchpipeError as err:
        raise dg.Failure(description=err.message) from None
