"""Big batches answered off the lock by forked children, and the usual line answered
from templates, write exactly what answering in line through the responder writes.

The emulator answers a big batch whose lines are all due at once in forked children
(background.py, pooled.py) while it keeps serving other calls, and answers the usual
request (one user text, perhaps a JSON schema) from templates (fastpath.py). Neither may
change a byte a pipeline sees: results, counts, ledger lines, each line billed once
whatever crash comes between; nor leave a process behind when the emulator stops.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tests.test_emulator_golden as golden
from batchpipe.emulator import background, fastpath, forked, lifecycle, pooled, protocol, state
from batchpipe.emulator.faults import LineFaults
from batchpipe.emulator.ledger import Bill, Ledger, entry
from batchpipe.emulator.models import MODELS
from batchpipe.emulator.process import start as start_emulator
from batchpipe.emulator.responders import OUTPUT_300K_BETA, respond
from batchpipe.emulator.wire import ApiError, dumps_line
from tests.test_emulator_golden import RICH, STRUCT, T0, V2, FixedClock

MESSAGE_ID = "msg_01" + "A" * 22
STAMP = "2026-11-25T12:00:00.000000Z"
FLAT = [
    STRUCT,
    {"type": "object", "properties": {}},
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": -3.5, "maximum": 9},
            "x": {"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 2000},
            "big": {"type": "number", "minimum": 1e17},
            "e": {"enum": [1, 1.0, True, None, 'é\u2028"q"', -0.0]},
        },
        "required": ["n", "e"],
    },
    {"properties": {"only": {"enum": ["a"]}}, "additionalProperties": 0},
]
OTHER_SCHEMAS = [RICH, {"$ref": "http://elsewhere"}, {"type": "object", "minProperties": 2}]
PROMPTS = [
    "Describe product 1",
    "Grüße aus Köln — naïve café, 世界\uff01 ok?",
    'quotes " and \\ and \n newlines\t\x1c',
    "",
    "x" * 230 + " #7",
    "stop\u2028here " * 40,
]


def _usual_params() -> list[tuple[list[str], dict[str, Any]]]:
    """(betas, params) of the usual shape and of shapes just beside it."""
    found: list[tuple[list[str], dict[str, Any]]] = []
    for model in MODELS:
        found.append(([], golden._plain(f"to {model}", model=model)))
    for prompt in PROMPTS:
        for max_tokens in (1, 2, 5, 100):
            found.append(([], golden._plain(prompt, max_tokens)))
            for schema in FLAT + OTHER_SCHEMAS:
                found.append(([], golden._plain(prompt, max_tokens, **golden._structured(schema))))
    for betas in ([], [OUTPUT_300K_BETA]):
        for max_tokens in (64_000, 64_001, 128_000, 300_000, 300_001):
            found.append((betas, golden._plain("cap", max_tokens, model="claude-sonnet-4-6")))
    odd: list[dict[str, Any]] = [
        golden._plain("x", True),
        golden._plain("x", 0),
        golden._plain("x", 10, stop_sequences=["x"]),
        golden._plain("x", model=7),
        {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": "hi"},
        golden._plain("x", messages=[{"role": "assistant", "content": "hi"}]),
        golden._plain("x", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
        golden._plain("x", messages=[{"role": "user", "content": "a", "extra": 1}]),
        golden._plain("x", output_config={"format": {"type": "json_schema"}}),
        golden._plain("x", output_config={"effort": "low", "format": STRUCT}),
        golden._plain("x", output_config={"format": {"type": "json_schema", "schema": 5}}),
    ]
    return found + [([], params) for params in odd]


def _normal(text: str) -> str:
    return re.sub(r'"id":"msg_01\w{22}"', '"id":"msg_X"', text)


def test_the_usual_line_is_what_the_responder_answers() -> None:
    taken = 0
    for index, (betas, params) in enumerate(_usual_params()):
        custom_id = f"c-{index}"
        made = fastpath.Lines("msgbatch_1", betas, 3).line(custom_id, params, MESSAGE_ID, STAMP)
        answer = respond(params, api_version=V2, betas=betas, batch=True, seed=3, now=T0)
        if made is None:
            continue
        assert not isinstance(answer, ApiError), params
        line = dumps_line(
            {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer}}
        )
        row = entry("msgbatch_1", custom_id, answer, STAMP)
        assert _normal(made[0]) == _normal(line), params
        assert made[1:] == (dumps_line(row), row["usd"]), params
        taken += 1
    assert taken > 150  # the usual shapes are taken, not left to the responder


def _cache_free() -> list[dict[str, Any]]:
    return [r for r in golden._requests() if "cache_control" not in json.dumps(r)]


class PooledStore(state.Store):
    """A store with the server's background answerer."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        background.install(self)


@pytest.fixture
def pooling(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every all-at-once advance of two or more lines answered by children, in tasks of
    five lines; the sizes answered so, in order."""
    sizes: list[int] = []
    answer = pooled.answer

    def counted(work: Any, positions: range, *args: Any, **options: Any) -> Any:
        sizes.append(len(positions))
        return answer(work, positions, *args, **options)

    monkeypatch.setattr(lifecycle, "POOL_AT_LEAST", 2)
    monkeypatch.setattr(pooled, "CHUNK", 5)
    monkeypatch.setattr(pooled, "answer", counted)
    return sizes


def test_answering_off_the_lock_writes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooling: list[int]
) -> None:
    """The golden batches (faults, invalid requests, thinking, tools, truncation...):
    the two all-at-once ones are answered by children, the paced ones as before."""
    requests = _cache_free()
    serial = golden._run(tmp_path / "serial", requests, crash=False)
    monkeypatch.setattr(golden, "Store", PooledStore)
    assert golden._run(tmp_path / "pooled", requests, crash=False) == serial
    assert len(pooling) == 2 and max(pooling) == len(requests)


def _batch(store: state.Store, requests: list[dict[str, Any]]) -> str:
    """Create, answer and end one batch (latency 0, faults on); what a pipeline sees of
    it, random ids normalised: its counts, its results and its ledger lines."""
    record = lifecycle.create(store, requests, V2, [], LineFaults(seed=4, errored_rate=0.2))
    record = lifecycle.get(store, record.id, 0.0)
    return _seen(store, record.id)


def _seen(store: state.Store, batch_id: str) -> str:
    record = lifecycle.get(store, batch_id, 0.0)
    results = store.results_path(batch_id).read_text(encoding="utf-8")
    bills = store.ledger.report(batch_id)["data"]
    text = f"{record.request_counts} {record.ended_at}\n{results}{json.dumps(bills)}"
    return _normal(text).replace(batch_id, "batch")


def _fresh(path: Path, kind: type[state.Store] = state.Store) -> state.Store:
    store = kind(path)
    store.clock = FixedClock()  # type: ignore[assignment]
    return store


def _many() -> list[dict[str, Any]]:
    """The golden requests that can be split, three times over under other ids."""
    return [
        {"custom_id": f"{copy}-{request['custom_id']}", "params": request["params"]}
        for copy in range(3)
        for request in _cache_free()
    ]


class Killed(Exception):
    pass


def test_answering_off_the_lock_after_a_crash_part_way_writes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooling: list[int]
) -> None:
    """Killed after a forked advance recorded its first part only, then restarted: the
    children answer the rest, and the lines recorded before keep their answers."""
    requests = _many()
    serial = _batch(_fresh(tmp_path / "serial"), requests)
    monkeypatch.setattr(lifecycle, "POOL_AT_LEAST", 10**9)
    monkeypatch.setattr(lifecycle, "FORK_AT_LEAST", 2)
    store = _fresh(tmp_path / "crashed")
    appended = store.append_progress

    def append_once(batch_id: str, lines: Any) -> None:
        if store.memo_of(batch_id, "progress"):
            raise Killed
        appended(batch_id, lines)

    store.append_progress = append_once  # type: ignore[method-assign]
    record = lifecycle.create(store, requests, V2, [], LineFaults(seed=4, errored_rate=0.2))
    with pytest.raises(Killed):
        lifecycle.get(store, record.id, 0.0)
    monkeypatch.setattr(lifecycle, "POOL_AT_LEAST", 2)
    store = _fresh(tmp_path / "crashed", PooledStore)
    done = store.get(record.id).done  # type: ignore[union-attr]
    assert 0 < done < len(requests)
    assert _seen(store, record.id) == serial
    assert pooling == [len(requests) - done]


def test_a_batch_whose_ending_fails_is_billed_once_when_answered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooling: list[int]
) -> None:
    """The ledger lines were copied in, then ending the batch failed: it is answered
    again in line, and none of its lines is billed twice."""
    requests = _many()
    serial = _batch(_fresh(tmp_path / "serial"), requests)

    def fail(job: Any, outcome: Any) -> None:
        raise Killed

    monkeypatch.setattr(background._Job, "ending", fail)
    assert _batch(_fresh(tmp_path / "failed", PooledStore), requests) == serial
    assert pooling == [len(requests)]


def test_a_restart_after_the_ledger_parts_were_copied_bills_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooling: list[int]
) -> None:
    requests = _many()
    serial = _batch(_fresh(tmp_path / "serial"), requests)
    store = _fresh(tmp_path / "killed", PooledStore)
    record = lifecycle.create(store, requests, V2, [], LineFaults(seed=4, errored_rate=0.2))
    ended, ending = threading.Event(), background._Job.ending

    def killed(job: Any, outcome: Any) -> Any:
        if ended.is_set():  # the restarted emulator's
            return ending(job, outcome)
        ended.set()
        threading.Event().wait()  # the process dies here: nothing more happens

    monkeypatch.setattr(background._Job, "ending", killed)
    lifecycle.process_soon(store, record, 0.0)
    assert ended.wait(30)
    restarted = _fresh(tmp_path / "killed", PooledStore)
    assert _seen(restarted, record.id) == serial


def test_other_calls_go_on_while_a_batch_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooling: list[int]
) -> None:
    """Polls of other batches, creates and ledger reports answer at once while a big
    batch is answered; a poll of that batch waits for it, then finds it ended."""
    store = _fresh(tmp_path / "state", PooledStore)
    small = lifecycle.create(store, _cache_free()[:1], V2, [])
    lifecycle.get(store, small.id, 0.0)
    release, started = threading.Event(), threading.Event()
    answer = pooled.answer

    def held(*args: Any, **options: Any) -> Any:
        started.set()
        assert release.wait(30)
        return answer(*args, **options)

    monkeypatch.setattr(pooled, "answer", held)
    big = lifecycle.create(store, _many(), V2, [])
    lifecycle.process_soon(store, big, 0.0)
    assert started.wait(30)
    polled: list[Any] = []
    waiter = threading.Thread(target=lambda: polled.append(lifecycle.get(store, big.id, 0.0)))
    waiter.start()
    assert lifecycle.get(store, small.id, 0.0).processing_status == "ended"
    other = lifecycle.create(store, _cache_free()[:1], V2, [])  # in line: under POOL_AT_LEAST
    assert lifecycle.get(store, other.id, 0.0).processing_status == "ended"
    store.ledger.report()
    waiter.join(0.2)
    assert waiter.is_alive() and big.processing_status == "in_progress"
    release.set()
    waiter.join(30)
    assert polled[0].processing_status == "ended"
    assert polled[0].request_counts["succeeded"] + polled[0].request_counts["errored"] == len(
        _many()
    )


def test_batches_waiting_their_turn_are_read_back_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "MEMO_REQUESTS", 10)
    store = _fresh(tmp_path / "state")
    kept = [lifecycle.create(store, _cache_free()[:4], V2, []) for _ in range(3)]
    assert [store.memo_of(r.id, "requests") is not None for r in kept] == [True, True, False]
    for record in kept:
        assert lifecycle.get(store, record.id, 0.0).request_counts["processing"] == 0
    assert not store._held


def test_run_all_returns_every_result_in_order_even_when_a_child_dies() -> None:
    parent = os.getpid()

    def work(task: int) -> int:
        if task == 3 and os.getpid() != parent:
            os._exit(7)
        return task * task

    assert forked.run_all(work, 40) == [task * task for task in range(40)]
    assert forked.run_all(work, 0) == []
    assert not forked._LIVE


def test_run_all_forked_from_another_thread_works_in_its_children() -> None:
    """As the background answerer forks: from a thread that is not the main one."""
    done: list[list[int]] = []

    def pid(task: int) -> int:
        time.sleep(0.05)  # long enough for every child to take some
        return os.getpid()

    thread = threading.Thread(target=lambda: done.append(forked.run_all(pid, 8)))
    thread.start()
    thread.join(30)
    assert done and os.getpid() not in done[0] and len(set(done[0])) == forked.PROCESSES


def test_the_ledger_keeps_only_open_batches_billed_lines(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    lines = [
        Bill(batch, f"c{n}", f'{{"batch_id":"{batch}","custom_id":"c{n}","model":"m","usd":0.5}}')
        for batch in ("msgbatch_a", "msgbatch_b")
        for n in range(3)
    ]
    assert first.bill(lines) == 6 and first.bill(lines) == 0
    with path.open("ab") as handle:
        handle.write(b'{"batch_id":"msgbatch_b","custom_id":"torn"')
    again = Ledger(path, open_batches={"msgbatch_b"})
    assert set(again._billed) == {"msgbatch_b"}
    assert again.bill(lines[3:]) == 0 and again.unbilled("msgbatch_b", ["c1", "c9"]) == {"c9"}
    report = again.report()
    assert report["requests_billed"] == 6 and again.billed_usd() == 3.0
    assert [row["custom_id"] for row in again.report("msgbatch_a")["data"]] == ["c0", "c1", "c2"]
    again.close("msgbatch_b")
    assert not again._billed


def _children(pid: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(name))
    return found


def _post_batch(port: int, count: int, prefix: str) -> str:
    requests = [
        {"custom_id": f"{prefix}{n}", "params": golden._plain(f"Describe product {n}")}
        for n in range(count)
    ]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"content-type": "application/json", "x-api-key": "k", "anthropic-version": V2}
    connection.request("POST", "/v1/messages/batches", json.dumps({"requests": requests}), headers)
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())["id"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stopped_emulator_leaves_no_child_behind(tmp_path: Path) -> None:
    process, url = start_emulator(tmp_path / "state", latency=0.0)
    try:
        _post_batch(int(url.rsplit(":", 1)[1]), 60_000, "r")
        deadline, children = time.monotonic() + 30, set()
        while not children and time.monotonic() < deadline:
            children = _children(process.pid)
        assert children, "no child was forked to answer the batch"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_a_create_body_parsed_in_slices_is_the_body_parsed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol, "SLICE_BYTES", 64)
    requests = [{"custom_id": f"r{n}", "params": golden._plain("é" * n)} for n in range(30)]
    nested = {"custom_id": "n", "params": {"tools": [{"custom_id": 1}, {"custom_id": [2]}]}}
    bodies = [
        json.dumps({"requests": requests}),
        json.dumps({"requests": requests}, separators=(",", ":"), ensure_ascii=False),
        json.dumps({"requests": [*requests[:9], nested, *requests[9:]]}),
        json.dumps({"requests": requests}, indent=2),
        json.dumps({"requests": [{"params": {}, "custom_id": "x"}, *requests]}),
        '{"requests": [' + json.dumps(requests)[1:-1] + '], "requests": [{"custom_id": "z"}]}',
        '{"requests": []}',
        '{"requests": [' + json.dumps(requests)[1:-1] + ",]}",
        '{"requests": [' + json.dumps(requests)[1:-1] + "]",
        '\ufeff{"requests": [{"custom_id": "a"}]}',
        '{"requests": [{"custom_id": NaN}]} ',
        "[]",
    ]
    for text in bodies:
        body = text.encode("utf-8")
        try:
            expected = protocol.parse_json(body)
        except ApiError as error:
            with pytest.raises(ApiError) as raised:
                protocol.parse_batch_json(body)
            assert str(raised.value) == str(error)
            continue
        assert protocol.parse_batch_json(body) == expected, text[:80]
