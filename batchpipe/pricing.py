"""Model prices, estimates before spending, and the cost of a usage record.

Prices live in prices.yaml beside this module so a price change is a data edit.
Costs of many rows are computed in SQL (`cost_sql`), never row by row in Python.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel

CHARS_PER_TOKEN = 4  # the usual approximation for English text, used only for estimates


class Price(BaseModel):
    """USD per million tokens at the standard (synchronous) price."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float


class PriceList(BaseModel):
    batch_discount: float
    models: dict[str, Price]
    aliases: dict[str, str] = {}


@cache
def price_list() -> PriceList:
    text = resources.files("batchpipe").joinpath("prices.yaml").read_text(encoding="utf-8")
    return PriceList.model_validate(yaml.safe_load(text))


def price(model: str) -> Price:
    """The price of a model id, or a ValueError that names the known ones."""
    prices = price_list()
    resolved = prices.aliases.get(model, model)
    if resolved not in prices.models:
        known = sorted(prices.models)
        close = difflib.get_close_matches(model, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown model {model!r}; {hint}known models: {', '.join(known)}")
    return prices.models[resolved]


def cost_sql(model: str, input_col: str, output_col: str, *, batch: bool = True) -> str:
    """A SQL expression giving the USD cost of a row's tokens at this model's price."""
    p = price(model)
    factor = price_list().batch_discount if batch else 1.0
    return f"(({input_col}) * {p.input * factor} + ({output_col}) * {p.output * factor}) / 1e6"


def estimate(model: str, input_chars: int, requests: int, max_tokens: int) -> dict[str, float]:
    """A cost range before anything is sent.

    Input is approximated from characters; output is bounded by max_tokens (the
    high end) and taken as a quarter of it for the expected figure until a
    pipeline has history to learn from.
    """
    p = price(model)
    factor = price_list().batch_discount
    input_tokens = input_chars / CHARS_PER_TOKEN
    low = input_tokens * p.input * factor / 1e6
    high = low + requests * max_tokens * p.output * factor / 1e6
    expected = low + requests * max_tokens / 4 * p.output * factor / 1e6
    return {"low_usd": low, "expected_usd": expected, "high_usd": high}
