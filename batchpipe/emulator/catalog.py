"""The emulator's own model table: published prices and the limits that shape replies.

The emulator stands alone (it imports nothing from the rest of batchpipe), so it keeps
its own copy of the facts, typed here from the same pages batchpipe's prices.yaml was
read from: the pricing page, the model overview pages and the SDK
(/work/shared/research/anthropic_batches_api.md §5, §7.3, §7.4). A test
(tests/test_emulator_prices.py) holds this table and prices.yaml to the same numbers, so
a price change is made in both places or the test fails.

Prices are standard (synchronous) USD per million tokens; a batch pays BATCH_DISCOUNT of
them on every token category, cache writes and reads included (research §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

# "All usage is charged at 50% of the standard API prices" (batch guide, research §7.3).
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    """USD per million tokens at the standard price, for each billed token category."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float


@dataclass(frozen=True)
class Tier:
    """Prices that replace the base ones for a whole request, output included, once its
    prompt (input plus cache reads and writes) is above `above_prompt_tokens`."""

    above_prompt_tokens: int
    price: Price


@dataclass(frozen=True)
class Entry:
    """One served model: its prices and the limits the responder enforces."""

    price: Price
    tiers: tuple[Tier, ...] = ()
    max_output: int = 128_000
    output_300k: bool = False  # 300k max_tokens in batches with the beta (research §5)
    always_thinks: bool = False  # thinking blocks on every reply; forced tools rejected
    adaptive_only: bool = False  # thinking {type: enabled, budget_tokens} rejected
    aliases: tuple[str, ...] = ()  # dated snapshot ids that bill as this model
    # tokens in + out; a 1M window also takes 600 images or PDF pages a request, not 100
    context_window: int = 1_000_000


def _p(input: float, write_5m: float, write_1h: float, read: float, output: float) -> Price:
    return Price(input, write_5m, write_1h, read, output)


# Opus 4.5-4.8 and Opus 5 share one row of the pricing page; so do the Sonnet 4.x models.
_OPUS = _p(5.00, 6.25, 10.00, 0.50, 25.00)
_SONNET_4 = _p(3.00, 3.75, 6.00, 0.30, 15.00)
_FABLE_5_1 = _p(10.00, 12.50, 20.00, 0.25, 50.00)
_FABLE_5 = _p(10.00, 12.50, 20.00, 1.00, 50.00)
_FABLE_5_2 = _p(8.00, 10.00, 16.00, 0.20, 40.00)  # partly third-party (research §7.4)

_THINKING_ON = {"always_thinks": True, "adaptive_only": True}

MODELS: dict[str, Entry] = {
    "claude-fable-5-2": Entry(_FABLE_5_2, **_THINKING_ON),
    "claude-mythos-5-2": Entry(_FABLE_5_2, **_THINKING_ON),  # priced as its Fable
    "claude-haiku-5-5": Entry(
        _p(0.10, 0.125, 0.20, 0.01, 0.50),
        # a prompt over 100k tokens bills the whole request at these rates
        tiers=(Tier(100_000, _p(0.50, 0.625, 1.00, 0.05, 2.50)),),
        output_300k=True,
        adaptive_only=True,
    ),
    "claude-sonnet-5-5": Entry(
        _p(2.00, 2.50, 4.00, 0.10, 10.00),  # cache read cut from $0.20 on 2026-10-07
        output_300k=True,
        **_THINKING_ON,
    ),
    "claude-opus-5-5": Entry(_p(4.00, 5.00, 8.00, 0.20, 20.00), output_300k=True, **_THINKING_ON),
    "claude-fable-5-1": Entry(_FABLE_5_1, **_THINKING_ON),
    "claude-mythos-5-1": Entry(_FABLE_5_1, **_THINKING_ON),
    "claude-sonnet-5": Entry(
        _p(2.00, 2.50, 4.00, 0.20, 10.00), output_300k=True, adaptive_only=True
    ),
    "claude-fable-5": Entry(_FABLE_5, **_THINKING_ON),
    "claude-mythos-5": Entry(_FABLE_5, **_THINKING_ON),
    "claude-opus-5": Entry(_OPUS, output_300k=True, adaptive_only=True),
    "claude-opus-4-8": Entry(_OPUS, output_300k=True, adaptive_only=True),
    "claude-opus-4-7": Entry(_OPUS, output_300k=True, adaptive_only=True),
    "claude-opus-4-6": Entry(_OPUS, output_300k=True),
    "claude-sonnet-4-6": Entry(_SONNET_4, output_300k=True),
    "claude-haiku-4-5": Entry(
        _p(1.00, 1.25, 2.00, 0.10, 5.00),
        max_output=64_000,
        aliases=("claude-haiku-4-5-20251001",),
        context_window=200_000,
    ),
    "claude-opus-4-5": Entry(
        _OPUS, max_output=64_000, aliases=("claude-opus-4-5-20251101",), context_window=200_000
    ),
    "claude-sonnet-4-5": Entry(
        _SONNET_4,
        max_output=64_000,
        aliases=("claude-sonnet-4-5-20250929",),
        context_window=200_000,
    ),
}

# Named by the SDK but no longer served by the API: the emulator still answers for it,
# with its default limits, and its ledger counts such requests without charging them.
RETIRED = frozenset({"claude-mythos-preview"})

ALIASES: dict[str, str] = {alias: mid for mid, entry in MODELS.items() for alias in entry.aliases}


def find(model_id: str) -> Entry | None:
    """The priced model an id or dated alias names; None for a retired or unknown one."""
    return MODELS.get(ALIASES.get(model_id, model_id))


def price_for(model_id: str, prompt_tokens: int) -> Price | None:
    """The price every token of a request with this many prompt tokens pays (the highest
    tier whose bound the prompt is above, else the base price); None when unpriced."""
    entry = find(model_id)
    if entry is None:
        return None
    chosen = entry.price
    for tier in entry.tiers:
        if prompt_tokens > tier.above_prompt_tokens:
            chosen = tier.price
    return chosen
