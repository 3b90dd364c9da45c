"""Prompt caching as the API bills it: breakpoints, prefix hashes, TTLs, the usage split.

A pipeline's cost report depends on `cache_creation_input_tokens` (5m/1h) and
`cache_read_input_tokens`, so the emulator reproduces the rules that decide them
(research §7.1): a breakpoint is a block with `cache_control` (or the last cacheable
block, for the top-level `cache_control`); the prefix up to it is written on first sight
and read while its TTL lasts; prefixes under a minimum length are never cached; at most
4 breakpoints; 1h breakpoints must precede 5m ones. The store is a `PromptCache` shared
by every request of an emulator, so lines of one batch hit what earlier lines wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from batchpipe.emulator.tokens import PromptBlock
from batchpipe.emulator.wire import invalid

TTL_SECONDS = {"5m": 300, "1h": 3600}
MAX_BREAKPOINTS = 4
LOOKBACK = 20  # blocks before a breakpoint the API checks for an earlier cached prefix
DEFAULT_MIN_TOKENS = 1024  # per-model minimums differ (research §7.1); configurable here


class PromptCache:
    """Prefix hash -> expiry, shared across requests; thread-safe; optionally on disk.

    Persisting lets a restarted emulator keep its warm cache, like the real API does
    across a client restart. Every change is written at once (atomically), because the
    entries are few: one per distinct prefix, not one per request.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        min_tokens_by_model: Mapping[str, int] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.min_tokens = min_tokens
        self.min_tokens_by_model = dict(min_tokens_by_model or {})
        self._lock = threading.RLock()  # lookup_or_write holds it across lookup
        self._entries: dict[str, dict[str, float]] = self._load()

    def _load(self) -> dict[str, dict[str, float]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = None
        if not isinstance(entries, dict):
            return {}  # a damaged cache file is a cold cache, as a lost real cache would be
        return {
            key: {"ttl_seconds": 300.0, "tokens": 0, **value}
            for key, value in entries.items()
            if isinstance(value, dict) and isinstance(value.get("expires_at"), int | float)
        }

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"version": 1, "entries": self._entries}))
        os.replace(temporary, self.path)

    def min_tokens_for(self, model: str) -> int:
        """The shortest prefix `model` caches; shorter breakpoints are silently ignored."""
        return self.min_tokens_by_model.get(model, self.min_tokens)

    def lookup(self, prefix_hash: str, now: dt.datetime) -> bool:
        """Whether the prefix is cached and unexpired at `now`; a hit refreshes its TTL,
        as reading a cache entry does on the API. Never writes a new entry."""
        moment = now.timestamp()
        with self._lock:
            entry = self._entries.get(prefix_hash)
            if entry is None or entry["expires_at"] <= moment:
                return False
            entry["expires_at"] = max(entry["expires_at"], moment + entry["ttl_seconds"])
            self._save()
            return True

    def lookup_or_write(
        self, prefix_hash: str, tokens: int, ttl_seconds: float, now: dt.datetime
    ) -> Literal["read", "write"]:
        """Return "read" if the prefix is cached and unexpired at `now` (refreshing its
        TTL), else "write": the prefix is then cached from `now` for `ttl_seconds`."""
        moment = now.timestamp()
        with self._lock:
            if self.lookup(prefix_hash, now):
                return "read"
            self._entries = {k: v for k, v in self._entries.items() if v["expires_at"] > moment}
            self._entries[prefix_hash] = {
                "expires_at": moment + ttl_seconds,
                "ttl_seconds": ttl_seconds,
                "tokens": tokens,
            }
            self._save()
        return "write"

    def clear(self) -> None:
        """Forget every entry (and the file), for an emulator reset."""
        with self._lock:
            self._entries = {}
            if self.path is not None:
                self.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True)
class Breakpoint:
    index: int  # position in the request's prompt blocks
    ttl: str  # "5m" or "1h"


class InputUsage(NamedTuple):
    """How a request's input tokens split between fresh, written and read. A NamedTuple
    (made once per request): a frozen dataclass costs four times as much to make."""

    input_tokens: int
    cache_read: int = 0
    write_5m: int = 0
    write_1h: int = 0


def _ttl(control: Any, where: str) -> str:
    """The breakpoint's TTL; `where` is the owning block's path plus a dot, or ""."""
    if not isinstance(control, dict):
        raise invalid(f"{where}cache_control: Input should be a valid dictionary")
    if control.get("type") != "ephemeral":
        raise invalid(f"{where}cache_control.type: Input should be 'ephemeral'")
    ttl = control.get("ttl") or "5m"
    if ttl not in TTL_SECONDS:
        raise invalid(f"{where}cache_control.ttl: Input should be '5m' or '1h'")
    return ttl


def find_breakpoints(params: dict[str, Any], blocks: Sequence[PromptBlock]) -> list[Breakpoint]:
    """The request's breakpoints in cache order, or the ApiError the API gives for them."""
    marks = [
        Breakpoint(index, _ttl(block.cache_control, f"{block.location}."))
        for index, block in enumerate(blocks)
        if block.cache_control is not None
    ]
    automatic = params.get("cache_control")
    if automatic is not None:
        ttl = _ttl(automatic, "")
        last = max((i for i, block in enumerate(blocks) if block.cacheable), default=None)
        if last is not None and all(mark.index != last for mark in marks):
            marks.append(Breakpoint(last, ttl))
    if len(marks) > MAX_BREAKPOINTS:
        raise invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}."
        )
    seen_short = False
    for mark in marks:
        if mark.ttl == "5m":
            seen_short = True
        elif seen_short:
            raise invalid(
                f"{blocks[mark.index].location}.cache_control.ttl: a ttl='1h' cache_control "
                "block must not come after a ttl='5m' cache_control block. Note that blocks "
                "are processed in the following order: `tools`, `system`, `messages`."
            )
    return marks


def _prefix_hashes(model: str, blocks: Sequence[PromptBlock]) -> list[str]:
    """hash(model, blocks[:i+1]) for every i: caches are per model and per exact prefix."""
    running = hashlib.sha256(model.encode())
    hashes = []
    for block in blocks:
        running.update(b"\x1e" + block.identity.encode())
        hashes.append(running.copy().hexdigest())
    return hashes


def input_usage(
    blocks: Sequence[PromptBlock],
    marks: Sequence[Breakpoint],
    *,
    extra_tokens: int,
    model: str,
    cache: PromptCache | None,
    now: dt.datetime,
) -> InputUsage:
    """Split the input: the longest live cached prefix is read, the rest up to the last
    breakpoint is written (each segment at its breakpoint's TTL), the tail is fresh."""
    total = sum(block.tokens for block in blocks) + extra_tokens
    if cache is None or not marks:
        return InputUsage(total)
    cumulative: list[int] = []
    running = 0
    for block in blocks:
        running += block.tokens
        cumulative.append(running)
    minimum = cache.min_tokens_for(model)
    live = [mark for mark in marks if cumulative[mark.index] >= minimum]
    if not live:
        return InputUsage(total)
    hashes = _prefix_hashes(model, blocks)
    read_at = _longest_hit(cache, hashes, live, now)
    read = cumulative[read_at] if read_at >= 0 else 0
    written = {"5m": 0, "1h": 0}
    previous = read
    for mark in live:
        if mark.index <= read_at:
            continue
        tokens = cumulative[mark.index]
        cache.lookup_or_write(hashes[mark.index], tokens, TTL_SECONDS[mark.ttl], now)
        written[mark.ttl] += tokens - previous
        previous = tokens
    return InputUsage(total - cumulative[live[-1].index], read, written["5m"], written["1h"])


def _longest_hit(
    cache: PromptCache, hashes: Sequence[str], marks: Sequence[Breakpoint], now: dt.datetime
) -> int:
    """The last block whose prefix is cached, looking back up to LOOKBACK blocks from each
    breakpoint as the API does, so a breakpoint that moved forward as a conversation grew
    still reads the prefix the previous turn wrote. -1 when nothing is cached."""
    for mark in reversed(marks):
        for index in range(mark.index, max(-1, mark.index - LOOKBACK), -1):
            if cache.lookup(hashes[index], now):
                return index
    return -1
