"""The models the emulator serves: the SDK's `Model` literal with each model's limits.

Flags carry the per-model behaviours that change replies or errors, so the responder
never tests model ids by name: output caps (research §5), always-on thinking (research
§7.2: thinking blocks first, forced tools rejected), adaptive-only thinking config and
the context window (which sets how many images and PDF pages a request may carry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchpipe.emulator import catalog

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
    context_window: int = 200_000  # >= 1M also allows 600 images / PDF pages, not 100


def _spec(model_id: str, created: str = EPOCH, **kwargs: Any) -> ModelSpec:
    words = model_id.removeprefix("claude-").split("-")
    family = words[0].capitalize()
    version = ".".join(word for word in words[1:] if word.isdigit() and len(word) < 8)
    rest = " ".join(word.capitalize() for word in words[1:] if not word.isdigit())
    name = " ".join(part for part in ("Claude", family, version, rest) if part)
    return ModelSpec(model_id, name, created, **kwargs)


def _limits(model_id: str) -> dict[str, Any]:
    """Caps and thinking behaviour from the emulator's own model table (catalog.py, held
    to batchpipe's prices.yaml by a test), so `batchpipe validate` and the emulator refuse
    the same things. A retired model keeps the emulator's defaults."""
    entry = catalog.find(model_id)
    if entry is None:
        return {}
    return {
        "max_output": entry.max_output,
        "output_300k": entry.output_300k,
        "always_thinks": entry.always_thinks,
        "adaptive_only": entry.adaptive_only,
        "context_window": entry.context_window,
    }


# The SDK's Model literal (research §7.4, unchanged in SDK 2.14); dated ids are aliases.
_RELEASED = {
    "claude-fable-5-2": "2026-11-09T00:00:00Z",
    "claude-haiku-5-5": "2026-10-07T00:00:00Z",
    "claude-opus-5-5": "2026-09-22T00:00:00Z",
    "claude-haiku-4-5": "2025-10-01T00:00:00Z",
    "claude-haiku-4-5-20251001": "2025-10-01T00:00:00Z",
    "claude-opus-4-5": "2025-11-01T00:00:00Z",
    "claude-opus-4-5-20251101": "2025-11-01T00:00:00Z",
    "claude-sonnet-4-5": "2025-09-29T00:00:00Z",
    "claude-sonnet-4-5-20250929": "2025-09-29T00:00:00Z",
}
_IDS = (
    "claude-fable-5-2", "claude-mythos-5-2", "claude-haiku-5-5", "claude-sonnet-5-5",
    "claude-opus-5-5", "claude-fable-5-1", "claude-mythos-5-1", "claude-sonnet-5",
    "claude-fable-5", "claude-mythos-5", "claude-opus-5", "claude-opus-4-8", "claude-opus-4-7",
    "claude-mythos-preview", "claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5",
    "claude-haiku-4-5-20251001", "claude-opus-4-5", "claude-opus-4-5-20251101",
    "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
)  # fmt: skip
MODELS: dict[str, ModelSpec] = {
    model_id: _spec(model_id, _RELEASED.get(model_id, EPOCH), **_limits(model_id))
    for model_id in _IDS
}
