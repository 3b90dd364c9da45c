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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchpipe import budget, estimates, plan, warehouse
from batchpipe.loader import PipelineFile

if TYPE_CHECKING:
    import anthropic


@dataclass(frozen=True)
class Forecast:
    requests: int  # one per source row of the date
    to_send: int
    batches: int
    input_tokens: int
    input_basis: str
    output_tokens: int  # expected
    output_basis: str
    cached_tokens: int  # of each request, in a prefix marked for caching
    cost: estimates.Range
    budget: list[str]  # one line per limit that applies
    notes: tuple[str, ...] = ()  # file:line:col notes that are no error (NULL dates)

    def lines(self) -> list[str]:
        cost = self.cost
        caching = (
            f", with prompt caching ({self.cached_tokens:,} cached tokens a request)"
            if self.cached_tokens
            else ""
        )
        return [
            f"rows:          {self.requests}",
            f"requests:      {self.requests}, of which {self.to_send} to send "
            f"({self.requests - self.to_send} reused) in {self.batches} batch(es)",
            f"input tokens:  {self.input_tokens:,} ({self.input_basis})",
            f"output tokens: {self.output_tokens:,} expected ({self.output_basis})",
            f"cost:          ${cost.expected_usd:.4f} expected at batch prices, "
            f"${cost.low_usd:.4f} to ${cost.high_usd:.4f}{caching}; "
            f"the standard API would cost ${cost.standard_usd:.4f}",
            *self.budget,
            "nothing was sent and nothing was written",
        ]


def forecast(pf: PipelineFile, date: dt.date, api: anthropic.Anthropic | None) -> Forecast:
    with warehouse.connect(read_only=True) as con:
        warehouse.shadow_missing_state_tables(con)
        resolved = plan.resolve(pf, con)
        plan.register_templates(con, resolved)
        undated = plan.undated_rows_note(con, resolved, date)
        plan.bind_date(con, date, pf.pipeline.partitions.timezone)
        # What a run would refuse, the plan refuses too, with the same message.
        plan.check_keys(con, resolved, date)
        with plan.rendering(resolved):
            con.execute(
                f"""
                CREATE TEMP TABLE plan_requests AS
                SELECT ?::VARCHAR AS pipeline, ?::DATE AS partition_date, custom_id,
                       md5(CAST(params AS VARCHAR)) AS request_hash, params,
                       length(CAST(params AS VARCHAR)) AS input_chars, key_values
                FROM (
                    SELECT {resolved.custom_id_sql()} AS custom_id,
                           {resolved.params_sql()} AS params,
                           {resolved.key_values_sql()} AS key_values
                    FROM ({resolved.partition_rows_sql()}) AS s
                )
                """,
                [pf.pipeline.name, date],
            )
        plan.check_context(con, resolved, "plan_requests", date)
        pending_sql = plan.PENDING_SQL.replace(
            "FROM batchpipe_requests AS r", "FROM plan_requests AS r"
        )
        con.execute(
            f"CREATE TEMP TABLE plan_pending AS {pending_sql}", plan.pending_params(pf, date)
        )
        (requests,) = con.execute("SELECT count(*) FROM plan_requests").fetchone()
        to_send, chars = con.execute(
            "SELECT count(*), coalesce(sum(input_chars), 0) FROM plan_pending"
        ).fetchone()
        sample = [
            (json.loads(p), chars)
            for p, chars in con.execute(
                estimates.sample_sql(
                    "SELECT r.params, r.input_chars FROM plan_pending AS p "
                    "JOIN plan_requests AS r USING (custom_id, request_hash)"
                )
            ).fetchall()
        ]
        request = pf.pipeline.request
        inp, out, priced = estimates.for_requests(
            con, pf.pipeline.name, request, api, sample, to_send
        )
        batches = math.ceil(to_send / request.max_batch_requests) if to_send else 0
        cost = priced(to_send, chars, batches)
        today = dt.datetime.now(dt.UTC).date()
        budget_lines = [
            f"budget:        {limit.describe(today)}: "
            f"${limit.committed(con, pf.pipeline.name, date, today):,.4f} committed so far"
            for limit in budget.limits(pf)
        ]
    return Forecast(
        requests=requests,
        to_send=to_send,
        batches=batches,
        input_tokens=cost.input_tokens,
        input_basis=inp.basis,
        output_tokens=cost.output_tokens,
        output_basis=out.basis,
        cached_tokens=inp.cached,
        cost=cost,
        budget=budget_lines,
        notes=(undated,) if undated else (),
    )
