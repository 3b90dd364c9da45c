"""The emulator's fast paths give exactly what the plain ways of doing the same did.

Answering a request is tuned (a reused C JSON encoder, templates for result and ledger
lines, compiled schemas, ...); each shortcut is checked here against the general code
it stands for, on inputs chosen to hit the corners (escaping, number forms, key order).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

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
