"""The usual batch line, answered from templates: a request with a model, `max_tokens`
and one user message of plain text, perhaps asking for JSON by a schema, and nothing
else. Nearly every line of a pipeline's batch is one, and making its result line and
ledger line straight from their few varying values costs a third of validating the
params, composing a Message and encoding it piece by piece (responders.respond).

Only requests the responder would certainly answer are taken: anything else (another
key, a model that thinks, a value out of range, a schema it cannot fill) gets None, and
the caller asks the responder, so this can only make a line sooner, never different.
tests/test_emulator_parallel.py holds every shape of line to what the responder writes.
"""

from __future__ import annotations

import hashlib
import marshal
from collections.abc import Sequence
from typing import Any, NamedTuple

from batchpipe.emulator import ledger
from batchpipe.emulator.models import MODELS
from batchpipe.emulator.replies import REPLY_PREFIX, json_text
from batchpipe.emulator.responders import OUTPUT_300K_BETA
from batchpipe.emulator.schema_values import (
    SchemaError,
    flat_leaves,
    schema_key,
    value_for_schema,
)
from batchpipe.emulator.tokens import (
    MESSAGE_OVERHEAD,
    count_fresh,
    count_tokens,
    extra_input_tokens,
    truncate_to_tokens,
)
from batchpipe.emulator.wire import json_string

PLAIN = frozenset({"model", "max_tokens", "messages"})
STRUCTURED = PLAIN | {"output_config"}
PREFIX_TOKENS = count_tokens(REPLY_PREFIX)
MAX_SCHEMAS = 64  # distinct schemas of one batch whose keys are remembered
# Everything of a Message's usage after `input_tokens` but `output_tokens`, and after
# that, as responders._message writes them for a batch line with no cache and no geo.
_CACHE_NONE = (
    '"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":'
    '{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},'
)
_TAIL = (
    '"server_tool_use":null,"service_tier":"batch","inference_geo":"not_available",'
    '"output_tokens_details":null,"speed":null}}}}'
)
_MIDDLE = '"stop_sequence":null,"stop_details":null,"container":null,"diagnostics":null,'


class Lines:
    """Result and ledger lines of one batch's usual requests; `line` is the per-line
    part, everything that holds for the whole batch is worked out here once."""

    def __init__(self, batch_id: str, betas: Sequence[str], seed: int) -> None:
        self.seed = seed
        self._bill_head = '{"batch_id":' + json_string(batch_id) + ',"custom_id":'
        self._stamp, self._bill_tail = "", ""
        self._schemas: dict[bytes, _Schema] = {}  # see _schema
        with_beta = OUTPUT_300K_BETA in betas
        # model -> (its id as written, its id in JSON, the largest max_tokens), for the
        # models whose replies are a single text block (no thinking block first)
        self._models = {
            name: (
                spec.id,
                json_string(spec.id),
                300_000 if with_beta and spec.output_300k else spec.max_output,
            )
            for name, spec in MODELS.items()
            if not spec.always_thinks
        }

    def line(
        self, custom_id: str, params: Any, message_id: str, billed_at: str
    ) -> tuple[str, str, float] | None:
        """(result line, ledger line, its USD) of a succeeded line, or None when the
        request is not the usual one (see the module docstring)."""
        if type(params) is not dict:
            return None
        size = len(params)
        if not (
            (size == 3 and params.keys() == PLAIN) or (size == 4 and params.keys() == STRUCTURED)
        ):
            return None
        model = params["model"]
        known = self._models.get(model) if type(model) is str else None
        budget = params["max_tokens"]
        messages = params["messages"]
        if (
            known is None
            or type(budget) is not int
            or not 1 <= budget <= known[2]
            or type(messages) is not list
            or len(messages) != 1
        ):
            return None
        message = messages[0]
        if type(message) is not dict or len(message) != 2 or message.get("role") != "user":
            return None
        prompt = message.get("content")
        if type(prompt) is not str:
            return None
        input_tokens = count_fresh(prompt) + MESSAGE_OVERHEAD
        if size == 3:
            text, tokens = REPLY_PREFIX + prompt, PREFIX_TOKENS + input_tokens - MESSAGE_OVERHEAD
        else:
            made = self._structured(params, prompt)
            if made is None:
                return None
            text, tokens, schema_tokens = made
            input_tokens += schema_tokens
        stop = '"end_turn"'
        if tokens > budget:  # a truncated text costs exactly what was left
            text, tokens, stop = truncate_to_tokens(text, budget), budget, '"max_tokens"'
        output_tokens = max(1, tokens)
        cid = json_string(custom_id)
        result = (
            f'{{"custom_id":{cid},"result":{{"type":"succeeded","message":{{"id":"{message_id}",'
            f'"type":"message","role":"assistant","model":{known[1]},"content":'
            f'[{{"type":"text","text":{json_string(text)}}}],"stop_reason":{stop},{_MIDDLE}'
            f'"usage":{{"input_tokens":{input_tokens:d},{_CACHE_NONE}'
            f'"output_tokens":{output_tokens:d},{_TAIL}'
        )
        counts = (input_tokens, output_tokens, 0, 0, 0, 0)  # ledger.entry's tokens and key
        if billed_at is not self._stamp:
            self._stamp = billed_at
            self._bill_tail = ',"billed_at":' + json_string(billed_at) + "}"
        priced = ledger.priced(known[0], counts, counts)
        bill = f"{self._bill_head}{cid},{priced}{self._bill_tail}"
        return result, bill, ledger.usage_cost(known[0], counts)

    def _schema(self, schema: dict[str, Any], params: dict[str, Any]) -> _Schema:
        """What the lines of a batch share about their schema, looked up by its marshal
        bytes: a batch's lines mostly share one, and marshalling it costs a quarter of
        its repr (schema_values.schema_key). Equal bytes load back to equal values of
        the same types, so to the same repr."""
        try:
            found = marshal.dumps(schema)
        except ValueError:  # nested too deep for marshal
            found = None
        known = self._schemas.get(found) if found is not None else None
        if known is None:
            key = schema_key(schema)
            known = _Schema(key, extra_input_tokens(params, key), _fields(schema))
            if found is not None and len(self._schemas) < MAX_SCHEMAS:
                self._schemas[found] = known
        return known

    def _structured(self, params: dict[str, Any], prompt: str) -> tuple[str, int, int] | None:
        """The JSON reply, its tokens and the schema's, when `output_config` is only a
        json_schema format with a schema the generator fills."""
        config = params["output_config"]
        if type(config) is not dict or len(config) != 1:
            return None
        found = config.get("format")
        if type(found) is not dict or len(found) != 2 or found.get("type") != "json_schema":
            return None
        schema = found.get("schema")
        if type(schema) is not dict:
            return None
        known = self._schema(schema, params)
        if known.fields is not None:
            text = _flat_text(known.fields, f"{self.seed}\x1f\x1f{prompt}\x1f")
        else:
            try:
                value = value_for_schema(schema, prompt=prompt, seed=self.seed, key=known.key)
            except SchemaError:
                return None
            text = json_text(value)
        return text, count_tokens(text), known.tokens


# One property of a flat schema: its name as JSON with the ": " after it, its leaf's
# kind, the JSON texts of its members (an enum) or its first number, how many there
# are to pick from, and the path its pick hashes.
Field = tuple[str, str, Any, int, bytes]


class _Schema(NamedTuple):
    key: str  # schema_values.schema_key
    tokens: int  # the input tokens it adds (tokens.extra_input_tokens)
    fields: list[Field] | None  # a flat schema's (see _flat_text), else None


def _fields(schema: dict[str, Any]) -> list[Field] | None:
    try:
        leaves = flat_leaves(schema)
    except Exception:  # as schema_values._plan: the generator meets it and reports it
        return None
    if leaves is None:
        return None
    fields = []
    for name, (kind, start, span) in leaves:
        if kind == "enum":
            start = [json_text(member) for member in start]
        fields.append((json_string(name) + ": ", kind, start, span, f"$.{name}".encode()))
    return fields


def _flat_text(fields: list[Field], hashed: str) -> str:
    """json_text(value_for_schema(...)) of a flat schema (schema_values.flat_leaves)
    without making the value: each pick as _Generator.pick makes it (`hashed` is what
    every pick's hash starts with), each member's text made once, numbers written as
    the JSON encoder writes an int or a float."""
    base = hashlib.sha256(hashed.encode())
    parts = []
    for head, kind, start, span, path in fields:
        digest = base.copy()
        digest.update(path)
        pick = int.from_bytes(digest.digest()[:8], "big")
        if kind == "enum":
            parts.append(head + start[pick % span])
        elif kind == "integer":
            parts.append(head + int.__repr__(start + pick % span))
        else:
            parts.append(head + float.__repr__(float(start + pick % span)))
    return "{" + ", ".join(parts) + "}"
