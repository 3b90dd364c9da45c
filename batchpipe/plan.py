"""`batchpipe plan`: what a partition would send and cost, without sending or writing.

It builds the partition's requests exactly as a run would, but into a temporary
table of a read-only connection, applies the same reuse rules, and prices what is
left with `batchpipe.estimates`, the estimator a run reserves its budget with: input
counted by the API's count_tokens on a sample when an API is reachable, else
approximated from characters; output learned from the pipeline's history, else bounded
by max_tokens. The plan says which, and where the budgets stand.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchpipe import budget, canary, estimates, media_build, media_send, pricing, requests, state
from batchpipe.loader import PipelineFile
from batchpipe.pipeline_sql import bind_date, register_templates
from batchpipe.resolve import resolve, undated_rows_note

if TYPE_CHECKING:
    import anthropic


@dataclass(frozen=True)
class Forecast:
    requests: int  # one per source row of the date
    estimate: estimates.Estimate  # of the requests it would send
    budget: list[str]  # one line per limit that applies
    notes: tuple[str, ...] = ()  # file:line:col notes that are no error (NULL dates)
    canary: str = ""  # whether a canary batch goes first, and why
    media: str = ""  # the media's share of the input, when the pipeline has media blocks

    @property
    def to_send(self) -> int:
        return self.estimate.requests

    def lines(self) -> list[str]:
        estimate, cost = self.estimate, self.estimate.whole
        caching = (
            f", with prompt caching ({estimate.input.cached:,} cached tokens a request)"
            if estimate.input.cached
            else ""
        )
        return [
            f"rows:          {self.requests}",
            f"requests:      {self.requests}, of which {self.to_send} to send "
            f"({self.requests - self.to_send} reused) in {estimate.batches} batch(es)",
            f"input tokens:  {cost.input_tokens:,} ({estimate.input.basis})",
            *([f"media:         {self.media}"] if self.media else []),
            f"output tokens: {cost.output_tokens:,} expected ({estimate.output.basis})",
            f"cost:          ${cost.expected_usd:.4f} expected at batch prices, "
            f"${cost.low_usd:.4f} to ${cost.high_usd:.4f}{caching}; "
            f"the standard API would cost ${cost.standard_usd:.4f}",
            *self.budget,
            *([f"canary:        {self.canary}"] if self.canary else []),
            "nothing was sent and nothing was written",
        ]


def forecast(pf: PipelineFile, date: dt.date, api: anthropic.Anthropic | None) -> Forecast:
    with state.connect(read_only=True) as con:
        resolved = resolve(pf, con)
        register_templates(con, resolved)
        undated = undated_rows_note(con, resolved, date)
        bind_date(con, date, pf.pipeline.partitions.timezone)
        # What a run would refuse, the plan refuses too, with the same message.
        requests.check_keys(con, resolved, date)
        with requests.rendering(resolved):
            staged = media_build.stage(con, resolved, date, requests.fetcher(resolved))
            con.execute(
                "CREATE TEMP TABLE plan_requests AS "
                + state.request_rows_sql(requests.rows_sql(resolved)),
                [pf.pipeline.name, date],
            )
        requests.check_context(con, resolved, "plan_requests", date)
        params = requests.pending_params(pf, date)
        con.execute(
            f"CREATE TEMP TABLE plan_pending AS {state.pending_sql('plan_requests')}", params
        )
        (rows,) = con.execute("SELECT count(*) FROM plan_requests").fetchone()
        to_send, chars = con.execute(
            "SELECT count(*), coalesce(sum(input_chars), 0) FROM plan_pending"
        ).fetchone()
        media_chars, media_tokens = con.execute(
            "SELECT coalesce(sum(r.input_chars), 0), coalesce(sum(r.media_tokens), 0) "
            "FROM plan_pending AS p JOIN plan_requests AS r USING (custom_id, request_hash)"
        ).fetchone()
        sample = [
            (json.loads(media_send.count_params(con, p, media_build.BYTES)), c)
            for p, c in con.execute(
                estimates.sample_sql(
                    "SELECT r.params, r.input_chars FROM plan_pending AS p "
                    "JOIN plan_requests AS r USING (custom_id, request_hash)"
                )
            ).fetchall()
        ]
        estimate = estimates.for_pending(
            con, pf.pipeline.name, pf.pipeline.request, api, sample, to_send, chars
        )
        media_note = ""
        if staged is not None:
            share = media_tokens * pricing.CHARS_PER_TOKEN / media_chars if media_chars else 0.0
            media_note = (
                f"{share:.0%} of the input tokens are media ({media_tokens:,} estimated "
                f"tokens to send, from {staged.describe()})"
            )
        media_build.drop(con)
        first = canary.describe(canary.decide(con, pf, date, to_send), pf)
        today = dt.datetime.now(dt.UTC).date()
        budget_lines = [
            f"budget:        {limit.describe(today)}: "
            f"${limit.committed(con, pf.pipeline.name, date, today):,.4f} committed so far"
            for limit in budget.limits(pf)
        ]
    return Forecast(
        requests=rows,
        estimate=estimate,
        budget=budget_lines,
        notes=(undated,) if undated else (),
        canary=first,
        media=media_note,
    )
