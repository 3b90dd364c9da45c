"""The emulator as a user sees it: a real process, driven over HTTP by the official SDK."""

from __future__ import annotations

import collections
import datetime as dt
import http.client
import json
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support import wait_ended

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
SLOW_KEY = "sk-emulator-secret"


class Emulator:
    """One emulator process; `restart` keeps its state dir and port."""

    def __init__(self, state_dir: Path, latency: float, api_key: str | None = None) -> None:
        self.state_dir, self.latency, self.api_key = state_dir, latency, api_key
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "batchpipe.emulator", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--state-dir", str(self.state_dir)]
        cmd += ["--latency", str(self.latency)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready, "emulator printed nothing within 20 s"
        line = self.proc.stdout.readline()
        assert line.startswith("batchpipe emulator listening on http://127.0.0.1:"), line
        assert str(self.state_dir) in line
        self.port = int(line.split("http://127.0.0.1:")[1].split()[0])
        status, _, body = raw("GET", f"{self.url}/_emulator/health", auth=False)
        assert (status, json.loads(body)) == (200, {"ok": True})

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        assert self.proc.wait(timeout=10) in (0, -15)  # uvicorn re-raises SIGTERM
        self.proc.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, api_key: str | None = None) -> anthropic.Anthropic:
        key = api_key or self.api_key or "test"
        return anthropic.Anthropic(api_key=key, base_url=self.url, max_retries=0)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        status, _, body = raw(
            "POST", f"{self.url}/_emulator/clock", {"advance_seconds": seconds}, auth=False
        )
        assert status == 200
        return json.loads(body)

    def set_faults(self, settings: dict[str, Any]) -> dict[str, Any]:
        status, _, body = raw("POST", f"{self.url}/_emulator/faults", settings, auth=False)
        assert status == 200, body
        return json.loads(body)

    def ledger(self) -> list[dict[str, Any]]:
        _, _, body = raw("GET", f"{self.url}/_emulator/ledger", auth=False)
        return json.loads(body)["data"]


def raw(
    method: str,
    url: str,
    body: Any = None,
    *,
    auth: bool = True,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call (old-SDK style headers by default): status, headers, body."""
    sent = {"x-api-key": "test", "anthropic-version": "2023-06-01"} if auth else {}
    sent |= headers or {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        sent["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = Emulator(tmp_path_factory.mktemp("emulator-state"), latency=0.3)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Batches here stay in progress unless the test moves the clock."""
    emulator = Emulator(tmp_path_factory.mktemp("slow-state"), latency=3600, api_key=SLOW_KEY)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def client(emu: Emulator) -> anthropic.Anthropic:
    return emu.client()


def request(custom_id: str, prompt: str, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": prompt}]}
    return {"custom_id": custom_id, "params": body | params}


def test_batch_lifecycle_and_results(emu: Emulator, client: anthropic.Anthropic) -> None:
    requests = [request(f"row-{i}", f"Summarise review number {i}") for i in range(10)]
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_01") and len(batch.id) == len("msgbatch_01") + 22
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 10 and batch.request_counts.succeeded == 0
    assert batch.results_url is None and batch.ended_at is None
    assert batch.expires_at - batch.created_at == dt.timedelta(hours=24)

    ended = wait_ended(client, batch.id)
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 10, 0)
    assert ended.ended_at is not None
    assert ended.results_url == f"{emu.url}/v1/messages/batches/{batch.id}/results"

    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == sorted(r["custom_id"] for r in requests)
    assert [r.custom_id for r in results] != [r["custom_id"] for r in requests]
    for line in results:
        i = line.custom_id.removeprefix("row-")
        assert line.result.type == "succeeded"
        message = line.result.message
        assert message.content[0].text == f"Emulated reply to: Summarise review number {i}"
        assert message.usage.service_tier == "batch"
        assert message.stop_reason == "end_turn"
    # Reading twice gives the same bytes: the order is deterministic.
    assert [r.custom_id for r in client.messages.batches.results(batch.id)] == [
        r.custom_id for r in results
    ]


def test_invalid_params_become_errored_lines(client: anthropic.Anthropic) -> None:
    requests = [
        request("ok", "fine"),
        request("unknown-model", "x", model="claude-does-not-exist-9"),
        request("sampling", "x", temperature=0.2),
        request("over-cap", "x", model="claude-haiku-4-5-20251001", max_tokens=9999999),
        request("streaming", "x", stream=True),
        {"custom_id": "no-messages", "params": {"model": MODEL, "max_tokens": 10}},
    ]
    batch = wait_ended(client, client.messages.batches.create(requests=requests).id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (1, 5)
    errors = {
        line.custom_id: (line.result.error.error.type, line.result.error.error.message)
        for line in client.messages.batches.results(batch.id)
        if line.result.type == "errored"
    }
    bad = "invalid_request_error"
    assert errors == {
        "unknown-model": ("not_found_error", "model: claude-does-not-exist-9"),
        "sampling": (bad, "temperature: Extra inputs are not permitted"),
        "over-cap": (
            bad,
            "max_tokens: 9999999 > 64000, which is the maximum allowed number of output "
            "tokens for claude-haiku-4-5-20251001",
        ),
        "streaming": (bad, '"stream=True" is not supported in the Message Batches API'),
        "no-messages": (bad, "messages: Field required"),
    }


def test_create_validation_is_synchronous(client: anthropic.Anthropic) -> None:
    cases = {
        "requests: custom_id's must be unique within a batch. Duplicate custom_id found: dup": [
            request("dup", "a"),
            request("dup", "b"),
        ],
        "requests.0.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'": [
            request("has space", "a")
        ],
        "requests.0.custom_id: String should have at most 64 characters": [request("x" * 65, "a")],
        "requests: List should have at least 1 item after validation, not 0": [],
    }
    for message, requests in cases.items():
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.batches.create(requests=requests)
        assert caught.value.body["error"]["message"] == message
        assert caught.value.request_id.startswith("req_")


def test_list_is_newest_first_and_paginates(client: anthropic.Anthropic) -> None:
    ids = [client.messages.batches.create(requests=[request("a", f"p{i}")]).id for i in range(3)]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == [ids[2], ids[1]]
    assert first.has_more and first.last_id == ids[1]
    second = client.messages.batches.list(limit=2, after_id=first.last_id)
    assert second.data[0].id == ids[0]
    newer = client.messages.batches.list(limit=1, before_id=ids[0])
    assert [b.id for b in newer.data] == [ids[1]]
    walked = [b.id for b in client.messages.batches.list(limit=2)]  # SDK auto-pagination
    assert walked[:3] == ids[::-1] and len(walked) == len(set(walked))


def test_raw_results_framing(emu: Emulator, client: anthropic.Anthropic) -> None:
    requests = [request(f"r{i}", f"line {i}\r\nwith breaks") for i in range(5)]
    batch = wait_ended(client, client.messages.batches.create(requests=requests).id)
    status, headers, body = raw("GET", batch.results_url)
    assert status == 200 and headers["content-type"] == "application/x-jsonl"
    assert headers["request-id"].startswith("req_")
    assert b"\r" not in body and b"\n\n" not in body and not body.startswith(b"\n")
    lines = body.decode().split("\n")
    assert lines[-1] == "" and len(lines) == 6
    for line in lines[:-1]:
        assert json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False) == line


def test_delete_only_once_ended(emu: Emulator, slow: Emulator) -> None:
    slow_client = slow.client()
    batch = slow_client.messages.batches.create(requests=[request("a", "x")])
    with pytest.raises(anthropic.BadRequestError) as caught:
        slow_client.messages.batches.delete(batch.id)
    assert caught.value.body["error"]["message"] == (
        "In progress batches cannot be deleted. Consider canceling the batch instead."
    )
    client = emu.client()
    done = wait_ended(client, client.messages.batches.create(requests=[request("a", "x")]).id)
    deleted = client.messages.batches.delete(done.id)
    assert (deleted.id, deleted.type) == (done.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve(done.id)
    assert missing.value.body["error"]["message"] == f"Message Batch {done.id} not found."


def test_cancel_ends_with_canceled_lines(slow: Emulator) -> None:
    client = slow.client()
    batch = client.messages.batches.create(requests=[request(f"c{i}", "x") for i in range(3)])
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.request_counts.processing == 3
    slow.advance_clock(3601)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 3
    assert {line.result.type for line in client.messages.batches.results(batch.id)} == {"canceled"}


def test_unprocessed_batch_expires_then_archives(slow: Emulator) -> None:
    client = slow.client()
    # Progress follows the clock: after 25 h a batch due at 1 h would be done, so make the
    # processing slow enough (one request per 11.6 days) that nothing finishes in 24 h.
    slow.set_faults({"requests_per_second": 1e-6})
    try:
        batch = client.messages.batches.create(requests=[request(f"e{i}", "x") for i in range(4)])
    finally:
        slow.set_faults({"requests_per_second": None})
    slow.advance_clock(25 * 3600)
    expired = client.messages.batches.retrieve(batch.id)
    assert expired.processing_status == "ended" and expired.request_counts.expired == 4
    assert expired.ended_at == expired.expires_at
    assert {line.result.type for line in client.messages.batches.results(batch.id)} == {"expired"}
    slow.advance_clock(29 * 24 * 3600)
    archived = client.messages.batches.retrieve(batch.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.NotFoundError) as caught:
        list(client.messages.batches.results(batch.id))
    assert caught.value.body["error"]["message"] == (
        f"Message Batch {batch.id} has no available results."
    )


def test_auth_and_version_headers(emu: Emulator, slow: Emulator) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        slow.client(api_key="wrong").messages.batches.list()
    assert caught.value.body["error"] == {
        "type": "authentication_error",
        "message": "API key is invalid.",
    }
    status, headers, body = raw("GET", f"{emu.url}/v1/messages/batches", auth=False)
    assert status == 401 and headers["request-id"] == json.loads(body)["request_id"]
    assert json.loads(body)["error"]["message"] == "x-api-key header is required"
    status, _, body = raw("GET", f"{emu.url}/v1/models", auth=False, headers={"x-api-key": "k"})
    assert status == 400
    assert json.loads(body)["error"]["message"] == "anthropic-version: header is required"
    # An old client: x-api-key, 2023-06-01, where sampling parameters are still allowed.
    params = {"model": MODEL, "max_tokens": 50, "temperature": 0.1}
    params["messages"] = [{"role": "user", "content": "old client"}]
    status, _, body = raw("POST", f"{emu.url}/v1/messages", params)
    assert status == 200 and json.loads(body)["content"][0]["text"].endswith("old client")


def test_sync_endpoints(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="claude-opus-5-5", max_tokens=1000, messages=[{"role": "user", "content": "Hi"}]
    )
    # Opus 5.5 always thinks: its thinking block comes first, the text after it.
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Emulated reply to: Hi"
    assert message.usage.service_tier == "standard" and message.id.startswith("msg_01")
    cut = client.messages.create(
        model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": "long"}]
    )
    assert cut.stop_reason == "max_tokens" and len(cut.content[0].text) == 8
    with pytest.raises(anthropic.BadRequestError, match="temperature: Extra inputs"):
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temperature": 0.5},
        )
    with pytest.raises(anthropic.NotFoundError, match="model: claude-nope"):
        client.messages.create(
            model="claude-nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    counted = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "12345678"}]
    )
    assert counted.input_tokens == 2 + 3
    model_ids = {model.id for model in client.models.list()}
    assert {"claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-opus-5-5"} <= model_ids


def test_oversized_body_is_413(emu: Emulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    conn.putrequest("POST", "/v1/messages/batches")
    for name, value in {
        "x-api-key": "test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "content-length": str(300 * 1024 * 1024),
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["type"] == "request_too_large"
    conn.close()


def test_ledger_bills_each_succeeded_request_once(emu: Emulator) -> None:
    client = emu.client()
    # a batch of its own: under xdist this module's other tests may run on another worker
    client.messages.batches.create(requests=[request("ledger-a", "x"), request("ledger-b", "y")])
    time.sleep(emu.latency)
    batches = list(client.messages.batches.list(limit=1000))  # also ends every due batch
    ledger = emu.ledger()
    pairs = [(row["batch_id"], row["custom_id"]) for row in ledger]
    assert len(pairs) == len(set(pairs))
    per_batch = collections.Counter(row["batch_id"] for row in ledger)
    assert batches and all(b.processing_status == "ended" for b in batches)
    for batch in batches:
        assert per_batch[batch.id] == batch.request_counts.succeeded
    row = ledger[0]
    assert set(row) == {
        "batch_id",
        "custom_id",
        "model",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
        "usd",
        "billed_at",
    }
    for batch in batches:  # reading again bills nothing more
        client.messages.batches.retrieve(batch.id)
    assert emu.ledger() == ledger


def test_state_survives_restart(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path / "state", latency=0.3)
    try:
        client = emulator.client()
        done = wait_ended(client, client.messages.batches.create(requests=[request("a", "x")]).id)
        before = [line.to_dict() for line in client.messages.batches.results(done.id)]
        pending = client.messages.batches.create(requests=[request("b", "y")])
        emulator.advance_clock(60)
        ledger = emulator.ledger()
        emulator.restart()
        client = emulator.client()
        assert client.messages.batches.retrieve(done.id).to_dict() == done.to_dict()
        assert [line.to_dict() for line in client.messages.batches.results(done.id)] == before
        assert emulator.advance_clock(0)["offset_seconds"] == 60
        finished = client.messages.batches.retrieve(pending.id)
        assert finished.request_counts.succeeded == 1
        assert len(emulator.ledger()) == len(ledger) + 1
    finally:
        emulator.stop()
