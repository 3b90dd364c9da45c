"""The models the emulator serves: the SDK's `Model` literal with each model's limits.

Flags carry the per-model behaviours that change replies or errors, so the responder
never tests model ids by name: output caps (research §5), always-on thinking (research
§7.2: thinking blocks first, forced tools rejected) and adaptive-only thinking config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EPOCH = "1970-01-01T00:00:00Z"  # what /v1/models uses when a release date is unknown


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    created_at: str
    max_output: int = 128_000
    output_300k: bool = False  # 300k max_tokens in batches with the beta (research §5)
    always_thinks: bool = False  # thinking blocks on every reply; forced tools rejected
    adaptive_only: bool = False  # thinking.type enabled/disabled rejected (research §3)


def _spec(model_id: str, created: str = EPOCH, **kwargs: Any) -> ModelSpec:
    words = model_id.removeprefix("claude-").split("-")
    family = words[0].capitalize()
    version = ".".join(word for word in words[1:] if word.isdigit() and len(word) < 8)
    rest = " ".join(word.capitalize() for word in words[1:] if not word.isdigit())
    name = " ".join(part for part in ("Claude", family, version, rest) if part)
    return ModelSpec(model_id, name, created, **kwargs)


# The SDK's Model literal (research §7.4, unchanged in SDK 2.14); dated ids are aliases.
MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in [
        _spec("claude-fable-5-2", "2026-11-09T00:00:00Z"),
        _spec("claude-mythos-5-2"),
        _spec("claude-haiku-5-5", "2026-10-07T00:00:00Z"),
        _spec("claude-sonnet-5-5", always_thinks=True),
        _spec(
            "claude-opus-5-5",
            "2026-09-22T00:00:00Z",
            output_300k=True,
            always_thinks=True,
            adaptive_only=True,
        ),
        _spec("claude-fable-5-1", always_thinks=True),
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
