"""The emulator's fast paths give exactly what the plain ways of doing the same did.

Answering a request is tuned (a reused C JSON encoder, templates for result and ledger
lines, compiled schemas, ...); each shortcut is checked here against the general code
it stands for, on inputs chosen to hit the corners (escaping, number forms, key order).
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import re
from typing import Any

import pytest

from batchpipe.emulator import ledger, tokens, wire
from batchpipe.emulator.caching import PromptCache
from batchpipe.emulator.responders import respond
from batchpipe.emulator.schema_values import (
    _Generator,
    _plan,
    schema_key,
    value_for_schema,
)
from batchpipe.emulator.tokens import extra_input_tokens, plain_prompt_tokens, prompt_blocks
from batchpipe.emulator.wire import ApiError, Prepared, dumps_line, json_encoder
from tests.test_emulator_golden import T0
from tests.test_emulator_golden import _requests as golden_requests

AWKWARD: list[Any] = [
    "plain",
    'quote " backslash \\ tab \t newline \n nul \x00 \x1f del \x7f',
    "Grüße 世界\uff01 \u2028 \u2029 \ud83d\ude00 😀",
    0,
    -1,
    10**30,
    0.1,
    1e-7,
    1e22,
    -0.0,
    12.0,
    float("inf"),
    True,
    False,
    None,
    [],
    {},
    [1, [2, [3, {"a": None}]]],
    {"b": 1, "a": {"d": [1.5, "x"], "c": True}, "": ""},
    {3: "int key", 2.5: "float key", False: "bool key"},
    ("tuple", 1),
]
SETTINGS = [((",", ":"), False), ((",", ":"), True), ((", ", ": "), False)]


@pytest.mark.parametrize(("separators", "sort_keys"), SETTINGS)
def test_json_encoder_matches_json_dumps(separators: tuple[str, str], sort_keys: bool) -> None:
    encode = json_encoder(separators=separators, sort_keys=sort_keys)
    for value in [*AWKWARD, AWKWARD]:
        expected = json.dumps(value, ensure_ascii=False, separators=separators, sort_keys=sort_keys)
        assert encode(value) == expected, repr(value)


def test_json_encoder_refuses_what_json_dumps_refuses() -> None:
    encode = json_encoder(separators=(",", ":"))
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        encode({"a": {1}})
    assert encode({"after": "an error"}) == '{"after":"an error"}'


def test_ids_are_uniform_base62_even_when_random_bytes_are_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = iter([b"\xff" * 32, bytes(range(248, 256)) + bytes(range(24)), b"\x3d" * 32])
    monkeypatch.setattr(wire.secrets, "token_bytes", lambda count: next(draws))
    assert wire.new_message_id() == "msg_01" + wire.BASE62[:22]
    monkeypatch.undo()
    ids = {wire.new_message_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"msg_01[0-9A-Za-z]{22}", one) for one in ids)
    assert set("".join(ids)) >= set(wire.BASE62)


def _plain_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _messages() -> list[dict[str, Any]]:
    """A Message for every valid request of the golden set (thinking, tools, stop
    sequences, truncation, structured output, prompt caching, geo), batch and not."""
    cache = PromptCache()
    found = []
    for request in golden_requests():
        for batch in (True, False):
            answer = respond(
                request["params"], api_version="2023-06-01", batch=batch, cache=cache, now=T0
            )
            if not isinstance(answer, ApiError):
                found.append(answer)
    return found


def test_messages_and_ledger_lines_are_written_as_encoding_them_whole_would() -> None:
    messages = _messages()
    assert len(messages) > 60
    assert {type(message) for message in messages} == {Prepared}
    for message in messages:
        plain = json.loads(_plain_json(message))
        assert dumps_line(message) == _plain_json(plain)
        line = {"custom_id": 'a"b', "result": {"type": "succeeded", "message": message}}
        assert dumps_line(line) == _plain_json(json.loads(_plain_json(line)))
        row = ledger.entry("msgbatch_1", "c\u2028d", message, "2026-11-25T12:00:00.000000Z")
        assert type(row) is Prepared
        assert dumps_line(row) == _plain_json(dict(row))
        assert ledger.entry("msgbatch_1", "c\u2028d", plain, "2026-11-25T12:00:00.000000Z") == row


def test_ledger_lines_of_odd_usage_records_are_encoded_key_by_key() -> None:
    """1, 1.0 and True are one dict key but three JSON texts: a usage record of other
    than ints is never written from the memo of another's text."""
    for odd in (1, 1.0, True, None):
        usage = {"input_tokens": odd, "output_tokens": 1, "cache_creation": {}}
        row = ledger.entry("b", "c", {"model": "claude-haiku-4-5", "usage": usage}, "t")
        assert dumps_line(row) == _plain_json(dict(row)), odd
        assert (type(row) is Prepared) == (type(odd) in (int, type(None)))  # None: 0


def test_prepared_dicts_are_read_only_and_copy_whole() -> None:
    message = _messages()[0]
    with pytest.raises(TypeError):
        message["id"] = "changed"
    with pytest.raises(TypeError):
        message.update(id="changed")
    with pytest.raises(TypeError):
        del message["id"]
    for copied in (copy.deepcopy(message), pickle.loads(pickle.dumps(message))):
        assert type(copied) is Prepared and copied == message
        assert dumps_line(copied) == dumps_line(message)
    assert type({**message}) is dict


def test_lines_holding_prepared_dicts_keep_json_dumps_key_handling() -> None:
    message = _messages()[0]
    for line in ({1: message, "x": [message]}, {"a": {"b": message}, "c": 1.5, "d": None}):
        assert dumps_line(line) == _plain_json(line)


def test_plain_prompts_count_as_their_blocks_do() -> None:
    """Requests whose blocks cannot carry cache_control skip making them: the same total."""
    chat = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Grüße — 世界\uff01"},
    ]
    extra = [
        {"messages": chat},
        {"messages": chat, "system": "be brief", "tools": []},
        {"messages": chat, "system": ""},
        {"messages": chat, "system": [{"type": "text", "text": "listed"}]},
        {"messages": [*chat, {"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    ]
    params = [request["params"] for request in golden_requests()] + extra
    plain = 0
    for one in params:
        total = plain_prompt_tokens(one)
        if total is not None:
            plain += 1
            assert total == sum(block.tokens for block in prompt_blocks(one))
            assert not any(block.cache_control for block in prompt_blocks(one))
    assert plain > len(params) // 2


FLAT_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"enum": ["x", 1, 1.0, True, None]}}},
    {"properties": {"n": {"type": "integer", "minimum": 3.5, "exclusiveMaximum": 9}}},
    {"properties": {"n": {"type": "number", "exclusiveMinimum": True, "minimum": -2}}},
    {"properties": {"n": {"maximum": 7}, "m": {"type": ["null", "integer"]}}},
    {"type": "object", "properties": {"s": {"type": "number", "minimum": 1, "maximum": 1}}},
    {"type": "object", "properties": {}, "required": []},
    # not planned: the generator's own way
    {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 4}}},
    {"type": "object", "properties": {"a": {"enum": [{"k": 1}, [2]]}}},
    {"type": "object", "properties": {"a": {"enum": []}}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},
    {"type": "object", "properties": {"a": {"enum": [1]}}, "minProperties": 3},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"enum": [1]}}},
    {"type": "object", "properties": {"a": {"type": "number", "minimum": "low"}}},
    {"type": "array", "items": {"enum": [1, 2]}},
    {"enum": ["whole"]},
]


def test_planned_schema_values_are_the_generators() -> None:
    planned = [_plan(schema, schema_key(schema)) is not None for schema in FLAT_SCHEMAS]
    assert planned == [index < 6 for index in range(len(FLAT_SCHEMAS))]
    for schema in FLAT_SCHEMAS:
        for prompt, seed, salt in (("a b c", 0, ""), ("Grüße x", 7, "tool"), ("", 3, "")):
            try:
                expected = repr(_Generator(schema, prompt, seed, salt).value(schema, "$", 0))
            except Exception as error:  # the same failure either way
                with pytest.raises(type(error)):
                    value_for_schema(schema, prompt=prompt, seed=seed, salt=salt)
                continue
            for _ in range(2):  # planned on first sight, then taken from the memo
                found = value_for_schema(schema, prompt=prompt, seed=seed, salt=salt)
                assert repr(found) == expected, schema


def test_schemas_equal_in_python_but_not_in_json_are_planned_apart() -> None:
    """1 == 1.0 == True, yet a value picked from them prints differently."""
    values = []
    for member in (1, 1.0, True):
        schema = {"type": "object", "properties": {"a": {"enum": [member]}}}
        values.append(json.dumps(value_for_schema(schema, prompt="p", seed=0)))
        params = {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
        key = schema_key(schema)
        assert extra_input_tokens(params, key) == extra_input_tokens(params)
    assert values == ['{"a": 1}', '{"a": 1.0}', '{"a": true}']


def test_ascii_runs_are_the_patterns_runs() -> None:
    rnd = random.Random(5)
    alphabet = [chr(code) for code in range(128)]
    texts = ["", " ", "a.b", "x" * 230 + " #1", "__init__(self)->None", "\x1c\x1d!\x1f?\x7f"]
    texts += ["".join(rnd.choices(alphabet, k=rnd.randint(0, 60))) for _ in range(3000)]
    for text in texts:
        expected = sorted(len(run) for run in tokens._ASCII_PIECE.findall(text))
        assert sorted(len(run) for run in tokens._ascii_runs(text)) == expected, repr(text)
