"""The emulator's progress, money and fault injection, driven over HTTP by the official SDK.

Faults are seeded, so every run meets the same faults in the same places: the seeds
below were picked so each test sees the fault it is about, and stay fixed.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from starlette.requests import Request

from batchpipe import pricing
from batchpipe.emulator.protocol import version_and_betas
from batchpipe.emulator.server import is_loopback
from tests.support import start_emulator, wait_ended

pytestmark = pytest.mark.slow

MODEL = "claude-haiku-4-5"
SEED = 7
LINE_ERROR_TYPES = {"api_error", "overloaded_error"}  # what a retry can cure


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    """A control-endpoint call: status, headers, parsed JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


class Emu:
    """Helpers around one running emulator."""

    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, max_retries: int = 0) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key="x", base_url=self.url, max_retries=max_retries)

    def faults(self, **settings: Any) -> dict[str, Any]:
        status, _, body = call(f"{self.url}/_emulator/faults", "POST", settings)
        assert status == 200, body
        return body

    def ledger(self, batch_id: str | None = None) -> dict[str, Any]:
        query = f"?batch_id={batch_id}" if batch_id else ""
        return call(f"{self.url}/_emulator/ledger{query}")[2]

    def advance(self, seconds: float) -> None:
        assert call(f"{self.url}/_emulator/clock", "POST", {"advance_seconds": seconds})[0] == 200

    def create(self, n: int, prefix: str = "r", **params: Any) -> Any:
        return self.client().messages.batches.create(requests=requests(n, prefix, **params))

    def wait_ended(self, batch_id: str, timeout: float = 15) -> Any:
        return wait_ended(self.client(), batch_id, timeout)


def requests(n: int, prefix: str = "r", **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 100,
                "messages": [{"role": "user", "content": f"Describe item {i} in a few words"}],
            }
            | params,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    state = tmp_path_factory.mktemp("faults-state")
    process, url = start_emulator(state, latency=0.2, extra_args=["--seed", str(SEED)])
    yield Emu(url)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def emu(server: Emu) -> Emu:
    """The shared emulator, reset: no batches, empty ledger, startup faults and clock."""
    status, _, body = call(f"{server.url}/_emulator/reset", "POST", {})
    assert (status, body) == (200, {"ok": True})
    return server


def test_faults_endpoint_reads_updates_and_rejects(emu: Emu) -> None:
    status, headers, current = call(f"{emu.url}/_emulator/faults")
    assert status == 200 and headers["request-id"].startswith("req_")
    assert current == {
        "http_error_rate": 0.0,
        "stream_cut_rate": 0.0,
        "errored_rate": 0.0,
        "expired_rate": 0.0,
        "requests_per_second": None,
        "seed": SEED,
        "injected": {},
    }
    updated = emu.faults(errored_rate=0.03, requests_per_second=500)
    assert updated["errored_rate"] == 0.03 and updated["requests_per_second"] == 500
    assert updated["http_error_rate"] == 0.0  # partial update leaves the rest alone
    assert call(f"{emu.url}/_emulator/faults")[2] == updated
    for bad in ({"typo_rate": 0.1}, {"errored_rate": 1.5}, {"requests_per_second": 0}, [1]):
        status, _, body = call(f"{emu.url}/_emulator/faults", "POST", bad)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", bad
    assert call(f"{emu.url}/_emulator/faults")[2] == updated
    call(f"{emu.url}/_emulator/reset", "POST", {})
    assert call(f"{emu.url}/_emulator/faults")[2] == current


def test_counts_move_while_processing_and_concurrent_polls_bill_once(emu: Emu) -> None:
    emu.faults(requests_per_second=20)
    client = emu.client()
    batch = emu.create(60)  # done 0.2 s + 60 / 20 s = 3.2 s after creation
    time.sleep(1.0)
    first = client.messages.batches.retrieve(batch.id)
    time.sleep(0.8)
    second = client.messages.batches.retrieve(batch.id)
    for seen in (first, second):
        counts = seen.request_counts
        assert seen.processing_status == "in_progress" and seen.results_url is None
        assert counts.processing + counts.succeeded == 60
    assert 0 < first.request_counts.succeeded < second.request_counts.succeeded < 60
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        client.messages.batches.results(batch.id)

    def poll(_: int) -> int:  # several clients at once, as Dagster workers would
        own = emu.client()
        while own.messages.batches.retrieve(batch.id).processing_status != "ended":
            own.messages.batches.list(limit=5)
        return own.messages.batches.retrieve(batch.id).request_counts.succeeded

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert set(pool.map(poll, range(6))) == {60}
    billed = emu.ledger(batch.id)["data"]
    assert sorted(row["custom_id"] for row in billed) == sorted(f"r{i}" for i in range(60))
    assert len(list(client.messages.batches.results(batch.id))) == 60


def test_cancel_mid_processing_keeps_done_lines_and_bills_only_them(emu: Emu) -> None:
    emu.faults(requests_per_second=20)
    client = emu.client()
    batch = emu.create(60)
    time.sleep(1.0)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    ended = client.messages.batches.retrieve(batch.id)
    counts = ended.request_counts
    assert ended.processing_status == "ended" and 0 < counts.succeeded < 60
    assert counts.canceled == 60 - counts.succeeded and counts.processing == 0
    time.sleep(0.3)  # nothing runs after the cancel
    assert client.messages.batches.retrieve(batch.id).request_counts == counts
    lines = list(client.messages.batches.results(batch.id))
    done = {line.custom_id for line in lines if line.result.type == "succeeded"}
    assert Counter(line.result.type for line in lines) == {
        "succeeded": counts.succeeded,
        "canceled": counts.canceled,
    }
    report = emu.ledger(batch.id)
    assert {row["custom_id"] for row in report["data"]} == done
    assert report["requests_billed"] == counts.succeeded


def test_expiry_with_slow_processing_expires_undone_lines_unbilled(emu: Emu) -> None:
    emu.faults(requests_per_second=1e-4)  # one request per 10,000 s: 8 finish in 24 h
    client = emu.client()
    batch = emu.create(10)
    emu.advance(25 * 3600)
    ended = client.messages.batches.retrieve(batch.id)
    counts = ended.request_counts
    assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
    assert (counts.succeeded, counts.expired, counts.processing) == (8, 2, 0)
    expired = {
        line.custom_id
        for line in client.messages.batches.results(batch.id)
        if line.result.type == "expired"
    }
    assert expired == {"r8", "r9"}  # processing follows request order
    billed = {row["custom_id"] for row in emu.ledger(batch.id)["data"]}
    assert billed == {f"r{i}" for i in range(8)}


def test_restart_mid_batch_finishes_and_bills_each_line_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process, url = start_emulator(state, extra_args=["--requests-per-second", "10"])
    try:
        emu = Emu(url)
        batch = emu.create(40)  # 4.2 s to finish
        time.sleep(1.2)
        partway = emu.client().messages.batches.retrieve(batch.id).request_counts.succeeded
        assert 0 < partway < 40
    finally:
        process.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        process.wait(timeout=10)
    with (state / "ledger.jsonl").open("a") as ledger:  # a crash mid-append
        ledger.write('{"batch_id": "msgbatch_torn", "custom_')
    with (state / "batches" / f"{batch.id}.progress.jsonl").open("a") as progress:
        progress.write('{"custom_id": "r')
    # No --requests-per-second now: the batch keeps the speed it was created with.
    process, url = start_emulator(state)
    try:
        emu = Emu(url)
        resumed = emu.client().messages.batches.retrieve(batch.id)
        assert resumed.processing_status == "in_progress"
        assert partway <= resumed.request_counts.succeeded < 40
        ended = emu.wait_ended(batch.id)
        assert ended.request_counts.succeeded == 40
        rows = emu.ledger()["data"]
        assert sorted(row["custom_id"] for row in rows) == sorted(f"r{i}" for i in range(40))
        results = list(emu.client().messages.batches.results(batch.id))
        assert len({line.custom_id for line in results}) == 40
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_sdk_retries_through_injected_429_500_and_529(emu: Emu) -> None:
    batch = emu.create(1)
    emu.faults(http_error_rate=0.5, seed=52)  # 429, 500 and 529 each once
    patient = emu.client(max_retries=2)  # the SDK default
    for _ in range(6):
        assert patient.messages.batches.retrieve(batch.id).id == batch.id
    injected = emu.faults()["injected"]
    assert injected["429"] >= 1 and injected["500"] >= 1 and injected["529"] >= 1

    impatient, seen = emu.client(max_retries=0), Counter()
    for _ in range(30):
        try:
            impatient.messages.batches.retrieve(batch.id)
            seen["ok"] += 1
        except anthropic.APIStatusError as error:
            seen[type(error).__name__] += 1
            assert error.request_id == error.body["request_id"]
            assert error.response.headers["x-should-retry"] == "true"
            if error.status_code == 429:
                assert error.response.headers["retry-after"] == "1"
    assert set(seen) == {"ok", "RateLimitError", "InternalServerError", "OverloadedError"}
    # Control endpoints are never faulted, whatever the rate.
    emu.faults(http_error_rate=1.0)
    assert all(call(f"{emu.url}/_emulator/ledger")[0] == 200 for _ in range(5))


def test_failed_create_may_have_created_the_batch(emu: Emu) -> None:
    emu.faults(http_error_rate=1.0)
    client = emu.client()
    statuses = Counter()
    for i in range(12):
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.batches.create(requests=requests(1, f"try{i}-"))
        statuses[caught.value.status_code] += 1
    injected = emu.faults(http_error_rate=0)["injected"]
    created = list(client.messages.batches.list(limit=100))
    assert 0 < len(created) == injected["created_anyway"] <= statuses[500] + statuses[529]
    ended = emu.wait_ended(created[0].id)  # a real batch: it runs and bills like any other
    assert ended.request_counts.succeeded == 1


def test_cut_results_stream_raises_and_a_new_download_gets_everything(emu: Emu) -> None:
    client = emu.client()
    batch = emu.wait_ended(emu.create(30).id)
    emu.faults(stream_cut_rate=1.0)
    with pytest.raises(httpx2.HTTPError, match="peer closed connection"):
        list(client.messages.batches.results(batch.id))
    request = urllib.request.Request(batch.results_url, headers={"x-api-key": "x"})
    request.add_header("anthropic-version", "2023-06-01")
    response = urllib.request.urlopen(request, timeout=10)
    assert response.headers["request-id"].startswith("req_")
    declared = int(response.headers["content-length"])
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert 0 < len(cut.value.partial) < declared

    emu.faults(stream_cut_rate=0.5)
    for _attempt in range(10):
        try:
            lines = list(client.messages.batches.results(batch.id))
            break
        except httpx2.HTTPError:
            continue
    else:
        raise AssertionError("no complete download in 10 attempts")
    assert sorted(line.custom_id for line in lines) == sorted(f"r{i}" for i in range(30))
    assert emu.faults()["injected"]["stream_cut"] >= 2


def test_errored_and_expired_rates_make_unbilled_lines_reproducibly(emu: Emu) -> None:
    emu.faults(errored_rate=0.3, expired_rate=0.2)
    client = emu.client()
    batch = emu.wait_ended(emu.create(50).id)
    counts = batch.request_counts
    assert counts.errored > 0 and counts.expired > 0 and counts.succeeded > 0
    assert counts.succeeded + counts.errored + counts.expired == 50
    lines = list(client.messages.batches.results(batch.id))
    assert Counter(line.result.type for line in lines) == {
        "succeeded": counts.succeeded,
        "errored": counts.errored,
        "expired": counts.expired,
    }
    errored = [line.result.error for line in lines if line.result.type == "errored"]
    assert {error.error.type for error in errored} == LINE_ERROR_TYPES
    assert all(error.request_id.startswith("workerreq_") for error in errored)
    succeeded = {line.custom_id for line in lines if line.result.type == "succeeded"}
    assert {row["custom_id"] for row in emu.ledger()["data"]} == succeeded
    fates = {line.custom_id: line.result.type for line in lines}

    # Same seed, same place in a fresh state: the same lines fail the same way.
    call(f"{emu.url}/_emulator/reset", "POST", {})
    emu.faults(errored_rate=0.3, expired_rate=0.2)
    again = emu.wait_ended(emu.create(50).id)
    replay = {
        line.custom_id: line.result.type for line in client.messages.batches.results(again.id)
    }
    assert replay == fates


def test_ledger_totals_are_exact_at_batch_prices(emu: Emu) -> None:
    client = emu.client()
    lines = [
        *requests(2, "haiku"),
        *requests(1, "opus", model="claude-opus-5-5"),
        *requests(1, "unpriced", model="claude-mythos-preview"),
        *requests(1, "bad", model="claude-does-not-exist"),
    ]
    batch = emu.wait_ended(client.messages.batches.create(requests=lines).id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (4, 1)
    discount = pricing.price_list().batch_discount
    expected: dict[str, dict[str, float]] = {}
    for line in client.messages.batches.results(batch.id):
        if line.result.type != "succeeded":
            continue
        message = line.result.message
        usage = message.usage
        split = usage.cache_creation
        tokens = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
            "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
        }
        try:
            p = pricing.price(message.model)
            usd = (
                (
                    usage.input_tokens * p.input
                    + (split.ephemeral_5m_input_tokens if split else 0) * p.cache_write_5m
                    + (split.ephemeral_1h_input_tokens if split else 0) * p.cache_write_1h
                    + tokens["cache_read_input_tokens"] * p.cache_read
                    + usage.output_tokens * p.output
                )
                * discount
                / 1e6
            )
        except ValueError:
            usd = 0.0  # not in the price list: counted, not charged
        model = expected.setdefault(message.model, dict.fromkeys([*tokens, "usd"], 0))
        model["requests_billed"] = model.get("requests_billed", 0) + 1
        for key, value in tokens.items():
            model[key] += value
        model["usd"] += usd
    report = emu.ledger()
    assert set(report["by_model"]) == {
        "claude-haiku-4-5",
        "claude-opus-5-5",
        "claude-mythos-preview",
    }
    assert report["by_model"]["claude-mythos-preview"]["usd"] == 0
    assert report["by_model"]["claude-mythos-preview"]["input_tokens"] > 0
    for model, want in expected.items():
        got = report["by_model"][model]
        assert {k: got[k] for k in want if k != "usd"} == {
            k: v for k, v in want.items() if k != "usd"
        }
        assert got["usd"] == pytest.approx(want["usd"], rel=1e-9, abs=1e-12)
    assert report["requests_billed"] == 4 == len(report["data"])
    assert report["usd"] == pytest.approx(sum(w["usd"] for w in expected.values()), rel=1e-9)
    assert report["usd"] > 0
    for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens"):
        assert report[key] == sum(w[key] for w in expected.values())
    assert all({"usd", "cache_read_input_tokens"} <= set(row) for row in report["data"])


def test_reset_empties_batches_ledger_clock_and_faults(emu: Emu) -> None:
    client = emu.client()
    emu.wait_ended(emu.create(3).id)
    emu.advance(3600)
    emu.faults(errored_rate=0.5)
    assert emu.ledger()["requests_billed"] == 3
    assert call(f"{emu.url}/_emulator/reset", "POST", {})[0] == 200
    assert list(client.messages.batches.list()) == []
    report = emu.ledger()
    assert report["data"] == [] and report["by_model"] == {}
    assert report["requests_billed"] == 0 and report["usd"] == 0
    assert emu.faults()["errored_rate"] == 0.0
    _, _, clock = call(f"{emu.url}/_emulator/clock", "POST", {"advance_seconds": 0})
    assert clock["offset_seconds"] == 0


def test_non_loopback_host_needs_public(tmp_path: Path) -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))
    command = [sys.executable, "-m", "batchpipe.emulator", "--host", "0.0.0.0", "--port", "0"]
    command += ["--state-dir", str(tmp_path / "state")]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--public" in done.stderr
    assert not (tmp_path / "state").exists()


def test_anthropic_beta_is_split_on_commas_and_repeats() -> None:
    headers = [
        (b"anthropic-version", b"2026-10-21"),
        (b"anthropic-beta", b"output-300k-2026-03-24, files-api ,,"),
        (b"anthropic-beta", b"another"),
    ]
    request = Request({"type": "http", "headers": headers, "method": "GET", "path": "/"})
    assert version_and_betas(request) == (
        "2026-10-21",
        ["output-300k-2026-03-24", "files-api", "another"],
    )
