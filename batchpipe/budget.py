"""Spend limits: a batch is sent only if its cost, reserved at the high estimate, fits.

Three limits can apply to a batch:
- `budget.max_usd_per_run` in the pipeline file: one partition, every batch it ever sent;
- `budget.max_usd_per_day` in the pipeline file: that pipeline's batches whose intent was
  recorded on one calendar day (UTC);
- `BATCHPIPE_MAX_USD_PER_DAY`: every pipeline's batches of one UTC day in this warehouse.

A batch counts at its actual cost once its results are loaded, at its reservation before.
The check and the batch's intent are written in one transaction by the warehouse's single
writer, and concurrent runs take turns on the DuckDB file, so runs starting together never
reserve past a limit between them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass

import duckdb

from batchpipe import state
from batchpipe.errors import BatchpipeError
from batchpipe.loader import PipelineFile

ENV = "BATCHPIPE_MAX_USD_PER_DAY"
STATUS = state.SKIPPED_STATUS


def usd(amount: float) -> str:
    """$5.00, $0.001: cents, or as many places as a small limit was written with."""
    text = f"{amount:,.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


class BudgetExceeded(BatchpipeError):
    """A batch was not sent because its reservation would pass a spend limit."""


@dataclass(frozen=True)
class Limit:
    name: str  # as the user wrote it: max_usd_per_run, max_usd_per_day or the variable
    usd: float
    where: str  # the file:line:col that sets it, or the environment variable
    scope: state.Scope

    def committed(
        self, con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date, today: dt.date
    ) -> float:
        """What the limit's batches have cost or reserved so far (failed intents cost 0)."""
        return state.committed_usd(con, self.scope, pipeline, date, today)

    def describe(self, today: dt.date) -> str:
        scope = {
            "run": "for one partition",
            "pipeline_day": f"for this pipeline on {today} (UTC)",
            "day": f"for every pipeline on {today} (UTC)",
        }[self.scope]
        return f"{self.name} {usd(self.usd)} {scope} ({self.where})"


def limits(pf: PipelineFile) -> list[Limit]:
    """The limits that apply to the pipeline's batches, the narrowest first."""
    found = []
    budget = pf.pipeline.budget
    if budget is not None:
        if budget.max_usd_per_run is not None:
            where = pf.where("budget", "max_usd_per_run")
            found.append(Limit("max_usd_per_run", budget.max_usd_per_run, where, "run"))
        if budget.max_usd_per_day is not None:
            where = pf.where("budget", "max_usd_per_day")
            found.append(Limit("max_usd_per_day", budget.max_usd_per_day, where, "pipeline_day"))
    overall = global_limit()
    if overall is not None:
        found.append(overall)
    return found


def global_limit() -> Limit | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        usd = float(value.removeprefix("$"))
    except ValueError:
        usd = math.nan
    if not math.isfinite(usd) or usd < 0:
        raise BatchpipeError(f"{ENV}={value!r} is not an amount of USD such as 20 or 20.00")
    return Limit(ENV, usd, "environment", "day")


@dataclass(frozen=True)
class Refusal:
    limit: Limit
    committed_usd: float  # by the limit's batches before this one
    reserve_usd: float  # what this batch would have reserved
    today: dt.date


def check(
    con: duckdb.DuckDBPyConnection,
    found: list[Limit],
    pipeline: str,
    date: dt.date,
    reserve_usd: float,
    today: dt.date,
) -> Refusal | None:
    """The first limit a reservation of `reserve_usd` would pass, if any. Call it inside
    the transaction that records the batch's intent."""
    for limit in found:
        committed = limit.committed(con, pipeline, date, today)
        if committed + reserve_usd > limit.usd + 1e-9:
            return Refusal(limit, committed, reserve_usd, today)
    return None


def record_skipped(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    date: dt.date,
    refusal: Refusal,
    from_rn: int,
) -> int:
    """Record the staged requests from number `from_rn` on as skipped_budget, with the
    limit that stopped them; returns how many."""
    limit = refusal.limit
    return state.record_skipped(
        con, pipeline, date, limit_name=limit.name, limit_usd=limit.usd,
        limit_set_at=limit.where, from_rn=from_rn,
    )  # fmt: skip


def clear_skipped(con: duckdb.DuckDBPyConnection, pipeline: str, date: dt.date) -> None:
    """Forget the partition's refusals before it is sent again: they are checked anew."""
    state.clear_skipped(con, pipeline, date)


def refused_message(refusal: Refusal, sent: int, refused: int, refused_usd: float) -> str:
    return (
        f"budget: {refusal.limit.describe(refusal.today)} would be passed. "
        f"Already committed: ${refusal.committed_usd:,.4f}; the next batch would reserve up "
        f"to ${refusal.reserve_usd:,.4f}. {refused:,} request(s) up to ${refused_usd:,.4f} "
        f"were refused and recorded as {STATUS}; nothing of them was sent or billed"
        + (f" ({sent:,} request(s) within the limit were sent)" if sent else "")
        + ". Raise the limit and run again to send only the refused requests."
    )
