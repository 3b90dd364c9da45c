"""`batchpipe plan`: what a partition would send and cost, without sending or writing.

It builds the partition's requests exactly as a run would, but into a temporary
table of a read-only connection, applies the same reuse rules, and prices what is
left. Input tokens come from the API's count_tokens on a sample when an API is
reachable (free, and exact for what it counted), else from characters; the plan
says which.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

import anthropic

from batchpipe import plan, pricing, warehouse
from batchpipe.errors import unreachable_message
from batchpipe.loader import PipelineFile

SAMPLE = 20  # requests counted with count_tokens; the rest are scaled from their length
# Fields of a request that count_tokens does not take.
NOT_COUNTED = ("max_tokens", "stop_sequences", "metadata", "inference_geo", "stream")


@dataclass(frozen=True)
class Forecast:
    requests: int  # one per source row of the date
    to_send: int
    batches: int
    input_tokens: int
    input_basis: str
    output_tokens: int  # expected
    output_tokens_max: int
    output_basis: str
    cached_tokens: int  # of each request, in a prefix marked for caching
    standard_usd: float
    batch_usd: float
    cached_batch_usd: float

    def lines(self) -> list[str]:
        caching = (
            f"with prompt caching ${self.cached_batch_usd:.4f} "
            f"({self.cached_tokens:,} cached tokens a request)"
            if self.cached_tokens
            else "no prompt caching (no block marked cache, or below the model's minimum)"
        )
        return [
            f"rows:          {self.requests}",
            f"requests:      {self.requests}, of which {self.to_send} to send "
            f"({self.requests - self.to_send} reused) in {self.batches} batch(es)",
            f"input tokens:  {self.input_tokens:,} ({self.input_basis})",
            f"output tokens: {self.output_tokens:,} expected, {self.output_tokens_max:,} at "
            f"most ({self.output_basis})",
            f"cost:          standard API ${self.standard_usd:.4f}; batch ${self.batch_usd:.4f}; "
            + caching,
            "nothing was sent and nothing was written",
        ]


def forecast(pf: PipelineFile, date: dt.date, api: anthropic.Anthropic | None) -> Forecast:
    with warehouse.connect(read_only=True) as con:
        warehouse.shadow_missing_state_tables(con)
        resolved = plan.resolve(pf, con)
        plan.register_templates(con, resolved)
        plan.bind_date(con, date)
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
            json.loads(p)
            for (p,) in con.execute(
                "SELECT r.params FROM plan_pending AS p JOIN plan_requests AS r "
                f"USING (custom_id, request_hash) USING SAMPLE {SAMPLE} ROWS"
            ).fetchall()
        ]
        history = con.execute(
            "SELECT median(output_tokens), count(*) FROM batchpipe_results "
            "WHERE pipeline = ? AND result_type = 'succeeded'",
            [pf.pipeline.name],
        ).fetchone()
    request = pf.pipeline.request
    input_tokens, basis, cached = _input_tokens(api, sample, to_send, chars)
    if history[1]:
        per_request = float(history[0])
        output_basis = f"median of the pipeline's {history[1]} earlier replies"
    else:
        per_request = request.max_tokens / 4
        output_basis = "a quarter of max_tokens, until the pipeline has history"
    output_tokens = round(per_request * to_send)
    # A tiered model (Haiku 5.5) is priced at the tier of the average prompt.
    price = pricing.price_for(request.model, input_tokens // to_send if to_send else 0)
    discount = pricing.price_list().batch_discount
    standard = (input_tokens * price.input + output_tokens * price.output) / 1e6
    batches = math.ceil(to_send / request.max_batch_requests) if to_send else 0
    cached_usd = standard * discount
    if cached and to_send > batches:
        hour = _cache_ttl(pf) == "1h"
        write = price.cache_write_1h if hour else price.cache_write_5m
        # one write per batch, reads for the rest (caching in batches is best effort)
        writes, reads = batches, to_send - batches
        saved = cached * (writes * (price.input - write) + reads * (price.input - price.cache_read))
        cached_usd = (standard * 1e6 - saved) / 1e6 * discount
    return Forecast(
        requests=requests,
        to_send=to_send,
        batches=batches,
        input_tokens=input_tokens,
        input_basis=basis,
        output_tokens=output_tokens,
        output_tokens_max=request.max_tokens * to_send,
        output_basis=output_basis,
        cached_tokens=cached,
        standard_usd=standard,
        batch_usd=standard * discount,
        cached_batch_usd=cached_usd,
    )


def _input_tokens(
    api: anthropic.Anthropic | None, sample: list[dict], to_send: int, chars: int
) -> tuple[int, str, int]:
    """Total input tokens, the basis, and the tokens of a request's cached prefix."""
    approx = round(chars / pricing.CHARS_PER_TOKEN)
    if not sample:
        return 0, "nothing to send", 0
    if api is None:
        return (
            approx,
            f"about {pricing.CHARS_PER_TOKEN} characters a token: no API to count with",
            0,
        )
    try:
        counted = [_count(api, params) for params in sample]
        cached = _cached_prefix_tokens(api, sample[0])
    except anthropic.APIError as err:
        why = (
            unreachable_message(api, err) if isinstance(err, anthropic.APIConnectionError) else err
        )
        return (
            approx,
            f"about {pricing.CHARS_PER_TOKEN} characters a token (count_tokens failed: {why})",
            0,
        )
    sample_chars = sum(len(json.dumps(p)) for p in sample)
    per_char = sum(counted) / sample_chars if sample_chars else 0
    if len(sample) >= to_send:
        return sum(counted), f"count_tokens on every request ({to_send})", cached
    basis = f"count_tokens on a sample of {len(sample)}, scaled to {to_send} requests"
    return round(per_char * chars), basis, cached


def _count(api: anthropic.Anthropic, params: dict) -> int:
    body = {k: v for k, v in params.items() if k not in NOT_COUNTED}
    return api.messages.count_tokens(**body).input_tokens


def _cached_prefix_tokens(api: anthropic.Anthropic, params: dict) -> int:
    """Tokens of the system blocks up to the last one marked for caching."""
    system = params.get("system")
    if not isinstance(system, list):
        return 0
    marked = [i for i, block in enumerate(system) if block.get("cache_control")]
    if not marked:
        return 0
    prefix = system[: marked[-1] + 1]
    probe = {
        "model": params["model"],
        "system": prefix,
        "messages": [{"role": "user", "content": "."}],
    }
    bare = {"model": params["model"], "messages": [{"role": "user", "content": "."}]}
    tokens = _count(api, probe) - _count(api, bare)
    return tokens if tokens >= 1024 else 0  # below the minimum, nothing is cached


def _cache_ttl(pf: PipelineFile) -> str:
    system = pf.pipeline.request.system
    if isinstance(system, list):
        for block in system:
            if block.cache == "1h":
                return "1h"
    return "5m"
