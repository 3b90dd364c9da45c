"""What the emulator billed: one line per succeeded batch request, priced at batch rates.

Money is the thing a pipeline must never get wrong (pay twice, or lose a paid result), so
tests compare the pipeline's own cost accounting against this independent record: its
prices come from the emulator's own table (catalog.py) and its own arithmetic (`cost_usd`
below), not from batchpipe's. Only
succeeded lines are billed; errored, canceled and expired ones cost nothing (research §3).
Each (batch_id, custom_id) is billed at most once, whatever crashes or repeated
processing happen, because `bill` skips pairs already in the file (a batch bills only
until it ends, so only the batches still open are looked up).

The file is append-only JSONL. A crash can leave a torn last line; it is cut off on load,
and the pair it was about is billed again by the next `bill` for its batch.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from batchpipe.emulator import catalog
from batchpipe.emulator.wire import (
    append_lines,
    cut_torn_tail,
    dumps_line,
    json_string,
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
COPY_BUFFER = 1 << 20


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


# The two memos by what they are: fastpath.Lines fills a ledger line straight from them.
priced, usage_cost = _priced, _usage_cost


def bill_for(batch_id: str, custom_id: str, message: dict[str, Any], billed_at: str) -> Bill:
    """`entry`, serialized for `Ledger.bill`."""
    return Bill(batch_id, custom_id, dumps_line(entry(batch_id, custom_id, message, billed_at)))


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"requests_billed": len(rows)}
    totals |= {name: sum(row.get(name, 0) for row in rows) for name in TOKEN_FIELDS}
    totals["usd"] = round(sum(row.get("usd", 0.0) for row in rows), USD_DIGITS)
    return totals


class Ledger:
    """The billed lines, appended through to `path` (fsynced) on every bill and read back
    from it when asked for: ten million lines would not fit in memory, parsed or not.
    What is kept is which lines of the batches still being processed are billed (an
    ended batch bills nothing more), so a line is never billed twice."""

    def __init__(self, path: Path, open_batches: Collection[str] | None = None) -> None:
        """`open_batches`: the batches not ended yet, whose billed lines matter; None
        (a ledger used on its own) keeps track of every batch's."""
        self.path = path
        self._lock = threading.Lock()
        # batch id -> custom_ids billed; None: some were billed from part files, so
        # read them back from the file if asked (see append_parts)
        self._billed: dict[str, set[str] | None] = {}
        self._summed, self._usd = 0, 0.0  # bytes of the file added into _usd, their total
        self.credit_usd: float | None = None  # the emulated credit balance (not persisted)
        cut_torn_tail(self.path)
        for batch_id, text in self._lines(open_batches):
            self._billed.setdefault(batch_id, set()).add(json.loads(text)["custom_id"])  # type: ignore[union-attr]

    def _lines(self, batches: Collection[str] | None = None) -> Iterator[tuple[str, str]]:
        """(batch id, text) of the file's lines, of `batches` only unless None."""
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            for raw in handle:
                text = raw.decode("utf-8").removesuffix("\n")
                batch_id = _batch_of(text)
                if batches is None or batch_id in batches:
                    yield batch_id, text

    def _seen(self, batch_id: str) -> set[str]:
        """The custom_ids billed in this batch, read back from the file if need be."""
        seen = self._billed.get(batch_id, set())
        if seen is None:
            seen = {json.loads(text)["custom_id"] for _, text in self._lines({batch_id})}
        self._billed[batch_id] = seen
        return seen

    def bill(self, bills: Iterable[Bill]) -> int:
        """Append the lines whose (batch_id, custom_id) was never billed; how many were."""
        with self._lock:
            new, keys = [], set()
            for bill in bills:
                key = (bill.batch_id, bill.custom_id)
                if key not in keys and bill.custom_id not in self._seen(bill.batch_id):
                    keys.add(key)
                    new.append(bill)
            append_lines(self.path, [bill.text for bill in new])
            for batch_id, custom_id in keys:
                self._seen(batch_id).add(custom_id)
            return len(new)

    def append_parts(self, batch_id: str, parts: Iterable[Path]) -> None:
        """Append a batch's ledger lines that forked children wrote to `parts`, in order,
        fsynced: copied as they are, unless some lines of the batch were billed already
        (a restart after a crash part way), which are then left out."""
        with self._lock:
            seen = self._seen(batch_id)
            self._billed[batch_id] = None  # whatever happens next, the file knows best
            with self.path.open("ab") as out:
                for part in parts:
                    with part.open("rb") as handle:
                        if not seen:
                            shutil.copyfileobj(handle, out, COPY_BUFFER)
                            continue
                        for raw in handle:
                            if json.loads(raw)["custom_id"] not in seen:
                                out.write(raw)
                out.flush()
                os.fsync(out.fileno())

    def close(self, batch_id: str) -> None:
        """Forget what the batch billed: it has ended, and bills nothing more."""
        with self._lock:
            self._billed.pop(batch_id, None)

    def unbilled(self, batch_id: str, custom_ids: Iterable[str]) -> set[str]:
        """Those of `custom_ids` not billed yet in this batch (their entries need making)."""
        wanted = set(custom_ids)
        if not wanted:  # nothing to look up (reading a batch's back can take a while)
            return wanted
        with self._lock:
            return wanted - self._seen(batch_id)

    def billed_usd(self) -> float:
        """The total billed so far, as `report` gives it. Lines are parsed once, when
        first asked for, so billing itself pays nothing when no account limit is set."""
        with self._lock:
            if self.path.exists():
                with self.path.open("rb") as handle:
                    handle.seek(self._summed)
                    for raw in handle:
                        if not raw.endswith(b"\n"):
                            break
                        self._usd += _usd_of(json.loads(raw))
                        self._summed += len(raw)
            return round(self._usd, USD_DIGITS)

    def credit_left(self) -> float | None:
        """USD left of `credit_usd` (<= 0 once it is spent), or None without a credit."""
        credit = self.credit_usd
        return None if credit is None else credit - self.billed_usd()

    def reset(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)
            self._billed.clear()
            self._summed, self._usd = 0, 0.0

    def report(self, batch_id: str | None = None) -> dict[str, Any]:
        """`GET /_emulator/ledger`: totals, totals by model, and every billed line."""
        with self._lock:
            rows = []
            for _, text in self._lines(None if batch_id is None else {batch_id}):
                row = json.loads(text)
                row["usd"] = _usd_of(row)
                rows.append(row)
        models = sorted({row["model"] for row in rows})
        by_model = {m: _totals([row for row in rows if row["model"] == m]) for m in models}
        return _totals(rows) | {"by_model": by_model, "data": rows}


def _usd_of(row: dict[str, Any]) -> float:
    """A line's `usd`; lines from older versions have none, and are priced as they load."""
    return row["usd"] if "usd" in row else line_cost(row["model"], row)


_BATCH_HEAD = '{"batch_id":"'


def _batch_of(text: str) -> str:
    """A ledger line's batch_id: read off the front of the lines written here (batch ids
    need no escaping), parsed out of any other."""
    if text.startswith(_BATCH_HEAD):
        end = text.find('"', len(_BATCH_HEAD))
        if end > 0 and "\\" not in text[:end]:
            return text[len(_BATCH_HEAD) : end]
    return json.loads(text)["batch_id"]
