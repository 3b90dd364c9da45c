"""The emulator's fast paths give exactly what the plain ways of doing the same did.

Answering a request is tuned (a reused C JSON encoder, templates for result and ledger
lines, compiled schemas, ...); each shortcut is checked here against the general code
it stands for, on inputs chosen to hit the corners (escaping, number forms, key order).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from batchpipe.emulator import wire
from batchpipe.emulator.wire import json_encoder

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
