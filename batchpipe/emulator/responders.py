"""The deterministic "model": Messages params in, a Message dict or an ApiError out.

The reply visibly derives from the prompt (`Emulated reply to: <last user text>`) so a
pipeline test can check that each output row got the answer to its own input. Token
counts are a fixed function of the text, so cost assertions are exact. Validation follows
the real API's deferred checks and error strings (research §3, §5), because the pipeline
must handle those errored lines the way it would in production.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchpipe.emulator.wire import ApiError, invalid, new_message_id, not_found

NEW_API_VERSION = "2026-10-21"
OUTPUT_300K_BETA = "output-300k-2026-03-24"
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
EPOCH = "1970-01-01T00:00:00Z"  # what /v1/models uses when a release date is unknown


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    created_at: str
    max_output: int = 128_000
    output_300k: bool = False  # 300k max_tokens in batches with the beta (research §5)


def _spec(model_id: str, created: str = EPOCH, **kwargs: Any) -> ModelSpec:
    words = model_id.removeprefix("claude-").split("-")
    family = words[0].capitalize()
    version = ".".join(word for word in words[1:] if word.isdigit() and len(word) < 8)
    rest = " ".join(word.capitalize() for word in words[1:] if not word.isdigit())
    name = " ".join(part for part in ("Claude", family, version, rest) if part)
    return ModelSpec(model_id, name, created, **kwargs)


# The SDK's Model literal (research §7.4); dated ids are aliases of the same model.
MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in [
        _spec("claude-fable-5-2", "2026-11-09T00:00:00Z"),
        _spec("claude-mythos-5-2"),
        _spec("claude-haiku-5-5", "2026-10-07T00:00:00Z"),
        _spec("claude-sonnet-5-5"),
        _spec("claude-opus-5-5", "2026-09-22T00:00:00Z", output_300k=True),
        _spec("claude-fable-5-1"),
        _spec("claude-mythos-5-1"),
        _spec("claude-sonnet-5", output_300k=True),
        _spec("claude-fable-5"),
        _spec("claude-mythos-5"),
        _spec("claude-opus-5", output_300k=True),
        _spec("claude-opus-4-8", output_300k=True),
        _spec("claude-opus-4-7", output_300k=True),
        _spec("claude-mythos-preview"),
        _spec("claude-opus-4-6", output_300k=True),
        _spec("claude-sonnet-4-6", output_300k=True),
        _spec("claude-haiku-4-5", "2025-10-01T00:00:00Z", max_output=64_000),
        _spec("claude-haiku-4-5-20251001", "2025-10-01T00:00:00Z", max_output=64_000),
        _spec("claude-opus-4-5", "2025-11-01T00:00:00Z"),
        _spec("claude-opus-4-5-20251101", "2025-11-01T00:00:00Z"),
        _spec("claude-sonnet-4-5", "2025-09-29T00:00:00Z"),
        _spec("claude-sonnet-4-5-20250929", "2025-09-29T00:00:00Z"),
    ]
}


def _text_of(content: Any) -> str:
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


def count_input_tokens(params: dict[str, Any]) -> int:
    """ceil(characters of system + all messages / 4) + 3 per message."""
    messages = params.get("messages") or []
    chars = len(_text_of(params.get("system")))
    chars += sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    return math.ceil(chars / 4) + 3 * len(messages)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


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
    return spec


def respond(
    params: dict[str, Any], *, api_version: str, betas: Sequence[str] = (), batch: bool
) -> dict[str, Any] | ApiError:
    """The Message for `params`, or the ApiError the real API would give for them."""
    try:
        spec = validate(params, api_version=api_version, betas=betas, batch=batch)
    except ApiError as error:
        return error
    limit = params["max_tokens"] * 4
    text = f"Emulated reply to: {_last_user_text(params['messages'])}"
    truncated = len(text) > limit
    text = text[:limit]
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": spec.id,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "stop_details": None,
        "container": None,
        "diagnostics": None,
        "usage": {
            "input_tokens": count_input_tokens(params),
            "output_tokens": max(1, math.ceil(len(text) / 4)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "server_tool_use": None,
            "service_tier": "batch" if batch else "standard",
            "inference_geo": "not_available",
            "output_tokens_details": None,
            "speed": None,
        },
    }
