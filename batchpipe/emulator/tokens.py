"""A deterministic tokenizer approximation and the token layout of a Messages request.

Real token counts need the real tokenizer; tests need counts that are exact and stable
instead. So a text costs ceil(len/4) tokens per word or punctuation run (roughly 1 token
per 4 characters of English), and a request is cut into the blocks prompt caching works
on (tools, then system, then messages), each with its own count, so cache arithmetic can
be asserted to the token.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from dataclasses import dataclass
from typing import Any, Protocol

from batchpipe.emulator.wire import json_encoder

_PIECE = re.compile(r"\w+|[^\w\s]+")
# The same pieces for ASCII text, found half again as fast: without re.UNICODE, \s
# leaves out the separators \x1c-\x1f, so they are left out of punctuation by hand.
_ASCII_PIECE = re.compile(r"\w+|[^\w\s\x1c-\x1f]+", re.ASCII)
MESSAGE_OVERHEAD = 3  # role markers around every message
MEDIA_TOKENS = 1500  # an unchecked media block (no media_type: see media.py), whatever its size


class MediaTokens(Protocol):
    """A request's checked media blocks (media.Media): what each costs, by the block."""

    def tokens_of(self, block: Any) -> int | None: ...


@functools.lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """ceil(len/4) tokens for each word or punctuation run; whitespace is free.

    Cached: a request's prompt is counted as an input block and again inside the reply
    that quotes it, and a batch's requests share schemas, systems and tools. Room for
    thousands of texts, so a structured reply (a few hundred distinct ones for an enum
    and a number) is still cached when it recurs between ever new prompts."""
    return count_fresh(text)


def count_fresh(text: str) -> int:
    """count_tokens without the cache, for a text that is counted once (a batch line's
    prompt): filing it in the cache would only push out texts that do recur."""
    if text.isascii():
        return sum([(len(run) + 3) >> 2 for run in _ascii_runs(text)])
    return sum([(len(piece) + 3) >> 2 for piece in _PIECE.findall(text)])


# An ASCII text's runs without a regex: one translation keeps its word bytes (\w) and
# blanks the rest, another keeps its punctuation (what _ASCII_PIECE matches outside \w),
# and split() finds the runs of each. Every step is one C pass over the bytes: twice as
# fast as findall on English text.
_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
_SPACE = frozenset(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
_WORD_RUNS = bytes(ord("w") if byte in _WORD else ord(" ") for byte in range(256))
_PUNCT_RUNS = bytes(
    ord(" ") if byte in _WORD or byte in _SPACE else ord("p") for byte in range(256)
)


def _ascii_runs(text: str) -> list[bytes]:
    """The runs `_ASCII_PIECE.findall(text)` finds (as bytes of the same lengths), its
    word runs first, then its punctuation runs."""
    data = text.encode("ascii")
    return data.translate(_WORD_RUNS).split() + data.translate(_PUNCT_RUNS).split()


def _pieces(text: str) -> re.Pattern[str]:
    """The pattern that finds `text`'s word and punctuation runs fastest."""
    return _ASCII_PIECE if text.isascii() else _PIECE


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of `text` costing at most `limit` tokens.

    A run that does not fit is cut inside (4 characters per token), so a truncated
    text costs exactly `limit`: the API reports `output_tokens == max_tokens` then.
    The running total of the runs' costs says which run does not fit; only that run (or
    the one before it) is looked up as a match, for where it starts or ends.
    """
    runs = _pieces(text).findall(text)
    totals = list(itertools.accumulate((len(piece) + 3) >> 2 for piece in runs))
    fitting = bisect.bisect_right(totals, limit)  # costs are >= 1, so totals increase
    if fitting == len(totals):
        return text
    used = totals[fitting - 1] if fitting else 0
    if used < limit:
        return text[: _piece(text, fitting).start() + 4 * (limit - used)]
    return text[: _piece(text, fitting - 1).end()] if fitting else ""


def _piece(text: str, index: int) -> re.Match[str]:
    """The `index`-th word or punctuation run of `text` (it must exist)."""
    return next(itertools.islice(_pieces(text).finditer(text), index, None))


@dataclass(frozen=True)
class PromptBlock:
    """One cacheable unit of the prompt, in cache order (tools, system, messages)."""

    location: str  # the request path the API names in errors, e.g. "messages.0.content.1"
    tokens: int
    contributes: Any  # what the block puts in the prompt, as JSON-able data
    cache_control: Any  # the block's own `cache_control`, None when absent
    cacheable: bool = True  # thinking blocks cannot carry a breakpoint

    @functools.cached_property
    def identity(self) -> str:
        """Canonical JSON of what the block contributes, for prefix hashing. Made only
        when asked: most requests have no breakpoint, so nothing is ever hashed."""
        return _canonical(self.contributes)


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict):
        return {key: value for key, value in block.items() if key != "cache_control"}
    return block


# json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")), without
# building an encoder on every call (every structured request canonicalizes its schema).
_canonical = json_encoder(separators=(",", ":"), sort_keys=True)


def block_text(block: Any) -> str:
    """The text a content block puts in front of the model, for counting."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return _canonical(block)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if kind in ("tool_use", "server_tool_use"):
        return f"{block.get('name', '')} {_canonical(block.get('input', {}))}"
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return " ".join(block_text(part) for part in content)
        return str(content)
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        return str(source.get("data", ""))
    return _canonical(_without_cache_control(block))


def _block_tokens(block: Any, media: MediaTokens | None = None) -> int:
    if media is not None and isinstance(block, dict):
        own = media.tokens_of(block)
        if own is not None:
            return own
        parts = block.get("content") if block.get("type") == "tool_result" else None
        if isinstance(parts, list) and any(media.tokens_of(part) is not None for part in parts):
            # as count_tokens(block_text(block)): its parts are joined by spaces
            return sum(_block_tokens(part, media) for part in parts)
    if isinstance(block, dict) and block.get("type") in ("image", "document"):
        source = block.get("source")
        if not (isinstance(source, dict) and source.get("type") == "text"):
            return MEDIA_TOKENS
    return count_tokens(block_text(block))


def prompt_blocks(params: dict[str, Any], media: MediaTokens | None = None) -> list[PromptBlock]:
    """The request's blocks in cache order; each message's overhead rides on its first.
    `media`: the request's checked images and documents (media.inspect), priced by
    their content; without it every media block costs MEDIA_TOKENS."""
    blocks: list[PromptBlock] = []
    for index, tool in enumerate(params.get("tools") or []):
        body = _without_cache_control(tool)
        control = tool.get("cache_control") if isinstance(tool, dict) else None
        blocks.append(
            PromptBlock(
                f"tools.{index}",
                count_tokens(_canonical(body)),
                ["tool", body],
                control,
            )
        )
    system = params.get("system")
    if isinstance(system, str) and system:
        blocks.append(PromptBlock("system", count_tokens(system), ["system", system], None))
    elif isinstance(system, list):
        for index, block in enumerate(system):
            control = block.get("cache_control") if isinstance(block, dict) else None
            contributes = ["system", _without_cache_control(block)]
            blocks.append(
                PromptBlock(f"system.{index}", _block_tokens(block), contributes, control)
            )
    for m_index, message in enumerate(params.get("messages") or []):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = [content] if isinstance(content, str) else content
        parts = parts if isinstance(parts, list) else []
        role = message.get("role")
        if not parts:
            empty = ["message", m_index, role, []]
            blocks.append(PromptBlock(f"messages.{m_index}", MESSAGE_OVERHEAD, empty, None, False))
            continue
        for b_index, block in enumerate(parts):
            where = f"messages.{m_index}.content"
            where += "" if isinstance(content, str) else f".{b_index}"
            overhead = MESSAGE_OVERHEAD if b_index == 0 else 0
            control = block.get("cache_control") if isinstance(block, dict) else None
            kind = block.get("type") if isinstance(block, dict) else "text"
            contributes = ["message", m_index, role, _without_cache_control(block)]
            blocks.append(
                PromptBlock(
                    where,
                    _block_tokens(block, media) + overhead,
                    contributes,
                    control,
                    kind not in ("thinking", "redacted_thinking"),
                )
            )
    return blocks


def plain_prompt_tokens(params: dict[str, Any]) -> int | None:
    """What `prompt_blocks`' tokens add up to, when no block can carry `cache_control`:
    no tools, no system blocks, only string contents (the usual batch request). None
    otherwise. Such a prompt needs no PromptBlocks: nothing in it is ever cached."""
    if params.get("tools"):
        return None
    system = params.get("system")
    total = 0
    if isinstance(system, str):
        total = count_tokens(system)
    elif system is not None:
        return None
    for message in params.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            return None
        total += count_tokens(content) + MESSAGE_OVERHEAD
    return total


def output_format_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """`output_config.format.schema` when structured output is requested, else None."""
    config = params.get("output_config")
    if not isinstance(config, dict):
        return None
    output_format = config.get("format")
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        schema = output_format.get("schema")
        return schema if isinstance(schema, dict) else None
    return None


_SCHEMA_TOKENS: dict[str, int] = {}  # schema_values.schema_key -> the schema's tokens
MAX_SCHEMAS = 1024  # distinct schemas remembered; more and the memo starts over


def extra_input_tokens(params: dict[str, Any], schema_key: str | None = None) -> int:
    """Input outside the cacheable blocks: the structured-output schema the API compiles.
    With the schema's `schema_values.schema_key`, its count is looked up by that key, not
    made again from its canonical JSON (2 us), which every request of a batch repeats."""
    schema = output_format_schema(params)
    if schema is None:
        return 0
    if schema_key is None:
        return count_tokens(_canonical(schema))
    tokens = _SCHEMA_TOKENS.get(schema_key)
    if tokens is None:
        if len(_SCHEMA_TOKENS) >= MAX_SCHEMAS:
            _SCHEMA_TOKENS.clear()
        tokens = _SCHEMA_TOKENS[schema_key] = count_tokens(_canonical(schema))
    return tokens


def count_input_tokens(params: dict[str, Any], media: MediaTokens | None = None) -> int:
    """All input tokens of a request: tools, system, messages and the output schema."""
    blocks = prompt_blocks(params, media)
    return sum(block.tokens for block in blocks) + extra_input_tokens(params)
