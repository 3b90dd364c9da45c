"""What requests will cost before they are sent: a range, and what each end rests on.

One estimator serves `batchpipe plan`, the run's per-batch budget reservation and the
estimate recorded next to the bill in `batchpipe_costs`, so the three never disagree.

- Input tokens are counted by the API's count_tokens on a sample of the requests (free,
  and exact for what it counts) and scaled by characters to the rest; with no API to
  ask, characters are divided by `pricing.CHARS_PER_TOKEN`.
- Output tokens come from the pipeline's own history of succeeded replies: the median
  is expected, the 95th percentile is the high end. Before there is any history the
  high end is max_tokens and a quarter of it is expected.
- The high end is what a budget reserves, so it leans up: the sample's densest
  tokens-per-character, every cached prefix paid as a cache write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from batchpipe import pricing, state
from batchpipe.config import Request

if TYPE_CHECKING:  # the SDK is imported only to count with it: planning stays light
    import anthropic

COUNT_CALLS_AT_ONCE = 5
SAMPLE = 20  # requests counted with count_tokens; the rest are scaled from their length
HISTORY = 10_000  # the latest succeeded replies a pipeline's output estimate learns from
LOW, HIGH = 0.05, 0.95  # percentiles of that history for the ends of the range
MIN_CACHED = 1024  # a shorter prefix is not cached
# Fields of a request that count_tokens does not take.
NOT_COUNTED = ("max_tokens", "stop_sequences", "metadata", "inference_geo", "stream")


@dataclass(frozen=True)
class OutputTokens:
    """Tokens of one reply: the range, and where it comes from."""

    low: float
    expected: float
    high: float
    basis: str


def output_tokens(con: duckdb.DuckDBPyConnection, pipeline: str, max_tokens: int) -> OutputTokens:
    """Learned from the pipeline's latest succeeded replies; max_tokens bounds the high end
    (a reply never passes it), and it is the only bound until there is history."""
    replies, low, median, high = state.output_token_history(con, pipeline, LOW, HIGH, HISTORY)
    if not replies:
        return OutputTokens(
            0.0,
            max_tokens / 4,
            float(max_tokens),
            f"no history yet: at most max_tokens ({max_tokens}) a reply, a quarter of it expected",
        )
    return OutputTokens(
        float(low),
        float(median),
        float(min(high, max_tokens)),
        f"the pipeline's {replies:,} latest replies: median {median:,.0f}, "
        f"95th percentile {high:,.0f} tokens",
    )


@dataclass(frozen=True)
class InputTokens:
    """Input tokens per character of a request's params, and the cached prefix."""

    per_char: float  # the sample's total: what is expected
    high_per_char: float  # the sample's densest request: what a reservation assumes
    cached: int  # tokens of each request's prefix marked for caching
    basis: str


def input_tokens(
    api: anthropic.Anthropic | None, sample: Sequence[tuple[dict, int]], requests: int
) -> InputTokens:
    """`sample`: (params, the request's stored input_chars) of some of the `requests`."""
    approx = 1 / pricing.CHARS_PER_TOKEN
    if not requests:
        return InputTokens(approx, approx, 0, "nothing to send")
    fallback = f"about {pricing.CHARS_PER_TOKEN} characters a token"
    if api is None or not sample:
        return InputTokens(approx, approx, 0, f"{fallback}: no API to count with")
    import anthropic

    from batchpipe.api import unreachable_message

    try:
        # Free calls, but each a round trip to the API: a few at once, not twenty in a row.
        with ThreadPoolExecutor(max_workers=COUNT_CALLS_AT_ONCE) as pool:
            tokens = list(pool.map(lambda item: _count(api, item[0]), sample))
        counted = [(t, chars) for t, (_, chars) in zip(tokens, sample, strict=True)]
        cached = _cached_prefix_tokens(api, sample[0][0])
    except anthropic.APIError as err:
        why = (
            unreachable_message(api, err) if isinstance(err, anthropic.APIConnectionError) else err
        )
        return InputTokens(approx, approx, 0, f"{fallback} (count_tokens failed: {why})")
    chars = sum(c for _, c in counted) or 1
    per_char = sum(t for t, _ in counted) / chars
    high = max(t / max(c, 1) for t, c in counted)
    if len(sample) >= requests:
        basis = f"count_tokens on every request ({requests:,})"
    else:
        basis = f"count_tokens on a sample of {len(sample)}, scaled to {requests:,} requests"
    return InputTokens(per_char, high, cached, basis)


def sample_sql(requests_sql: str) -> str:
    """A random sample of a relation of requests with `params` and `input_chars`."""
    return (
        f"SELECT CAST(params AS VARCHAR), input_chars FROM ({requests_sql}) "
        f"USING SAMPLE {SAMPLE} ROWS"
    )


@dataclass(frozen=True)
class Range:
    """USD at batch prices, low to high, and the standard API's price of the expected."""

    low_usd: float
    expected_usd: float
    high_usd: float
    standard_usd: float
    input_tokens: int
    output_tokens: int  # expected


def price(
    model: str,
    requests: int,
    chars: int,
    inp: InputTokens,
    out: OutputTokens,
    *,
    batches: int = 1,
    cache_ttl: str = "5m",
    cache_warm: bool = False,
    inference_geo: str | None = None,
) -> Range:
    """The range for `requests` requests of `chars` characters of params in all.

    A cached prefix is written once per batch and read by the rest at the expected
    figure (caching in batches is best effort), or only read while it is `cache_warm`;
    at the high end every request writes it. A tiered model is priced at the tier of
    the average prompt.
    """
    if requests <= 0:
        return Range(0.0, 0.0, 0.0, 0.0, 0, 0)
    tokens, tokens_high = inp.per_char * chars, inp.high_per_char * chars
    p = pricing.price_for(model, round(tokens_high / requests))
    write = p.cache_write_1h if cache_ttl == "1h" else p.cache_write_5m
    cached = min(inp.cached * requests, tokens)
    writes = min(batches, requests) if cached and not cache_warm else 0
    reads = requests - writes if cached else 0

    def cost(
        input_tokens: float, output_tokens: float, cache_writes: int, cache_reads: int
    ) -> float:
        prefix = cached / requests
        plain = input_tokens - prefix * (cache_writes + cache_reads)
        return (
            plain * p.input
            + prefix * (cache_writes * write + cache_reads * p.cache_read)
            + output_tokens * p.output
        ) / 1e6

    factor = pricing.price_list().batch_discount * pricing.geo_factor(inference_geo)
    expected = cost(tokens, out.expected * requests, writes, reads)
    return Range(
        low_usd=cost(tokens, out.low * requests, writes, reads) * factor,
        expected_usd=expected * factor,
        high_usd=cost(tokens_high, out.high * requests, requests if cached else 0, 0) * factor,
        standard_usd=expected * pricing.geo_factor(inference_geo),
        input_tokens=round(tokens),
        output_tokens=round(out.expected * requests),
    )


def cache_ttl(request: Request) -> str:
    """The longest cache lifetime the request's system blocks ask for."""
    if isinstance(request.system, list) and any(b.cache == "1h" for b in request.system):
        return "1h"
    return "5m"


def cache_is_warm(con: duckdb.DuckDBPyConnection, pipeline: str, ttl: str) -> bool:
    """Whether the pipeline's replies used its cached prefix within the cache's lifetime:
    then the next batch reads it instead of writing it first."""
    return state.used_cache_within(con, pipeline, ttl)


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
    probe = {
        "model": params["model"],
        "system": system[: marked[-1] + 1],
        "messages": [{"role": "user", "content": "."}],
    }
    bare = {"model": params["model"], "messages": [{"role": "user", "content": "."}]}
    tokens = _count(api, probe) - _count(api, bare)
    return tokens if tokens >= MIN_CACHED else 0  # below the minimum, nothing is cached


@dataclass(frozen=True)
class Estimate:
    """What a partition's pending requests will cost, and what that rests on, as one typed
    value (`for_pending`): a step that prices requests makes it once and reads its fields,
    for the log, the asset metadata, `batchpipe plan` and each batch's reservation. The
    requests step's is from characters; the send step counts tokens on a sample."""

    requests: int
    batches: int
    input: InputTokens
    output: OutputTokens
    whole: Range  # all of the requests, in `batches` batches
    per_batch: Callable[[int, int], Range]  # (requests, characters) of one batch -> USD


def for_pending(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    request: Request,
    api: anthropic.Anthropic | None,
    sample: Sequence[tuple[dict, int]],
    requests: int,
    chars: int,
) -> Estimate:
    """The estimate of `requests` pending requests of `chars` characters in all, of which
    `sample` holds (params, characters) of a few; with no `api`, characters stand in for
    counted tokens. Its `per_batch` prices one batch of them."""
    inp = input_tokens(api, sample, requests)
    out = output_tokens(con, pipeline, request.max_tokens)
    ttl = cache_ttl(request)
    warm = bool(inp.cached) and cache_is_warm(con, pipeline, ttl)

    def priced(count: int, chars: int, batches: int = 1) -> Range:
        return price(
            request.model, count, chars, inp, out,
            batches=batches, cache_ttl=ttl, cache_warm=warm, inference_geo=request.inference_geo,
        )  # fmt: skip

    batches = -(-requests // request.max_batch_requests)
    return Estimate(requests, batches, inp, out, priced(requests, chars, batches), priced)
