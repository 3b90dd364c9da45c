"""Model prices, estimates before spending, and the cost of a usage record.

Prices live in prices.yaml beside this module (loaded and checked by batchpipe.models) so
a price change is a data edit. Prices are per model and per prompt size: cache prices are
not a fixed share of input on every model, and Haiku 5.5 bills a long prompt's whole
request at a higher tier, so every cost goes through `price_for` with the request's prompt
size. Costs of many rows are computed in SQL (`cost_sql`), never row by row in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchpipe import models
from batchpipe.models import Catalog, Price

CHARS_PER_TOKEN = 4  # the usual approximation for English text, used only for estimates


def price_list() -> Catalog:
    """The whole table: `batch_discount`, `inference_geo` multipliers and every model."""
    return models.catalog()


def price(model_id: str) -> Price:
    """A model's base price (its lowest tier), or a ValueError that names the known ones."""
    return models.model(model_id).prices


def price_for(model_id: str, prompt_tokens: int) -> Price:
    """The price a request with this many prompt tokens pays, on every token it bills.

    Prompt tokens are input plus cache reads and writes. A tier replaces the base price
    for the whole request, output included, once the prompt is above its bound.
    """
    info = models.model(model_id)
    chosen: Price = info.prices
    for tier in info.tiers:
        if prompt_tokens > tier.above_prompt_tokens:
            chosen = tier
    return Price(**{name: getattr(chosen, name) for name in Price.model_fields})


def geo_factor(inference_geo: str | None) -> float:
    """The multiplier on every token category for where a request runs; None is default."""
    if inference_geo is None:
        return 1.0
    factors = price_list().inference_geo
    if inference_geo not in factors:
        raise ValueError(
            f"unknown inference_geo {inference_geo!r}; known: {', '.join(sorted(factors))}"
        )
    return factors[inference_geo]


def _tokens(usage: Mapping[str, Any]) -> dict[str, int]:
    """The five billed token counts of a usage record, as the Messages API reports it.

    Cache writes come as a total (`cache_creation_input_tokens`) and, when the API splits
    them, as `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`
    (nested, or flat at the top level). Without a split every write is a 5-minute one,
    the default TTL.
    """
    split = usage.get("cache_creation") or {}

    def count(key: str) -> int | None:
        value = split.get(key, usage.get(key))
        return None if value is None else int(value)

    write_1h = count("ephemeral_1h_input_tokens") or 0
    write_5m = count("ephemeral_5m_input_tokens")
    total = usage.get("cache_creation_input_tokens")
    if write_5m is None:
        write_5m = max(int(total or 0) - write_1h, 0)
    return {
        "input": int(usage.get("input_tokens") or 0),
        "cache_write_5m": write_5m,
        "cache_write_1h": write_1h,
        "cache_read": int(usage.get("cache_read_input_tokens") or 0),
        "output": int(usage.get("output_tokens") or 0),
    }


def cost_usd(
    model_id: str,
    usage: Mapping[str, Any],
    *,
    batch: bool,
    inference_geo: str | None = None,
) -> float:
    """USD for one request's usage: the tier its prompt falls in, each token category at
    its own price, then the batch discount and the inference_geo multiplier, which stack."""
    tokens = _tokens(usage)
    p = price_for(model_id, sum(count for name, count in tokens.items() if name != "output"))
    standard = sum(count * getattr(p, name) for name, count in tokens.items()) / 1e6
    factor = price_list().batch_discount if batch else 1.0
    return standard * factor * geo_factor(inference_geo)


# The usage record as DuckDB reads it from a results line (read_json with this type);
# fields the API adds later are ignored, missing ones are NULL.
USAGE_TYPE = (
    "STRUCT(input_tokens BIGINT, output_tokens BIGINT, cache_creation_input_tokens BIGINT, "
    "cache_read_input_tokens BIGINT, cache_creation STRUCT(ephemeral_1h_input_tokens BIGINT))"
)


def cost_sql(model: str, usage: str, *, batch: bool = True) -> str:
    """The SQL twin of cost_usd: USD of a usage record held as a USAGE_TYPE struct in the
    expression `usage`, so a million result lines are costed in one statement. A tiered
    model bills the whole request at the tier its prompt (input, cache writes and reads)
    falls in."""
    info = models.model(model)
    factor = price_list().batch_discount if batch else 1.0

    def tokens(field: str) -> str:
        return f"coalesce(({usage}).{field}, 0)"

    hour = tokens("cache_creation.ephemeral_1h_input_tokens")
    writes = tokens("cache_creation_input_tokens")
    prompt = f"({tokens('input_tokens')} + {writes} + {tokens('cache_read_input_tokens')})"

    def at(p: Price) -> str:
        return (
            f"({tokens('input_tokens')} * {p.input * factor} "
            # cache writes: 1-hour ones cost more than 5-minute ones
            f"+ ({writes} - {hour}) * {p.cache_write_5m * factor} "
            f"+ {hour} * {p.cache_write_1h * factor} "
            f"+ {tokens('cache_read_input_tokens')} * {p.cache_read * factor} "
            f"+ {tokens('output_tokens')} * {p.output * factor}) / 1e6"
        )

    cost = at(info.prices)
    for tier in sorted(info.tiers, key=lambda t: t.above_prompt_tokens):
        cost = f"CASE WHEN {prompt} > {tier.above_prompt_tokens} THEN {at(tier)} ELSE {cost} END"
    return cost
