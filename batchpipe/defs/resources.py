"""The one resource the assets share: how to reach the Batches API and how to wait."""

from __future__ import annotations

import anthropic
import dagster as dg

from batchpipe import api


class BatchpipeResource(dg.ConfigurableResource):
    """Settings only; the API key is read from the environment when a client is made,
    so it never appears in Dagster's config, run records or UI."""

    poll_seconds: float | None = None  # None: 1 s against the emulator, 30 s against Anthropic
    wait: bool | None = None  # None: the file's request.wait; `batchpipe run` sets True
    # The DuckDB file (or DuckLake ATTACH) the steps open; None: BATCHPIPE_DB at run time.
    database: str | None = None

    def client(self) -> anthropic.Anthropic:
        return api.client()

    def poll_interval(self) -> float:
        if self.poll_seconds is not None:
            return self.poll_seconds
        return 1.0 if api.using_emulator() else 30.0

    def waits(self, file_wait: bool) -> bool:
        return file_wait if self.wait is None else self.wait
