"""What the emulator billed: one line per succeeded batch request, priced at batch rates.

Money is the thing a pipeline must never get wrong (pay twice, or lose a paid result), so
tests compare the pipeline's own cost accounting against this independent record: its
prices come from the emulator's own table (catalog.py) and its own arithmetic (`cost_usd`
below), not from batchpipe's. Only
succeeded lines are billed; errored, canceled and expired ones cost nothing (research §3).
Each (batch_id, custom_id) is billed at most once, whatever crashes or repeated
processing happen, because `bill` skips pairs already in the file.

The file is append-only JSONL. A crash can leave a torn last line; it is cut off on load,
and the pair it was about is billed again by the next `bill` for its batch.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from batchpipe.emulator import catalog
from batchpipe.emulator.wire import (
    append_lines,
    dumps_line,
    json_string,
    load_jsonl,
    prepared,
)

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_SPLIT_FIELDS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
ROW_FIELDS = (*TOKEN_FIELDS, *_SPLIT_FIELDS)  # a ledger line's counts, in line order
_STR, _INT = {str}, {int}
USD_DIGITS = 12  # round away float noise so totals compare equal across summation orders


def billed_tokens(usage: Mapping[str, Any]) -> dict[str, int]:
    """The five billed token counts of a usage record, as the Messages API reports it.

    Cache writes come as a total (`cache_creation_input_tokens`) and, when the API splits
    them, as `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`
    (nested, or flat at the top level). Without a split every write is a 5-minute one,
    the default TTL.
    """
    split = usage.get("cache_creation") or {}

    def count(key: str) -> int | None:
        value = split.get(key, usage.get(key))
        return None if value is None else int(value)

    write_1h = count("ephemeral_1h_input_tokens") or 0
    write_5m = count("ephemeral_5m_input_tokens")
    if write_5m is None:
        write_5m = max(int(usage.get("cache_creation_input_tokens") or 0) - write_1h, 0)
    return {
        "input": int(usage.get("input_tokens") or 0),
        "cache_write_5m": write_5m,
        "cache_write_1h": write_1h,
        "cache_read": int(usage.get("cache_read_input_tokens") or 0),
        "output": int(usage.get("output_tokens") or 0),
    }


def cost_usd(model: str, usage: Mapping[str, Any], *, batch: bool = True) -> float | None:
    """USD for one request's usage: the price its prompt size picks (catalog.price_for),
    each token category at its own price, then the batch discount. None for a model the
    catalog does not price (retired or unknown)."""
    tokens = billed_tokens(usage)
    price = catalog.price_for(model, sum(n for name, n in tokens.items() if name != "output"))
    if price is None:
        return None
    standard = sum(n * getattr(price, name) for name, n in tokens.items()) / 1e6
    return standard * (catalog.BATCH_DISCOUNT if batch else 1.0)


def line_cost(model: str, usage: dict[str, Any]) -> float:
    """USD for one request's usage at batch prices; 0 for a model the catalog does not
    price."""
    usd = cost_usd(model, usage, batch=True)
    return 0.0 if usd is None else round(usd, USD_DIGITS)


@functools.lru_cache(maxsize=4096)
def _usage_cost(model: str, counts: tuple[Any, ...]) -> float:
    """line_cost of a usage record made of `counts` (see _cost_key). Lines of a batch
    mostly share their usage numbers, so each distinct set is priced once."""
    usage = dict(zip(TOKEN_FIELDS, counts[:4], strict=True))
    usage["cache_creation"] = dict(zip(_SPLIT_FIELDS, counts[4:], strict=True))
    return line_cost(model, usage)


def _cost_key(usage: dict[str, Any], split: dict[str, Any]) -> tuple[Any, ...]:
    """Every value cost_usd reads from a usage record, where it reads it."""
    get = usage.get
    return (
        get("input_tokens"),
        get("output_tokens"),
        get("cache_creation_input_tokens"),
        get("cache_read_input_tokens"),
        split.get("ephemeral_5m_input_tokens", get("ephemeral_5m_input_tokens")),
        split.get("ephemeral_1h_input_tokens", get("ephemeral_1h_input_tokens")),
    )


class Bill(NamedTuple):
    """One ledger line, serialized once where it is made (maybe in a forked child)."""

    batch_id: str
    custom_id: str
    text: str  # the compact JSON line, without its newline


def entry(batch_id: str, custom_id: str, message: dict[str, Any], billed_at: str) -> dict:
    """The ledger line for one succeeded result's message; Prepared (see wire.Prepared)
    when it holds what a Message holds, so writing it costs a template's filling."""
    usage = message.get("usage") or {}
    split = usage.get("cache_creation") or {}
    model = message["model"]
    counts = _cost_key(usage, split)
    row: dict[str, Any] = {
        "batch_id": batch_id,
        "custom_id": custom_id,
        "model": model,
        "input_tokens": usage.get("input_tokens") or 0,
        "output_tokens": usage.get("output_tokens") or 0,
        "cache_creation_input_tokens": usage.get("cache_creation_input_tokens") or 0,
        "cache_read_input_tokens": usage.get("cache_read_input_tokens") or 0,
        "ephemeral_5m_input_tokens": split.get("ephemeral_5m_input_tokens") or 0,
        "ephemeral_1h_input_tokens": split.get("ephemeral_1h_input_tokens") or 0,
        "usd": _usage_cost(model, counts),
        "billed_at": billed_at,
    }
    tokens = tuple(row.values())[3:9]
    if {type(model), type(batch_id), type(custom_id), type(billed_at)} != _STR or {
        *map(type, tokens)
    } != _INT:
        return row  # not what a Message holds: encoded key by key when written
    return prepared(row, _row_text(batch_id, custom_id, _priced(model, tokens, counts), billed_at))


def _row_text(batch_id: str, custom_id: str, priced: str, billed_at: str) -> str:
    """A ledger line's JSON from a template: of its 11 values, 8 come with `priced`."""
    return (
        f'{{"batch_id":{json_string(batch_id)},"custom_id":{json_string(custom_id)},'
        f'{priced},"billed_at":{json_string(billed_at)}}}'
    )


@functools.lru_cache(maxsize=4096)
def _priced(model: str, tokens: tuple[int, ...], counts: tuple[Any, ...]) -> str:
    """The ledger line's JSON from "model" to "usd", which lines of a batch mostly share.
    Keyed on exact ints only (1, 1.0 and True are one key, but print differently), and
    on `counts`, which decides the price (`usd` then depends on nothing else)."""
    row = {"model": model, **dict(zip(ROW_FIELDS, tokens, strict=True))}
    row["usd"] = _usage_cost(model, counts)
    return dumps_line(row)[1:-1]


def bill_for(batch_id: str, custom_id: str, message: dict[str, Any], billed_at: str) -> Bill:
    """`entry`, serialized for `Ledger.bill`."""
    return Bill(batch_id, custom_id, dumps_line(entry(batch_id, custom_id, message, billed_at)))


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"requests_billed": len(rows)}
    totals |= {name: sum(row.get(name, 0) for row in rows) for name in TOKEN_FIELDS}
    totals["usd"] = round(sum(row.get("usd", 0.0) for row in rows), USD_DIGITS)
    return totals


class Ledger:
    """The billed lines in memory as their JSON text (a million parsed rows would take
    gigabytes), appended through to `path` (fsynced) on every bill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lines: list[tuple[str, str]] = []  # (batch_id, line text)
        self._billed: set[tuple[str, str]] = set()
        self._summed, self._usd = 0, 0.0  # lines added into _usd so far, and their total
        self.credit_usd: float | None = None  # the emulated credit balance (not persisted)
        self._load()

    def _load(self) -> None:
        for row in load_jsonl(self.path):
            if "usd" not in row:  # lines from older versions
                row["usd"] = line_cost(row["model"], row)
            self._lines.append((row["batch_id"], dumps_line(row)))
            self._billed.add((row["batch_id"], row["custom_id"]))

    def bill(self, bills: Iterable[Bill]) -> int:
        """Append the lines whose (batch_id, custom_id) was never billed; how many were."""
        with self._lock:
            new, keys = [], set()
            for bill in bills:
                key = (bill.batch_id, bill.custom_id)
                if key not in self._billed and key not in keys:
                    keys.add(key)
                    new.append(bill)
            append_lines(self.path, [bill.text for bill in new])
            self._billed |= keys
            self._lines.extend((bill.batch_id, bill.text) for bill in new)
            return len(new)

    def unbilled(self, batch_id: str, custom_ids: Iterable[str]) -> set[str]:
        """Those of `custom_ids` not billed yet in this batch (their entries need making)."""
        with self._lock:
            return {cid for cid in custom_ids if (batch_id, cid) not in self._billed}

    def billed_usd(self) -> float:
        """The total billed so far, as `report` gives it. Lines are parsed once, when
        first asked for, so billing itself pays nothing when no account limit is set."""
        with self._lock:
            for _, text in self._lines[self._summed :]:
                self._usd += json.loads(text).get("usd", 0.0)
            self._summed = len(self._lines)
            return round(self._usd, USD_DIGITS)

    def credit_left(self) -> float | None:
        """USD left of `credit_usd` (<= 0 once it is spent), or None without a credit."""
        credit = self.credit_usd
        return None if credit is None else credit - self.billed_usd()

    def reset(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)
            self._lines.clear()
            self._billed.clear()
            self._summed, self._usd = 0, 0.0

    def report(self, batch_id: str | None = None) -> dict[str, Any]:
        """`GET /_emulator/ledger`: totals, totals by model, and every billed line."""
        with self._lock:
            lines = [text for owner, text in self._lines if batch_id in (None, owner)]
        rows = [json.loads(text) for text in lines]
        models = sorted({row["model"] for row in rows})
        by_model = {m: _totals([row for row in rows if row["model"] == m]) for m in models}
        return _totals(rows) | {"by_model": by_model, "data": rows}
