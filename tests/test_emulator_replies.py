"""The emulator's replies and usage: `respond` as a pure function, plus one HTTP check."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchpipe import pricing
from batchpipe.emulator.caching import PromptCache
from batchpipe.emulator.responders import MODELS, count_input_tokens, respond
from batchpipe.emulator.tokens import count_tokens, truncate_to_tokens
from batchpipe.emulator.wire import ApiError
from tests.support import start_emulator

V1 = "2023-06-01"
T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
LONG = "word " * 1100  # 1100 tokens: above the default 1024-token caching minimum
THINKERS = ("claude-opus-5-5", "claude-sonnet-5-5", "claude-fable-5-1")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "sentiment": {"enum": ["positive", "neutral", "negative"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        "recommended": {"type": "boolean"},
        "reviewed_on": {"type": "string", "format": "date"},
        "seen_at": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "nothing": {"type": "null"},
        "maybe": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "null"}]},
        "either": {"oneOf": [{"$ref": "#/$defs/author"}, {"type": "string"}]},
        "authors": {"type": "array", "items": {"$ref": "#/$defs/author"}, "minItems": 1},
    },
    "required": ["title", "sentiment", "stars", "authors", "reviewed_on"],
    "additionalProperties": False,
    "$defs": {
        "author": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 3},
                "age": {"type": "integer", "minimum": 18, "maximum": 99},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "address"],
            "additionalProperties": False,
        }
    },
}


def _ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> None:
    """A small JSON-schema validator for the keywords SCHEMA uses (no jsonschema here)."""
    if "$ref" in schema:
        check(value, _ref(root, schema["$ref"]), root, path)
        return
    if "anyOf" in schema or "oneOf" in schema:
        branches, passed = schema.get("anyOf", schema.get("oneOf")), 0
        for branch in branches:
            try:
                check(value, branch, root, path)
                passed += 1
            except AssertionError:
                pass
        assert passed >= 1 if "anyOf" in schema else passed == 1, f"{path}: no branch"
        return
    if "enum" in schema:
        assert value in schema["enum"], path
    kind = schema.get("type")
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "integer": int,
        "number": (int, float),
    }
    if kind:
        assert isinstance(value, types[kind]), f"{path}: {value!r} is not {kind}"
        assert kind in ("boolean",) or not isinstance(value, bool), path
    if isinstance(value, dict):
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), f"{path}: missing required"
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), f"{path}: extra keys {set(value) - set(props)}"
        for key, item in value.items():
            check(item, props.get(key, {}), root, f"{path}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), path
        for index, item in enumerate(value):
            check(item, schema.get("items", {}), root, f"{path}[{index}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert value >= schema.get("minimum", -math.inf), path
        assert value <= schema.get("maximum", math.inf), path
        assert value > schema.get("exclusiveMinimum", -math.inf), path
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9), path
        if schema.get("format") == "date":
            dt.date.fromisoformat(value)
        if schema.get("format") == "date-time":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), path
            dt.datetime.fromisoformat(value)


def params(prompt: str = "Summarise review 7 of the Cinder Lamp", **extra: Any) -> dict[str, Any]:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": prompt}],
    }
    return {**body, **extra}


def json_params(prompt: str = "Summarise review 7 of the Cinder Lamp", **extra: Any) -> dict:
    return params(
        prompt, output_config={"format": {"type": "json_schema", "schema": SCHEMA}}, **extra
    )


def answer(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result = respond(body, api_version=V1, batch=True, **kwargs)
    assert not isinstance(result, ApiError), result
    return result


def error(body: dict[str, Any], **kwargs: Any) -> ApiError:
    result = respond(body, api_version=V1, batch=True, **kwargs)
    assert isinstance(result, ApiError), result
    return result


def text_block(message: dict[str, Any]) -> str:
    return next(block["text"] for block in message["content"] if block["type"] == "text")


def test_same_seed_and_params_give_the_same_reply() -> None:
    for body in (params(), json_params(), json_params(model="claude-opus-5-5")):
        first, second = answer(body, seed=3), answer(body, seed=3)
        assert first["id"] != second["id"]
        assert (first["content"], first["usage"]) == (second["content"], second["usage"])
    plain = [text_block(answer(params(), seed=seed)) for seed in range(5)]
    assert set(plain) == {"Emulated reply to: Summarise review 7 of the Cinder Lamp"}
    structured = {text_block(answer(json_params(), seed=seed)) for seed in range(8)}
    assert len(structured) > 1  # the seed varies choices, never the prompt-derived text
    assert all("Cinder" in text or "Lamp" in text or "review" in text for text in structured)


def test_structured_output_validates_against_the_schema() -> None:
    prompts = ["Summarise review 7 of the Cinder Lamp", "x", "", "Ünïcode prompt — with dash"]
    for prompt in prompts:
        for seed in range(6):
            for model in ("claude-haiku-4-5", "claude-opus-5-5", "claude-sonnet-4-6"):
                message = answer(json_params(prompt, model=model), seed=seed)
                assert message["stop_reason"] == "end_turn"
                value = json.loads(text_block(message))
                check(value, SCHEMA, SCHEMA)
                words = prompt.split() or ["emulated"]
                assert value["title"].split()[0] in words  # a slice of the prompt


def test_always_thinking_models_put_a_signed_thinking_block_first() -> None:
    for model in THINKERS:
        message = answer(params(model=model))
        thinking, text = message["content"]
        assert thinking["type"] == "thinking" and "Cinder Lamp" in thinking["thinking"]
        assert re.fullmatch(r"[A-Za-z0-9+/=]{100,}", thinking["signature"])
        assert text["text"] == "Emulated reply to: Summarise review 7 of the Cinder Lamp"
        usage = message["usage"]
        thought_tokens = count_tokens(thinking["thinking"])
        assert usage["output_tokens_details"] == {"thinking_tokens": thought_tokens}
        assert usage["output_tokens"] == thought_tokens + count_tokens(text["text"])
    plain = answer(params())
    assert [block["type"] for block in plain["content"]] == ["text"]
    assert plain["usage"]["output_tokens_details"] is None


def test_forced_tool_is_a_tool_use_block_or_an_error_when_thinking() -> None:
    tools = [
        {"name": "other", "input_schema": {"type": "object", "properties": {}}},
        {"name": "record", "description": "Save it", "input_schema": SCHEMA},
    ]
    forced = params(tools=tools, tool_choice={"type": "tool", "name": "record"})
    message = answer(forced)
    (call,) = message["content"]
    assert call["type"] == "tool_use" and call["name"] == "record"
    assert re.fullmatch(r"toolu_01[0-9A-Za-z]{22}", call["id"])
    check(call["input"], SCHEMA, SCHEMA)
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"]["output_tokens"] == count_tokens(json.dumps(call["input"]))
    anything = answer(params(tools=tools, tool_choice={"type": "any"}))
    assert anything["content"][0]["name"] == "other"
    auto = answer(params(tools=tools, tool_choice={"type": "auto"}))
    assert auto["stop_reason"] == "end_turn" and auto["content"][0]["type"] == "text"
    for model in THINKERS:
        failure = error({**forced, "model": model})
        assert failure.status == 400 and failure.type == "invalid_request_error"
        assert "tool_choice forces tool use" in failure.message
    thinking = {"type": "enabled", "budget_tokens": 2000}
    assert "forces tool use" in error({**forced, "max_tokens": 4000, "thinking": thinking}).message
    missing = error(params(tools=tools, tool_choice={"type": "tool", "name": "nope"}))
    assert "nope" in missing.message


def test_manual_thinking_config_is_rejected_on_opus_5_5() -> None:
    enabled = params(model="claude-opus-5-5", thinking={"type": "enabled", "budget_tokens": 2000})
    assert error(enabled).message == (
        '"thinking.type.enabled" is not supported for this model. '
        'Use "thinking.type.adaptive" and "output_config.effort"'
    )
    disabled = params(model="claude-opus-5-5", thinking={"type": "disabled"})
    assert error(disabled).message.startswith('"thinking.type.disabled" is not supported')
    adaptive = answer(params(model="claude-opus-5-5", thinking={"type": "adaptive"}))
    assert adaptive["content"][0]["type"] == "thinking"
    requested = answer(params(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}))
    assert requested["content"][0]["type"] == "thinking"  # haiku thinks when asked


def test_small_max_tokens_truncates_with_stop_reason_max_tokens() -> None:
    message = answer(params(max_tokens=5))
    text = text_block(message)
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 5
    assert "Emulated reply to: Summarise review 7 of the Cinder Lamp".startswith(text)
    assert text == truncate_to_tokens("Emulated reply to: Summarise review 7", 5)
    cut_json = answer(json_params(max_tokens=12))
    assert cut_json["stop_reason"] == "max_tokens"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text_block(cut_json))
    thinker = answer(params(model="claude-opus-5-5", max_tokens=3))
    assert [block["type"] for block in thinker["content"]] == ["thinking"]
    assert thinker["stop_reason"] == "max_tokens" and thinker["usage"]["output_tokens"] == 3


def test_stop_sequences_cut_the_text() -> None:
    message = answer(params("alpha STOP beta END", stop_sequences=["END", "STOP"]))
    assert text_block(message) == "Emulated reply to: alpha "
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "STOP"
    unmatched = answer(params("alpha", stop_sequences=["zzz"]))
    assert unmatched["stop_reason"] == "end_turn" and unmatched["stop_sequence"] is None
    assert "stop_sequences" in error(params(stop_sequences="END")).message


def usage_split(message: dict[str, Any]) -> tuple[int, int, int, int]:
    usage = message["usage"]
    creation = usage["cache_creation"]
    assert usage["cache_creation_input_tokens"] == sum(creation.values())
    return (
        usage["input_tokens"],
        creation["ephemeral_5m_input_tokens"],
        creation["ephemeral_1h_input_tokens"],
        usage["cache_read_input_tokens"],
    )


def cached_system(ttl: str = "5m", question: str = "alpha beta") -> dict[str, Any]:
    system = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": ttl}}]
    return params(question, system=system)


def test_cache_write_then_read_then_expiry() -> None:
    cache = PromptCache()
    body = cached_system()
    tail = 2 + 1 + 3  # "alpha" (5 characters), "beta", the message overhead
    assert count_input_tokens(body) == 1100 + tail
    assert usage_split(answer(body)) == (1100 + tail, 0, 0, 0)  # no cache: all input
    assert usage_split(answer(body, cache=cache, now=T0)) == (tail, 1100, 0, 0)
    later = T0 + dt.timedelta(minutes=4)
    assert usage_split(answer(body, cache=cache, now=later)) == (tail, 0, 0, 1100)
    other_question = cached_system(question="gamma")  # same prefix, different tail
    assert usage_split(answer(other_question, cache=cache, now=later)) == (2 + 3, 0, 0, 1100)
    expired = later + dt.timedelta(minutes=5, seconds=1)  # the read refreshed the TTL
    assert usage_split(answer(body, cache=cache, now=expired)) == (tail, 1100, 0, 0)
    hour = cached_system("1h")  # same content, so the 1h breakpoint reads the 5m entry
    assert usage_split(answer(hour, cache=cache, now=expired)) == (tail, 0, 0, 1100)
    other_model = {**body, "model": "claude-sonnet-4-6"}  # caches are per model
    assert usage_split(answer(other_model, cache=cache, now=expired)) == (tail, 1100, 0, 0)


def test_cache_breakpoints_split_ttls_and_the_automatic_breakpoint_moves() -> None:
    cache = PromptCache()
    tools = [
        {
            "name": "lookup",
            "description": LONG,
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    tool_tokens = count_input_tokens(params("", tools=tools)) - 3
    body = cached_system()
    body["tools"] = tools
    first = answer(body, cache=cache, now=T0)
    assert usage_split(first) == (6, 1100, tool_tokens, 0)
    new_system = cached_system(question="alpha beta")
    new_system["system"][0]["text"] = LONG + "more"
    new_system["tools"] = tools
    assert usage_split(answer(new_system, cache=cache, now=T0)) == (6, 1101, 0, tool_tokens)
    # Top-level cache_control: the breakpoint is the last block, and next turn reads it.
    auto = PromptCache()
    turn = params(LONG, cache_control={"type": "ephemeral"})
    assert usage_split(answer(turn, cache=auto, now=T0)) == (0, 1103, 0, 0)
    turn["messages"] += [
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "next question"}]},
    ]
    assert usage_split(answer(turn, cache=auto, now=T0)) == (0, 11, 0, 1103)


def test_below_minimum_length_nothing_is_cached() -> None:
    short = params(
        "q",
        system=[{"type": "text", "text": "tiny " * 500, "cache_control": {"type": "ephemeral"}}],
    )
    cache = PromptCache()
    for _ in range(2):
        assert usage_split(answer(short, cache=cache, now=T0)) == (500 + 4, 0, 0, 0)
    assert len(cache) == 0
    low = PromptCache(min_tokens=100)
    assert usage_split(answer(short, cache=low, now=T0)) == (4, 500, 0, 0)
    per_model = PromptCache(min_tokens=100, min_tokens_by_model={"claude-haiku-4-5": 4096})
    assert usage_split(answer(short, cache=per_model, now=T0)) == (504, 0, 0, 0)


def test_breakpoint_limits_and_ttl_order_are_invalid_requests() -> None:
    control = {"type": "ephemeral"}
    system = [{"type": "text", "text": f"part {i}", "cache_control": control} for i in range(5)]
    failure = error(params(system=system))
    assert failure.type == "invalid_request_error"
    assert failure.message == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    four = params(system=system[:4], cache_control=control)  # automatic adds the 5th
    assert error(four).message.endswith("Found 5.")
    assert not isinstance(respond(params(system=system[:4]), api_version=V1, batch=True), ApiError)
    mixed = [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    assert error(params(system=mixed)).message.startswith(
        "system.1.cache_control.ttl: a ttl='1h' cache_control block must not come after"
    )


def test_prompt_cache_persists_and_batch_lines_share_it(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "prompt_cache.json"
    cache = PromptCache(path)
    assert cache.lookup_or_write("abc", 2000, 300, T0) == "write"
    assert cache.lookup_or_write("abc", 2000, 300, T0) == "read"
    reopened = PromptCache(path)
    assert reopened.lookup_or_write("abc", 2000, 300, T0 + dt.timedelta(seconds=299)) == "read"
    assert reopened.lookup_or_write("abc", 2000, 300, T0 + dt.timedelta(seconds=900)) == "write"
    reopened.clear()
    assert len(reopened) == 0 and not path.exists()
    assert reopened.lookup_or_write("abc", 2000, 300, T0) == "write"
    path.write_text("{not json")
    assert len(PromptCache(path)) == 0
    shared = PromptCache(tmp_path / "batch.json")  # lines of one batch, answered in order
    lines = [cached_system(question=f"question {i}") for i in range(3)]
    splits = [usage_split(answer(line, cache=shared, now=T0)) for line in lines]
    assert [split[1] for split in splits] == [1100, 0, 0]
    assert [split[3] for split in splits] == [0, 1100, 1100]


def test_usage_fields_service_tier_and_inference_geo() -> None:
    message = answer(params(inference_geo="us"))
    assert message["usage"]["inference_geo"] == "us"
    assert message["usage"]["service_tier"] == "batch"
    assert answer(params())["usage"]["inference_geo"] == "not_available"
    sync = respond(params(), api_version=V1, batch=False)
    assert not isinstance(sync, ApiError) and sync["usage"]["service_tier"] == "standard"
    assert error({**params(), "messages": []}).message == (
        "messages: List should have at least 1 item after validation, not 0"
    )
    assert MODELS["claude-haiku-4-5"].max_output == 64_000
    assert MODELS["claude-opus-5-5"].always_thinks and not MODELS["claude-opus-5"].always_thinks


@pytest.mark.slow
def test_structured_output_through_http(tmp_path: Path) -> None:
    process, url = start_emulator(tmp_path / "state", latency=0.2)
    try:
        client = anthropic.Anthropic(api_key="x", base_url=url, max_retries=0)
        message = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=1000,
            messages=[{"role": "user", "content": "Summarise review 7 of the Cinder Lamp"}],
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        )
        assert message.stop_reason == "end_turn"
        text = next(block.text for block in message.content if block.type == "text")
        check(json.loads(text), SCHEMA, SCHEMA)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_a_batch_sharing_a_cached_system_prompt_writes_once_then_reads(tmp_path: Path) -> None:
    """Caching through the real server: the first line writes the prefix, later lines read
    it, and the ledger bills the write and the reads at their multipliers."""
    process, url = start_emulator(tmp_path / "state", latency=0.1)
    try:
        client = anthropic.Anthropic(api_key="x", base_url=url)
        system = [
            {
                "type": "text",
                "text": "You write product copy. " * 400,  # well over 1,024 tokens
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"c{i}",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 50,
                        "system": system,
                        "messages": [{"role": "user", "content": f"item {i}"}],
                    },
                }
                for i in range(3)
            ]
        )
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(0.05)
        usage = {
            line.custom_id: line.result.message.usage
            for line in client.messages.batches.results(batch.id)
        }
        with urllib.request.urlopen(f"{url}/_emulator/ledger") as response:
            ledger = json.loads(response.read())
    finally:
        process.terminate()
        process.wait(timeout=10)
    written = usage["c0"].cache_creation_input_tokens
    assert written > 1024 and usage["c0"].cache_creation.ephemeral_1h_input_tokens == written
    assert [usage[c].cache_read_input_tokens for c in ("c1", "c2")] == [written, written]
    assert usage["c1"].cache_creation_input_tokens == 0
    p = pricing.price("claude-haiku-4-5")
    expected = (
        sum(
            (u.input_tokens * p.input + u.output_tokens * p.output)
            + u.cache_creation.ephemeral_1h_input_tokens * p.cache_write_1h
            + u.cache_read_input_tokens * p.cache_read
            for u in usage.values()
        )
        * pricing.price_list().batch_discount
        / 1e6
    )
    assert ledger["usd"] == pytest.approx(expected)
    assert ledger["cache_read_input_tokens"] == 2 * written
