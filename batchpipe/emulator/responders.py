"""The deterministic "model": Messages params in, a Message dict or an ApiError out.

The reply visibly derives from the prompt (`Emulated reply to: <last user text>`, or a
schema-valid JSON value built from it) so a pipeline test can check that each output row
got the answer to its own input. Content and usage are a pure function of (seed, params)
plus the prompt cache's state, so cost assertions are exact. Validation follows the real
API's deferred checks and error strings (research §3, §5, §7), because the pipeline must
handle those errored lines the way it would in production.

The pieces live in focused modules: `models` (what each model allows), `tokens` (the
tokenizer approximation), `media` (images and documents: checks and token counts),
`caching` (prompt caching), `schema_values` and `replies` (the content). This module
validates and assembles the Message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from batchpipe.emulator.caching import InputUsage, PromptCache, find_breakpoints, input_usage
from batchpipe.emulator.media import Sources
from batchpipe.emulator.media import inspect as inspect_media
from batchpipe.emulator.models import EPOCH, MODELS, ModelSpec
from batchpipe.emulator.replies import Reply, compose, forced_tool, thinks
from batchpipe.emulator.schema_values import schema_key
from batchpipe.emulator.tokens import (
    count_input_tokens,
    extra_input_tokens,
    output_format_schema,
    plain_prompt_tokens,
    prompt_blocks,
)
from batchpipe.emulator.wire import (
    ApiError,
    Prepared,
    dumps_line,
    invalid,
    json_string,
    new_message_id,
    not_found,
    prepared,
)

__all__ = [
    "EPOCH",
    "MODELS",
    "ModelSpec",
    "PromptCache",
    "Sources",
    "check_model",
    "count_input_tokens",
    "count_tokens_of",
    "respond",
    "validate",
]

NEW_API_VERSION = "2026-10-21"
OUTPUT_300K_BETA = "output-300k-2026-03-24"
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
# The API's answer to forced tool_choice while thinking (research §7.2); the wording is the
# long-standing extended-thinking error, which models that always think share.
FORCED_TOOL_WITH_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
TEXT_BLOCK_KEYS = ("type", "text")


def _check_messages(params: dict[str, Any]) -> None:
    if "messages" not in params:
        raise invalid("messages: Field required")
    messages = params["messages"]
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: List should have at least 1 item after validation, not 0")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{index}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise invalid(f"messages.{index}.content: Field required")


def check_model(params: dict[str, Any]) -> ModelSpec:
    """The requested model's spec; unknown models are a 404 like on the real API."""
    if "model" not in params:
        raise invalid("model: Field required")
    model = params["model"]
    if not isinstance(model, str):
        raise invalid("model: Input should be a valid string")
    if model not in MODELS:
        raise not_found(f"model: {model}")
    return MODELS[model]


def _check_thinking(params: dict[str, Any], spec: ModelSpec) -> None:
    if params.get("thinking") is None:
        return
    thinking = params["thinking"]
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
        raise invalid(
            "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'"
        )
    kind = thinking["type"]
    if spec.adaptive_only and kind in ("enabled", "disabled"):
        raise invalid(
            f'"thinking.type.{kind}" is not supported for this model. '
            'Use "thinking.type.adaptive" and "output_config.effort"'
        )
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise invalid("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= params["max_tokens"]:
            raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`")


def _check_output_config(params: dict[str, Any]) -> None:
    config = params.get("output_config")
    if config is None:
        return
    if not isinstance(config, dict):
        raise invalid("output_config: Input should be a valid dictionary")
    if config.get("effort") is not None and config["effort"] not in EFFORTS:
        raise invalid(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
        )
    output_format = config.get("format")
    if output_format is None:
        return
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        raise invalid("output_config.format.type: Input should be 'json_schema'")
    if not isinstance(output_format.get("schema"), dict):
        raise invalid("output_config.format.schema: Field required")


def _check_extras(params: dict[str, Any], spec: ModelSpec) -> None:
    """Thinking, tools, structured output and stop sequences, in the API's field order."""
    _check_thinking(params, spec)
    tools = params.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    if forced_tool(params) is not None and thinks(params, spec):
        raise invalid(FORCED_TOOL_WITH_THINKING)
    _check_output_config(params)
    stops = params.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(stop, str) for stop in stops)
    ):
        raise invalid("stop_sequences: Input should be a valid list of strings")


def validate(
    params: dict[str, Any], *, api_version: str, betas: Sequence[str], batch: bool
) -> ModelSpec:
    """Raise the ApiError the real API gives for these params, else return the model."""
    if not isinstance(params, dict):
        raise invalid("params: Input should be a valid dictionary")
    spec = check_model(params)
    _check_messages(params)
    if "max_tokens" not in params:
        raise invalid("max_tokens: Field required")
    max_tokens = params["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise invalid("max_tokens: must be greater than or equal to 1")
    if api_version >= NEW_API_VERSION:
        for field in SAMPLING_FIELDS:
            if field in params:
                raise invalid(f"{field}: Extra inputs are not permitted")
    if batch and params.get("stream") is True:
        raise invalid('"stream=True" is not supported in the Message Batches API')
    cap = spec.max_output
    if batch and spec.output_300k and OUTPUT_300K_BETA in betas:
        cap = 300_000
    if max_tokens > cap:
        raise invalid(
            f"max_tokens: {max_tokens} > {cap}, which is the maximum allowed number of "
            f"output tokens for {spec.id}"
        )
    _check_extras(params, spec)
    return spec


def count_tokens_of(
    params: Any,
    *,
    betas: Sequence[str] = (),
    sources: Sources | None = None,
    now: dt.datetime | None = None,
) -> int:
    """`POST /v1/messages/count_tokens`: the input tokens of `params`, or its ApiError
    raised (the model, the messages and their media are checked; max_tokens is not)."""
    if not isinstance(params, dict):
        raise invalid("Input should be a valid dictionary")
    spec = check_model(params)
    if "messages" not in params:
        raise invalid("messages: Field required")
    moment = now or dt.datetime.now(dt.UTC)
    media = inspect_media(params, spec, sources=sources, batch=False, betas=betas, now=moment)
    return count_input_tokens(params, media)


def respond(
    params: dict[str, Any],
    *,
    api_version: str,
    betas: Sequence[str] = (),
    batch: bool,
    seed: int = 0,
    cache: PromptCache | None = None,
    now: dt.datetime | None = None,
    sources: Sources | None = None,
) -> Prepared | ApiError:
    """The Message for `params`, or the ApiError the real API would give for them.

    `cache` None means no prompt caching (all input is `input_tokens`); with a cache,
    calls in order see each other's writes, which is how lines of one batch share a
    prefix. `now` is the emulator's clock, for cache TTLs and file expiry. `sources`
    is where file and URL media are found (media.Sources).
    """
    try:
        spec = validate(params, api_version=api_version, betas=betas, batch=batch)
        plain = plain_prompt_tokens(params) if params.get("cache_control") is None else None
        lines: list[str] = []
        if plain is None:  # only string contents have a plain count, and hold no media
            now = now or dt.datetime.now(dt.UTC)
            media = inspect_media(params, spec, sources=sources, batch=batch, betas=betas, now=now)
            blocks = prompt_blocks(params, media)
            breakpoints = find_breakpoints(params, blocks)
            lines = media.lines(params["messages"]) if media is not None else []
        schema = output_format_schema(params)
        key = None if schema is None else schema_key(schema)  # made once, used twice
        reply = compose(params, spec, seed, key, lines)
    except ApiError as error:
        return error
    if plain is not None:  # no breakpoint: all input is fresh, as input_usage would find
        split = InputUsage(plain + extra_input_tokens(params, key))
    else:
        split = input_usage(
            blocks,
            breakpoints,
            extra_tokens=extra_input_tokens(params, key),
            model=spec.id,
            cache=cache,
            now=now or dt.datetime.now(dt.UTC),
        )
    geo = params.get("inference_geo")
    geo = geo if isinstance(geo, str) and geo else "not_available"
    return _message(spec.id, reply, split, "batch" if batch else "standard", geo)


def _content_text(content: list[dict[str, Any]]) -> str:
    """The content blocks' JSON; a lone text block, the usual reply, from a template."""
    if len(content) == 1:
        block = content[0]
        if tuple(block) == TEXT_BLOCK_KEYS and type(block["text"]) is str:
            return '[{"type":"text","text":' + json_string(block["text"]) + "}]"
    return dumps_line(content)


def _message(model: str, reply: Reply, split: InputUsage, tier: str, geo: str) -> Prepared:
    """The Message, with its line text made from a template (see wire.Prepared): only
    the id, the content and the numbers vary from one request to the next."""
    message_id = new_message_id()
    written = split.write_5m + split.write_1h
    thinking = reply.thinking_tokens
    details = None if thinking is None else {"thinking_tokens": thinking}
    usage = {
        "input_tokens": split.input_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": split.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": split.write_5m,
            "ephemeral_1h_input_tokens": split.write_1h,
        },
        "output_tokens": reply.output_tokens,
        "server_tool_use": None,
        "service_tier": tier,
        "inference_geo": geo,
        "output_tokens_details": details,
        "speed": None,
    }
    stop = reply.stop_sequence
    text = (
        f'{{"id":{json_string(message_id)},"type":"message","role":"assistant",'
        f'"model":{json_string(model)},"content":{_content_text(reply.content)},'
        f'"stop_reason":{json_string(reply.stop_reason)},'
        f'"stop_sequence":{"null" if stop is None else json_string(stop)},'
        f'"stop_details":null,"container":null,"diagnostics":null,"usage":'
        f'{{"input_tokens":{split.input_tokens:d},"cache_creation_input_tokens":{written:d},'
        f'"cache_read_input_tokens":{split.cache_read:d},"cache_creation":'
        f'{{"ephemeral_5m_input_tokens":{split.write_5m:d},'
        f'"ephemeral_1h_input_tokens":{split.write_1h:d}}},'
        f'"output_tokens":{reply.output_tokens:d},"server_tool_use":null,'
        f'"service_tier":{json_string(tier)},"inference_geo":{json_string(geo)},'
        f'"output_tokens_details":'
        f'{"null" if thinking is None else f"""{{"thinking_tokens":{thinking:d}}}"""},'
        f'"speed":null}}}}'
    )
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": stop,
        "stop_details": None,
        "container": None,
        "diagnostics": None,
        "usage": usage,
    }
    return prepared(message, text)
