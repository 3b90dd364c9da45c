"""The content of a reply: thinking, then text, JSON or a forced tool call, then limits.

Everything here is a pure function of (seed, params) so a test can predict a reply and
a pipeline run can be repeated bit for bit. Plain replies keep the `Emulated reply to:
<last user text>` form pipeline tests match on, plus a line per image or document of
the last user message (mediainfo.MediaInfo.line); structured replies are a JSON value that
validates against the requested schema; `max_tokens` and `stop_sequences` cut the text
the way the API does, so truncated JSON is invalid JSON, exactly as in production.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from batchpipe.emulator.models import ModelSpec
from batchpipe.emulator.schema_values import SchemaError, stable_int, value_for_schema
from batchpipe.emulator.tokens import count_tokens, output_format_schema, truncate_to_tokens
from batchpipe.emulator.wire import BASE62, invalid, json_encoder

REPLY_PREFIX = "Emulated reply to: "
# json.dumps(value, ensure_ascii=False), without building an encoder on every call.
json_text = _json_text = json_encoder(separators=(", ", ": "))
THOUGHTS = (
    'The user wrote: "{prompt}". I will answer directly and keep it short.',
    'Request to handle: "{prompt}". A brief, direct reply fits best.',
    'Reading the message "{prompt}" and preparing a concise answer.',
)


class Reply(NamedTuple):
    """A reply's parts, made once per request (a NamedTuple: cheaper than a dataclass)."""

    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int
    thinking_tokens: int | None  # None when the model did not think


def text_of(content: Any) -> str:
    """String content as is; a list of blocks as its text blocks concatenated."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def thinks(params: dict[str, Any], spec: ModelSpec) -> bool:
    """Whether the reply starts with a thinking block (always, on some models)."""
    thinking = params.get("thinking")
    requested = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return spec.always_thinks or requested


def forced_tool(params: dict[str, Any]) -> dict[str, Any] | None:
    """The tool `tool_choice` forces ("any": the first custom tool), or None.

    The error strings are inferred, not captured: the research has none for these cases.
    """
    choice = params.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict):
        raise invalid("tool_choice: Input should be a valid dictionary")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if kind in ("auto", "none"):
        return None
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and "input_schema" in t]
    if not tools:
        raise invalid("tool_choice: tool_choice may only be specified while providing tools")
    if kind == "any":
        return tools[0]
    name = choice.get("name")
    if not isinstance(name, str):
        raise invalid("tool_choice.tool.name: Field required")
    for tool in tools:
        if tool.get("name") == name:
            return tool
    raise invalid(f"tool_choice.tool.name: no tool named '{name}' in tools")


def _first_stop(text: str, stops: Sequence[str] | None) -> tuple[int, str] | None:
    """The earliest stop sequence in `text` (the longest, on a tie) and where it starts."""
    hits = [(text.find(stop), -len(stop), stop) for stop in stops or [] if stop and stop in text]
    if not hits:
        return None
    index, _, stop = min(hits)
    return index, stop


def _tool_use_id(seed: int, prompt: str, name: str) -> str:
    number = stable_int(seed, "toolu", prompt, name) << 64 | stable_int(seed, name, prompt)
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    return "toolu_01" + "".join(chars)


def _thinking_block(
    params: dict[str, Any], prompt: str, seed: int, tool: dict[str, Any] | None, budget: int
) -> tuple[dict[str, Any], int]:
    """A short thought naming the prompt, cut to the budget, signed deterministically."""
    shown = " ".join(prompt.split())[:80]
    thought = THOUGHTS[stable_int(seed, "thought", prompt) % len(THOUGHTS)].format(prompt=shown)
    if tool is not None:
        thought += f" I will call the {tool.get('name')} tool."
    elif output_format_schema(params) is not None:
        thought += " The reply must be JSON matching the requested schema."
    tokens = count_tokens(thought)
    if tokens > budget:
        thought, tokens = truncate_to_tokens(thought, budget), budget
    signature = base64.b64encode(hashlib.shake_256(f"{seed}|{thought}".encode()).digest(96))
    thinking = params.get("thinking")
    omitted = isinstance(thinking, dict) and thinking.get("display") == "omitted"
    block = {
        "type": "thinking",
        "thinking": "" if omitted else thought,
        "signature": signature.decode(),
    }
    return block, tokens


def _schema_value(
    schema: dict[str, Any], where: str, prompt: str, seed: int, salt: str, key: str | None = None
) -> Any:
    try:
        return value_for_schema(schema, prompt=prompt, seed=seed, salt=salt, key=key)
    except SchemaError as error:
        raise invalid(f"{where}: {error}") from None


def compose(
    params: dict[str, Any],
    spec: ModelSpec,
    seed: int,
    schema_key: str | None = None,
    media_lines: Sequence[str] = (),
) -> Reply:
    """The reply to validated `params`: content blocks, stop reason and output tokens.
    `schema_key` is the output schema's schema_values.schema_key, if the caller made it;
    `media_lines` describe the last user message's images and documents (media.Media)."""
    prompt = last_user_text(params["messages"])
    budget = params["max_tokens"]
    content: list[dict[str, Any]] = []
    used, thinking_tokens = 0, None
    tool = forced_tool(params)
    if thinks(params, spec):
        block, thinking_tokens = _thinking_block(params, prompt, seed, tool, budget)
        content.append(block)
        used = thinking_tokens
        if used >= budget:
            return Reply(content, "max_tokens", None, used, thinking_tokens)
    if tool is not None:
        name = str(tool.get("name"))
        index = params["tools"].index(tool)
        schema = tool.get("input_schema") or {"type": "object"}
        value = _schema_value(schema, f"tools.{index}.input_schema", prompt, seed, name)
        cost = count_tokens(_json_text(value))
        call = {"type": "tool_use", "id": _tool_use_id(seed, prompt, name), "name": name}
        if used + cost > budget:  # cut mid-call: the API returns an incomplete tool_use
            content.append({**call, "input": {}})
            return Reply(content, "max_tokens", None, budget, thinking_tokens)
        content.append({**call, "input": value})
        return Reply(content, "tool_use", None, used + cost, thinking_tokens)
    text, tokens = _text_reply(params, prompt, seed, schema_key, media_lines)
    stop_reason, stop_sequence = "end_turn", None
    hit = _first_stop(text, params.get("stop_sequences"))
    if hit is not None:
        text, stop_reason, stop_sequence = text[: hit[0]], "stop_sequence", hit[1]
        tokens = count_tokens(text)
    if tokens > budget - used:  # a truncated text costs exactly what was left
        text, tokens = truncate_to_tokens(text, budget - used), budget - used
        stop_reason, stop_sequence = "max_tokens", None
    content.append({"type": "text", "text": text})
    return Reply(content, stop_reason, stop_sequence, max(1, used + tokens), thinking_tokens)


def _text_reply(
    params: dict[str, Any],
    prompt: str,
    seed: int,
    schema_key: str | None,
    media_lines: Sequence[str] = (),
) -> tuple[str, int]:
    """The whole text reply (JSON for structured output) and its token count. A plain
    reply names each media block of the last user message on a line of its own, so a
    test can tell which answer belongs to which image; a structured one does not."""
    schema = output_format_schema(params)
    if schema is not None:
        where = "output_config.format.schema"
        value = _schema_value(schema, where, prompt, seed, "", schema_key)
        text = _json_text(value)
        return text, count_tokens(text)
    # The prefix ends in a space, so no run spans the join: the prompt's count (already
    # made for the input blocks, and cached) adds to the prefix's.
    text = REPLY_PREFIX + prompt
    tokens = count_tokens(REPLY_PREFIX) + count_tokens(prompt)
    for line in media_lines:  # after a newline, so again no run spans the join
        text += "\n" + line
        tokens += count_tokens(line)
    return text, tokens
