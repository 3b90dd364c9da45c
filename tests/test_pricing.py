"""The model table: every SDK model priced, tiers, caps, refusals, and cost arithmetic."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from anthropic.types.model import Model

from batchpipe import estimates, models, pricing

BETA = "output-300k-2026-03-24"


def sdk_model_ids() -> list[str]:
    """The ids in the installed SDK's Model literal (research §7.4)."""
    (literal, _str) = typing.get_args(Model)
    return list(typing.get_args(literal))


def test_every_model_the_sdk_names_is_in_the_table() -> None:
    table = pricing.price_list()
    for model_id in sdk_model_ids():
        if model_id in table.retired:
            continue
        info = models.model(model_id)
        assert info.source.startswith("https://"), model_id
        assert info.prices.input > 0 and info.max_output > 0, model_id


def test_the_5_and_4_lines_are_served() -> None:
    for model_id in (
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
        "claude-fable-5-2",
        "claude-mythos-5-2",
        "claude-opus-4-7",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
    ):
        assert models.model(model_id).id == model_id


def test_dated_ids_resolve_to_their_alias() -> None:
    assert models.model("claude-haiku-4-5-20251001").id == "claude-haiku-4-5"
    assert pricing.price("claude-opus-4-5-20251101") == pricing.price("claude-opus-4-5")
    assert models.model("claude-sonnet-4-5-20250929").retires is not None


def test_batch_is_half_the_standard_price() -> None:
    assert pricing.price_list().batch_discount == 0.5
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    for model_id in ("claude-opus-5-5", "claude-sonnet-4-6", "claude-fable-5-1"):
        standard = pricing.cost_usd(model_id, usage, batch=False)
        assert pricing.cost_usd(model_id, usage, batch=True) == pytest.approx(standard / 2)


def test_haiku_5_5_bills_the_whole_request_at_the_long_prompt_tier_above_100k() -> None:
    assert pricing.price_for("claude-haiku-5-5", 100_000).input == 0.10
    above = pricing.price_for("claude-haiku-5-5", 100_001)
    assert (above.input, above.output, above.cache_read) == (0.50, 2.50, 0.05)
    assert pricing.price("claude-haiku-5-5").input == 0.10  # price() is the base tier
    assert pricing.price_for("claude-opus-5-5", 900_000) == pricing.price("claude-opus-5-5")

    # Cache reads count towards the prompt: 60k input + 50k read is a long prompt.
    usage = {"input_tokens": 60_000, "cache_read_input_tokens": 50_000, "output_tokens": 1_000}
    expected = (60_000 * 0.50 + 50_000 * 0.05 + 1_000 * 2.50) / 1e6
    assert pricing.cost_usd("claude-haiku-5-5", usage, batch=False) == pytest.approx(expected)


def test_cache_prices_differ_by_model() -> None:
    assert pricing.price("claude-opus-5-5").cache_read == 0.20
    assert pricing.price("claude-opus-4-5").cache_read == 0.50
    assert pricing.price("claude-fable-5-1").cache_read == 0.25
    assert pricing.price("claude-fable-5").cache_read == 1.00
    assert pricing.price("claude-opus-5-5").cache_write_1h == 8.00


def test_cost_usd_prices_each_token_category() -> None:
    usage = {
        "input_tokens": 2_000,
        "output_tokens": 500,
        "cache_creation_input_tokens": 3_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
        "cache_read_input_tokens": 10_000,
    }
    # Opus 5.5: $4 in, $5 5m write, $8 1h write, $0.20 read, $20 out per MTok.
    standard = (2_000 * 4 + 1_000 * 5 + 2_000 * 8 + 10_000 * 0.20 + 500 * 20) / 1e6
    assert pricing.cost_usd("claude-opus-5-5", usage, batch=False) == pytest.approx(standard)
    assert pricing.cost_usd("claude-opus-5-5", usage, batch=True) == pytest.approx(standard / 2)
    assert pricing.cost_usd(
        "claude-opus-5-5", usage, batch=True, inference_geo="us"
    ) == pytest.approx(standard / 2 * 1.1)


def test_cache_writes_without_a_split_are_5_minute_writes() -> None:
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1_000_000}
    assert pricing.cost_usd("claude-sonnet-4-6", usage, batch=False) == pytest.approx(3.75)


def test_unknown_inference_geo_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown inference_geo 'mars'; known: global, us"):
        pricing.cost_usd("claude-haiku-4-5", {}, batch=True, inference_geo="mars")


def test_max_tokens_cap_with_and_without_the_beta() -> None:
    assert models.max_tokens_cap("claude-opus-5-5", ()) == 128_000
    assert models.max_tokens_cap("claude-opus-5-5", [BETA]) == 300_000
    assert models.max_tokens_cap("claude-sonnet-4-6", ["other", BETA]) == 300_000
    assert models.max_tokens_cap("claude-haiku-4-5", [BETA]) == 64_000  # no beta there
    assert models.max_tokens_cap("claude-fable-5-1", [BETA]) == 128_000


def test_check_request_names_the_cap_and_the_beta_that_raises_it() -> None:
    assert models.check_request("claude-opus-5-5", max_tokens=128_000) == []
    (problem,) = models.check_request("claude-opus-5-5", max_tokens=200_000)
    assert "over claude-opus-5-5's cap of 128,000" in problem
    assert f"the {BETA} beta raises it to 300,000" in problem
    assert models.check_request("claude-opus-5-5", max_tokens=200_000, betas=[BETA]) == []
    (problem,) = models.check_request("claude-haiku-4-5", max_tokens=100_000, betas=[BETA])
    assert problem == "max_tokens 100,000 is over claude-haiku-4-5's cap of 64,000"


def test_check_request_refuses_a_forced_tool_where_thinking_is_always_on() -> None:
    (problem,) = models.check_request("claude-opus-5-5", max_tokens=1_000, forced_tool=True)
    assert "refuses a forced tool choice" in problem and "always on" in problem
    assert models.check_request("claude-sonnet-5-5", max_tokens=1_000, forced_tool=True)
    assert models.check_request("claude-haiku-4-5", max_tokens=1_000, forced_tool=True) == []
    (problem,) = models.check_request(
        "claude-haiku-4-5",
        max_tokens=8_000,
        forced_tool=True,
        thinking={"type": "enabled", "budget_tokens": 2_048},
    )
    assert "cannot be used with thinking" in problem


def test_check_request_refuses_manual_thinking_where_the_model_does() -> None:
    enabled = {"type": "enabled", "budget_tokens": 2_048}
    for model_id in ("claude-opus-5-5", "claude-sonnet-5", "claude-opus-4-7"):
        (problem,) = models.check_request(model_id, max_tokens=8_000, thinking=enabled)
        assert "refuses thinking {type: enabled}" in problem
    (problem,) = models.check_request("claude-opus-5-5", max_tokens=8_000, thinking="disabled")
    assert "always thinks and refuses thinking {type: disabled}" in problem
    assert models.check_request("claude-opus-4-6", max_tokens=8_000, thinking=enabled) == []
    assert models.check_request("claude-opus-5-5", max_tokens=8_000, thinking="adaptive") == []
    (problem,) = models.check_request("claude-haiku-4-5", max_tokens=2_048, thinking=enabled)
    assert "budget_tokens 2,048 must be below max_tokens" in problem


def test_check_request_refuses_sampling_params_on_sonnet_5() -> None:
    (problem,) = models.check_request("claude-sonnet-5", max_tokens=1_000, sampling=True)
    assert problem == "claude-sonnet-5 refuses non-default temperature, top_p or top_k"
    assert models.check_request("claude-sonnet-4-6", max_tokens=1_000, sampling=True) == []


def test_always_thinking_models_refuse_to_stop_thinking() -> None:
    table = pricing.price_list()
    thinkers = {m.id for m in table.models.values() if m.always_thinks}
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-fable-5-1"} <= thinkers
    for model_id in thinkers:
        assert "thinking_disabled" in table.models[model_id].refuses


def test_unknown_model_says_did_you_mean_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        models.model("claude-opus-5.5")
    message = str(err.value)
    assert message.startswith("unknown model 'claude-opus-5.5'; did you mean 'claude-opus-5-5'?")
    assert "known models: claude-fable-5, " in message and "claude-sonnet-5-5" in message
    with pytest.raises(ValueError, match="unknown model 'gpt-4'"):
        pricing.price("gpt-4")
    (problem,) = models.check_request("claude-haiku-4.5", max_tokens=10)
    assert "did you mean 'claude-haiku-4-5'?" in problem


def test_a_retired_model_names_its_successor_and_has_no_price() -> None:
    with pytest.raises(ValueError, match="'claude-mythos-preview' was retired on 2026-06-30"):
        pricing.price("claude-mythos-preview")
    assert "claude-mythos-preview" in sdk_model_ids()


def test_estimate_uses_batch_prices_and_the_tier_of_the_average_prompt() -> None:
    approx = estimates.InputTokens(0.25, 0.25, 0, "about 4 characters a token")
    no_history = estimates.OutputTokens(0.0, 250.0, 1_000.0, "max_tokens")
    short = estimates.price("claude-haiku-5-5", 100, 4 * 1_000_000, approx, no_history)
    assert short.low_usd == pytest.approx(1_000_000 * 0.10 * 0.5 / 1e6)
    long = estimates.price("claude-haiku-5-5", 100, 4 * 20_000_000, approx, no_history)
    assert long.low_usd == pytest.approx(20_000_000 * 0.50 * 0.5 / 1e6)
    assert long.high_usd == pytest.approx(long.low_usd + 100 * 1_000 * 2.50 * 0.5 / 1e6)
    assert long.expected_usd == pytest.approx(long.low_usd + 100 * 250 * 2.50 * 0.5 / 1e6)
    assert long.standard_usd == pytest.approx(long.expected_usd * 2)


def test_a_cached_prefix_is_written_once_a_batch_expected_and_by_every_request_at_most() -> None:
    """Sonnet 5.5: 1,000 of each request's 1,100 input tokens are a 1-hour cached prefix."""
    p = pricing.price_for("claude-sonnet-5-5", 1_100)
    counted = estimates.InputTokens(1.0, 1.0, 1_000, "count_tokens")
    no_output = estimates.OutputTokens(0.0, 0.0, 0.0, "none")
    cold = estimates.price("claude-sonnet-5-5", 10, 11_000, counted, no_output, cache_ttl="1h")
    writes, reads, plain = 1_000 * p.cache_write_1h, 9_000 * p.cache_read, 1_000 * p.input
    assert cold.expected_usd == pytest.approx((writes + reads + plain) * 0.5 / 1e6)
    assert cold.high_usd == pytest.approx((10 * 1_000 * p.cache_write_1h + plain) * 0.5 / 1e6)
    warm = estimates.price(
        "claude-sonnet-5-5", 10, 11_000, counted, no_output, cache_ttl="1h", cache_warm=True
    )
    assert warm.expected_usd == pytest.approx((10_000 * p.cache_read + plain) * 0.5 / 1e6)


@pytest.mark.parametrize(
    ("model_id", "usage"),
    [
        ("claude-haiku-5-5", {"input_tokens": 1000, "output_tokens": 200}),
        ("claude-haiku-5-5", {"input_tokens": 150_000, "output_tokens": 200}),  # long tier
        (
            "claude-sonnet-5-5",
            {
                "input_tokens": 100,
                "output_tokens": 50,
                "cache_creation_input_tokens": 3000,
                "cache_read_input_tokens": 2000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
            },
        ),
    ],
)
def test_the_sql_that_costs_result_lines_agrees_with_cost_usd(
    model_id: str, usage: dict, tmp_path: Path
) -> None:
    """Results are costed in SQL, a million lines at once; it must bill as cost_usd does.
    The usage is read the way the results loader reads it: read_json with USAGE_TYPE."""
    import json

    import duckdb

    lines = tmp_path / "usage.jsonl"
    lines.write_text(json.dumps({"usage": usage}) + "\n")
    for batch in (True, False):
        (got,) = duckdb.execute(
            f"SELECT {pricing.cost_sql(model_id, 'j.usage', batch=batch)} FROM read_json(?, "
            f"format = 'newline_delimited', columns = {{usage: '{pricing.USAGE_TYPE}'}}) AS j",
            [str(lines)],
        ).fetchone()
        assert got == pytest.approx(pricing.cost_usd(model_id, usage, batch=batch))
