"""What batch processing writes, pinned byte for byte: results files and ledger lines.

The processing path (replies, token counts, prompt cache, billing, results order) is
tuned for speed, and any change to it must leave every byte a pipeline sees as it was.
So a mixed set of batches (plain, structured, thinking, stop sequences, truncation,
cache_control, invalid requests, errored and expired lines, paced, canceled and restarted
batches) runs in process on a fixed clock, and the digest of what it wrote is compared
with the one today's code wrote. Random ids (msg_, msgbatch_) are normalised away.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from batchpipe.emulator import lifecycle
from batchpipe.emulator.faults import LineFaults
from batchpipe.emulator.forked import in_two
from batchpipe.emulator.state import Store
from batchpipe.emulator.tokens import count_tokens, truncate_to_tokens
from batchpipe.emulator.wire import rfc3339

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
LONG = "shared context, " * 400  # > 1024 tokens: cacheable
V1 = "2023-06-01"
V2 = "2026-10-21"
# sha256 of `_run`'s output, captured before the processing path was optimised; changed
# once on purpose since, when injected line errors stopped drawing invalid_request_error
# (eight errored lines now carry api_error or overloaded_error; nothing else moved).
GOLDEN = "7a411e0fa7c637ebbde14a9dd7641348cc7089e9e6533679bf22a766c39a1e91"


class FixedClock:
    """The emulated clock, moved only by the test, so billed_at stamps are fixed."""

    def __init__(self) -> None:
        self.moment = T0

    def now(self) -> dt.datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += dt.timedelta(seconds=seconds)


def _plain(prompt: str, max_tokens: int = 100, **extra: Any) -> dict[str, Any]:
    content = [{"role": "user", "content": prompt}]
    return {"model": "claude-haiku-4-5", "max_tokens": max_tokens, "messages": content} | extra


STRUCT = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "number"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}
RICH = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "when": {"type": "string", "format": "date-time"},
        "who": {"$ref": "#/$defs/who"},
    },
    "required": ["title", "stars", "tags", "who"],
    "$defs": {"who": {"type": "object", "properties": {"name": {"type": "string"}}}},
}


OMIT = {"display": "omitted"}


def _structured(schema: dict[str, Any]) -> dict[str, Any]:
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}


def _cached(question: str, ttl: str = "5m") -> dict[str, Any]:
    control = {"type": "ephemeral", "ttl": ttl}
    system = [{"type": "text", "text": LONG, "cache_control": control}]
    return _plain(question, system=system)


def _valid_params() -> list[dict[str, Any]]:
    prompts = [
        "Describe product 1 for a catalogue",
        "Grüße aus Köln — naïve café, 世界\uff01 ok?",
        "x" * 230 + " tail",
        "Many   spaces\tand\nnewlines... !!! ???",
        "",
    ]
    tool = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {}}}}
    found = [_plain(prompt) for prompt in prompts]
    found += [_plain(prompt, max_tokens) for prompt in prompts[:4] for max_tokens in (1, 3, 7)]
    found += [
        _plain("please stop here and reply", stop_sequences=["stop", "reply"]),
        _plain("no stop inside", stop_sequences=["zzz", ""]),
        _plain("Rate item 4", **_structured(STRUCT)),
        _plain("Rate item 5, honestly", **_structured(STRUCT)),
        _plain("Rate item 6", 4, **_structured(STRUCT)),
        _plain("Review of the Cinder Lamp by Ann", **_structured(RICH)),
        _plain("Review 2", 12, **_structured(RICH)),
        {**_plain("think about this", 2000), "model": "claude-opus-5-5"},
        {**_plain("think briefly", 5), "model": "claude-opus-5-5"},
        {**_plain("json and thought", 3000), "model": "claude-opus-5-5", **_structured(STRUCT)},
        _plain("manual", 3000, thinking={"type": "enabled", "budget_tokens": 1024}),
        _plain("hidden", 3000, thinking={"type": "enabled", "budget_tokens": 1024} | OMIT),
        _plain("call it", tools=[tool], tool_choice={"type": "tool", "name": "lookup"}),
        _plain("call it short", 2, tools=[tool], tool_choice={"type": "any"}),
        _plain("geo", inference_geo="us"),
        _cached("first question"),
        _cached("second question"),
        _cached("third question", "1h"),
        _plain("auto cache " + LONG, cache_control={"type": "ephemeral"}),
        _plain("auto cache " + LONG, cache_control={"type": "ephemeral"}),
        _plain("blocks", messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "look at"},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "and this, please"}]},
        ]),
        {**_plain("sonnet"), "model": "claude-sonnet-4-6"},
    ]  # fmt: skip
    return found


def _invalid_params() -> list[dict[str, Any]]:
    return [
        {**_plain("no such model"), "model": "claude-nope"},
        {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
        _plain("too long", 10**9),
        _plain("bad stops", stop_sequences="stop"),
        _plain("bad thinking", thinking={"type": "sometimes"}),
        _plain("temperature", temperature=0.5),
        _plain("bad schema", **_structured({"$ref": "http://elsewhere"})),
        _plain("bad cache", cache_control={"type": "forever"}),
        {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
    ]


def _requests() -> list[dict[str, Any]]:
    params = _valid_params() + _invalid_params()
    return [{"custom_id": f"req-{index:03d}", "params": p} for index, p in enumerate(params)]


def _snapshot(store: Store, record: Any) -> str:
    """What a pipeline can see of an ended batch: counts, stamps and the results body."""
    results = store.results_path(record.id).read_text(encoding="utf-8")
    stamps = [rfc3339(at) for at in (record.ended_at, record.cancel_initiated_at) if at]
    return f"{record.id} {record.request_counts} {stamps}\n{results}"


class Killed(Exception):
    """Stands for the emulator being killed at that point."""


def _crash_before_billing(store: Store, record: Any) -> None:
    """Progress appended, then killed before billing or saving the record."""

    def killed(rows: Any) -> int:
        raise Killed

    store.ledger.bill = killed  # type: ignore[method-assign]
    try:
        lifecycle.refresh(store, record, 1.0)
    except Killed:
        return
    raise AssertionError("the paced batch had nothing new to process")


def _run(state: Path, requests: list[dict[str, Any]], crash: bool = True) -> str:
    """Five batches through every processing path; everything they wrote, normalised.
    `crash`: kill the paced batch's processing at its ledger write, once."""
    clock = FixedClock()
    store = Store(state)
    store.clock = clock  # type: ignore[assignment]
    faulty = LineFaults(seed=3, errored_rate=0.15, expired_rate=0.1)
    paced = LineFaults(seed=5, errored_rate=0.1, requests_per_second=4)
    out: list[str] = []

    whole = lifecycle.create(store, requests, V1, [], faulty)
    lifecycle.refresh(store, whole, 0.0)
    out.append(_snapshot(store, whole))
    out.append(
        _snapshot(store, lifecycle.refresh(store, lifecycle.create(store, requests, V2, []), 0.0))
    )

    stepped = lifecycle.create(store, requests, V1, ["output-300k-2026-03-24"], paced)
    canceled = lifecycle.create(store, requests, V1, [], paced)
    expiring = lifecycle.create(
        store, requests[:20], V1, [], LineFaults(requests_per_second=0.0002)
    )
    for seconds in (0.5, 1.3, 2.2):
        clock.advance(seconds)
        for record in (stepped, canceled, expiring):
            lifecycle.refresh(store, record, 1.0)
    lifecycle.cancel(store, canceled.id, 1.0)
    clock.advance(2.0)
    lifecycle.refresh(store, canceled, 1.0)
    out.append(_snapshot(store, canceled))

    clock.advance(1.0)
    if crash:
        _crash_before_billing(store, stepped)
    else:
        lifecycle.refresh(store, stepped, 1.0)
    store = Store(state)  # a restart part way through the paced batch
    store.clock = clock  # type: ignore[assignment]
    clock.advance(3.0)
    lifecycle.get(store, stepped.id, 1.0)
    clock.advance(100.0)
    out.append(_snapshot(store, lifecycle.get(store, stepped.id, 1.0)))
    clock.advance(86_400.0)
    out.append(_snapshot(store, lifecycle.get(store, expiring.id, 1.0)))
    out.append((state / "ledger.jsonl").read_text(encoding="utf-8"))

    text = "\n".join(out)
    for number, batch_id in enumerate((whole.id, stepped.id, canceled.id, expiring.id)):
        text = text.replace(batch_id, f"batch-{number}")
    text = re.sub(r"msgbatch_01\w{22}", "msgbatch_X", text)
    return re.sub(r"msg_01\w{22}", "msg_X", text)


def test_processing_writes_exactly_what_it_always_did(tmp_path: Path) -> None:
    text = _run(tmp_path / "state", _requests())
    (tmp_path / "golden.txt").write_text(text, encoding="utf-8")  # for a diff on failure
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN, tmp_path / "golden.txt"


def test_answering_on_two_cores_writes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big batches that never touch the prompt cache are answered partly in a forked
    child; here every advance of two or more lines is, and nothing may differ. (Not
    with a crash: a fork records its parts separately, so it stops at another point.)"""
    requests = [r for r in _requests() if "cache_control" not in json.dumps(r)]
    serial = _run(tmp_path / "serial", requests, crash=False)
    forks = []

    def counted(work: Any, items: Any, **options: Any) -> Any:
        forks.append(len(items))
        return in_two(work, items, **options)

    monkeypatch.setattr(lifecycle, "FORK_AT_LEAST", 2)
    monkeypatch.setattr(lifecycle.forked, "in_two", counted)
    assert _run(tmp_path / "forked", requests, crash=False) == serial
    assert len(forks) >= 3 and max(forks) == len(requests)


def _reference_count(text: str) -> int:
    """count_tokens as first written: one pass over the runs of the Unicode pattern."""
    return sum(math.ceil(len(run) / 4) for run in re.findall(r"\w+|[^\w\s]+", text))


def _reference_truncate(text: str, limit: int) -> str:
    """truncate_to_tokens as first written: walk the runs until one does not fit."""
    used, end = 0, 0
    for match in re.finditer(r"\w+|[^\w\s]+", text):
        cost = math.ceil(len(match.group()) / 4)
        if used + cost > limit:
            return text[: match.start() + 4 * (limit - used)] if used < limit else text[:end]
        used, end = used + cost, match.end()
    return text


def test_token_functions_match_the_reference() -> None:
    """The faster tokenizer (a separate pattern for ASCII text, truncation by running
    totals) counts and cuts exactly as the plain one, separators \\x1c-\\x1f included."""
    rnd = random.Random(11)
    alphabet = [chr(code) for code in range(128)] + list("üß—世界\uff01\u2028\xa0")
    texts = ["", "x" * 230 + " #1", "a\x1cb\x1d!\x1f?", "Grüße, 世界\uff01 ok"]
    texts += ["".join(rnd.choices(alphabet, k=rnd.randint(0, 40))) for _ in range(3000)]
    for text in texts:
        assert count_tokens(text) == _reference_count(text), repr(text)
        for limit in (-1, 0, 1, 2, 3, 5, 8, 13):
            assert truncate_to_tokens(text, limit) == _reference_truncate(text, limit)


def test_a_fork_killed_part_way_bills_each_succeeded_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after a forked advance recorded only its first part, then restarted: every
    batch still bills exactly its succeeded results, each once."""
    monkeypatch.setattr(lifecycle, "FORK_AT_LEAST", 2)
    requests = [r for r in _requests() if "cache_control" not in json.dumps(r)]
    _run(tmp_path / "state", requests)
    ledger_text = (tmp_path / "state" / "ledger.jsonl").read_text(encoding="utf-8")
    billed = [
        (row["batch_id"], row["custom_id"]) for row in map(json.loads, ledger_text.splitlines())
    ]
    assert len(billed) == len(set(billed))
    succeeded = set()
    for path in (tmp_path / "state" / "batches").glob("*.results.jsonl"):
        batch_id = path.name.split(".")[0]
        for line in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
            if line["result"]["type"] == "succeeded":
                succeeded.add((batch_id, line["custom_id"]))
    assert set(billed) == succeeded
