"""The Claude models batchpipe knows: prices, limits, and the options each one refuses.

The facts live in prices.yaml beside this module, one block per model naming the page it
was read from, so a new price or a new model is a data edit an analyst can review. This
module loads and checks that table and answers "would the API refuse this request?" before
anything is sent: in a batch such a request is not refused at create time but comes back a
day later as an errored row (research §5), so it pays to find out here. Money is
pricing.py's job.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

# The request options a model can refuse. A Literal, so a typo in prices.yaml fails loudly.
Refusal = Literal["forced_tool_choice", "manual_thinking", "thinking_disabled", "sampling_params"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Frozen):
    """USD per million tokens at the standard (synchronous) price."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float


class Tier(Price):
    """Prices that replace the base ones for a whole request, output included, once its
    prompt (input plus cache reads and writes) is above `above_prompt_tokens`."""

    above_prompt_tokens: int


class ModelInfo(_Frozen):
    """One served model: what it costs and what the API lets a request ask of it."""

    id: str
    prices: Price
    tiers: tuple[Tier, ...] = ()
    context_window: int
    max_output: int
    max_output_batch_beta: int | None = None
    always_thinks: bool = False
    refuses: frozenset[Refusal] = frozenset()
    aliases: tuple[str, ...] = ()
    retires: dt.date | None = None
    source: str
    read: dt.date


class Retired(_Frozen):
    """A model the SDK still names but the API no longer serves."""

    retired_on: dt.date
    successor: str
    source: str
    read: dt.date


class Catalog(_Frozen):
    """The whole of prices.yaml."""

    batch_discount: float
    output_300k_beta: str
    inference_geo: dict[str, float]
    models: dict[str, ModelInfo]
    retired: dict[str, Retired] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        """The YAML writes each model's five prices flat, for reading; nest them here."""
        models = {}
        for model_id, entry in (data.get("models") or {}).items():
            entry = dict(entry)
            prices = {name: entry.pop(name) for name in Price.model_fields if name in entry}
            models[model_id] = {"id": model_id, "prices": prices, **entry}
        return {**data, "models": models}

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        """Rules a hand edit could break without any single field looking wrong."""
        seen: set[str] = set(self.models) | set(self.retired)
        for info in self.models.values():
            for alias in info.aliases:
                if alias in seen:
                    raise ValueError(f"{alias} is named twice")
                seen.add(alias)
            if info.always_thinks and "thinking_disabled" not in info.refuses:
                raise ValueError(f"{info.id} always thinks, so it must refuse thinking_disabled")
            if (info.max_output_batch_beta or info.max_output) < info.max_output:
                raise ValueError(f"{info.id}: max_output_batch_beta is below max_output")
            bounds = [tier.above_prompt_tokens for tier in info.tiers]
            if bounds != sorted(set(bounds)):
                raise ValueError(f"{info.id}: tiers must rise by above_prompt_tokens")
        for old in self.retired.values():
            if old.successor not in self.models:
                raise ValueError(f"successor {old.successor} is not a served model")
        return self

    @property
    def aliases(self) -> dict[str, str]:
        """Alias -> model id, for callers of the old flat price list."""
        return {alias: info.id for info in self.models.values() for alias in info.aliases}


@cache
def catalog() -> Catalog:
    """prices.yaml, parsed and checked once per process."""
    text = resources.files("batchpipe").joinpath("prices.yaml").read_text(encoding="utf-8")
    return Catalog.model_validate(yaml.safe_load(text))


def model(model_id: str) -> ModelInfo:
    """The model an id or alias names, or a ValueError that says what to use instead."""
    table = catalog()
    found = table.models.get(table.aliases.get(model_id, model_id))
    if found is not None:
        return found
    known = ", ".join(sorted(table.models))
    old = table.retired.get(model_id)
    if old is not None:
        raise ValueError(
            f"model {model_id!r} was retired on {old.retired_on}; its successor is "
            f"{old.successor!r}. known models: {known}"
        )
    close = difflib.get_close_matches(model_id, [*table.models, *table.aliases], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown model {model_id!r}; {hint}known models: {known}")


def max_tokens_cap(model_id: str, betas: Sequence[str] = ()) -> int:
    """The largest max_tokens the API accepts for this model in a batch with these betas."""
    info = model(model_id)
    if info.max_output_batch_beta and catalog().output_300k_beta in betas:
        return info.max_output_batch_beta
    return info.max_output


def check_request(
    model_id: str,
    *,
    max_tokens: int,
    betas: Sequence[str] = (),
    thinking: Mapping[str, Any] | str | None = None,
    forced_tool: bool = False,
    sampling: bool = False,
) -> list[str]:
    """What the API would refuse in this request, one sentence each; empty when it is fine.

    `thinking` is the request's thinking object (or just its type); `forced_tool` means
    tool_choice {type: any | tool}; `sampling` means temperature, top_p or top_k at a
    non-default value. Checked against the model alone: API version 2026-10-21 removes the
    sampling parameters for every model, which config.py refuses on its own.
    """
    try:
        info = model(model_id)
    except ValueError as err:
        return [str(err)]
    problems: list[str] = []
    cap = max_tokens_cap(model_id, betas)
    beta = catalog().output_300k_beta
    if max_tokens < 1:
        problems.append("max_tokens must be at least 1")
    elif max_tokens > cap:
        more = ""
        if info.max_output_batch_beta and beta not in betas:
            more = f"; the {beta} beta raises it to {info.max_output_batch_beta:,} in batches"
        problems.append(f"max_tokens {max_tokens:,} is over {info.id}'s cap of {cap:,}{more}")

    kind = thinking.get("type") if isinstance(thinking, Mapping) else thinking
    if kind == "enabled" and "manual_thinking" in info.refuses:
        problems.append(
            f"{info.id} refuses thinking {{type: enabled}} with a token budget; "
            "use {type: adaptive} and effort"
        )
    elif kind == "enabled" and isinstance(thinking, Mapping):
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget >= max_tokens:
            problems.append(f"thinking.budget_tokens {budget:,} must be below max_tokens")
    if kind == "disabled" and "thinking_disabled" in info.refuses:
        why = " always thinks and" if info.always_thinks else ""
        problems.append(f"{info.id}{why} refuses thinking {{type: disabled}}; lower effort instead")

    if forced_tool and "forced_tool_choice" in info.refuses:
        why = " because its thinking is always on" if info.always_thinks else ""
        problems.append(
            f"{info.id} refuses a forced tool choice (tool_choice any or tool){why}; "
            "use structured output (output_config.format) for JSON"
        )
    elif forced_tool and kind in ("enabled", "adaptive"):
        problems.append(
            "a forced tool choice (tool_choice any or tool) cannot be used with thinking"
        )

    if sampling and "sampling_params" in info.refuses:
        problems.append(f"{info.id} refuses non-default temperature, top_p or top_k")
    return problems
