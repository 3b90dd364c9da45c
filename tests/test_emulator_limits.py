"""The real API's account limits, as a user of the official SDK meets them: each limit is
set by its flag on a real emulator process (one by `POST /_emulator/faults`), and each
test checks the status, error type, `retry-after` and exception class the SDK shows, and
that nothing was created or billed that should not be."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support import advance_emulator_clock, ledger, start_emulator, wait_ended

MODEL = "claude-haiku-4-5"
TINY_USD = 0.000001  # less than any one line costs: the first billed line reaches it


def requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"Name item {i}"}],
            },
        }
        for i in range(n)
    ]


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    """A plain HTTP call (controls, and endpoints the SDK would not call as is)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    request.add_header("x-api-key", "x")
    request.add_header("anthropic-version", "2023-06-01")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            json_body = response.headers.get_content_type() == "application/json"
            return response.status, dict(response.headers), json.loads(text) if json_body else text
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@contextlib.contextmanager
def running(tmp_path: Path, *flags: str, latency: float = 0.0) -> Iterator[str]:
    """An emulator started with `flags`; its URL."""
    process, url = start_emulator(tmp_path / "state", latency=latency, extra_args=flags)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def client(url: str) -> anthropic.Anthropic:
    """No retries: each test looks at the first answer, as a log would show it."""
    return anthropic.Anthropic(api_key="x", base_url=url, max_retries=0)


def batch_ids(url: str) -> list[str]:
    return [batch.id for batch in client(url).messages.batches.list()]


def test_queue_limit_refuses_a_create_that_would_overfill_the_queue(tmp_path: Path) -> None:
    with running(tmp_path, "--queue-limit", "5", latency=30) as emulator:
        api = client(emulator).messages.batches
        first = api.create(requests=requests(3))
        with pytest.raises(anthropic.RateLimitError) as caught:
            api.create(requests=requests(3, "s"))
        error = caught.value
        assert error.status_code == 429 and error.type == "rate_limit_error"
        assert error.response.headers["retry-after"] == "30"  # the latency: when work starts
        assert "processing queue" in error.api_message and "5" in error.api_message
        assert batch_ids(emulator) == [first.id]  # nothing created
        api.create(requests=requests(2, "t"))  # exactly the limit fits
        advance_emulator_clock(emulator, 31)  # both processed: the queue is empty again
        api.create(requests=requests(5, "u"))


def test_batch_rpm_limits_batch_endpoints_only(tmp_path: Path) -> None:
    with running(tmp_path, "--batch-rpm", "3") as emulator:
        api = client(emulator)
        for _ in range(3):
            api.messages.batches.list()
        with pytest.raises(anthropic.RateLimitError) as caught:
            api.messages.batches.retrieve("msgbatch_01NoSuchBatch")
        error = caught.value
        assert error.status_code == 429 and error.type == "rate_limit_error"
        assert 1 <= int(error.response.headers["retry-after"]) <= 60
        assert "3 requests per minute" in error.api_message
        assert api.models.list().data  # not a batch endpoint
        assert call(f"{emulator}/_emulator/ledger")[0] == 200  # harness routes: never limited


def test_spend_limit_answers_enforced_spend_limit_reached(tmp_path: Path) -> None:
    with running(tmp_path, "--spend-limit-usd", str(TINY_USD)) as emulator:
        api = client(emulator).messages.batches
        first = api.create(requests=requests(2))
        wait_ended(client(emulator), first.id)
        assert len(ledger(emulator)) == 2
        with pytest.raises(anthropic.RateLimitError) as caught:
            api.create(requests=requests(1, "s"))
        error = caught.value
        assert type(error) is anthropic.types.shared.EnforcedSpendLimitReachedError
        assert error.status_code == 429 and error.type == "rate_limit_error"
        assert error.error_code == "enforced_spend_limit_reached"
        assert error.body["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
        assert "retry-after" not in error.response.headers  # waiting minutes does not help
        assert batch_ids(emulator) == [first.id] and len(ledger(emulator)) == 2


def test_workspace_limit_answers_400(tmp_path: Path) -> None:
    with running(tmp_path, "--workspace-limit-usd", str(TINY_USD)) as emulator:
        api = client(emulator).messages.batches
        first = api.create(requests=requests(1))
        wait_ended(client(emulator), first.id)
        with pytest.raises(anthropic.BadRequestError) as caught:
            api.create(requests=requests(1, "s"))
        error = caught.value
        assert error.status_code == 400 and error.type == "invalid_request_error"
        assert error.api_message.startswith(
            "You have reached your specified workspace API usage limits"
        )
        assert error.error_code is None and "retry-after" not in error.response.headers
        assert batch_ids(emulator) == [first.id] and len(ledger(emulator)) == 1


def test_credit_running_out_errors_the_rest_unbilled(tmp_path: Path) -> None:
    with running(tmp_path, "--credit-usd", str(TINY_USD)) as emulator:
        sdk = client(emulator)
        first = sdk.messages.batches.create(requests=requests(3))
        counts = wait_ended(sdk, first.id).request_counts
        assert (counts.succeeded, counts.errored) == (1, 2)  # r0 spent the credit
        second = sdk.messages.batches.create(requests=requests(2, "s"))  # creates still work
        assert wait_ended(sdk, second.id).request_counts.errored == 2
        lines = [*sdk.messages.batches.results(first.id), *sdk.messages.batches.results(second.id)]
        errored = {line.custom_id: line.result for line in lines if line.result.type == "errored"}
        assert sorted(errored) == ["r1", "r2", "s0", "s1"]
        for result in errored.values():
            assert result.error.error.type == "invalid_request_error"
            assert "credit balance is too low" in result.error.error.message
        assert [row["custom_id"] for row in ledger(emulator)] == ["r0"]  # errored: not billed


def test_retrieve_answers_404_just_after_create(tmp_path: Path) -> None:
    with running(tmp_path, "--not-found-after-create", "30") as emulator:
        sdk = client(emulator)
        batch = sdk.messages.batches.create(requests=requests(1))
        with pytest.raises(anthropic.NotFoundError) as caught:
            sdk.messages.batches.retrieve(batch.id)
        assert caught.value.status_code == 404 and caught.value.type == "not_found_error"
        assert batch_ids(emulator) == [batch.id]  # list sees it
        # results too (the SDK's results() retrieves first, so the endpoint is called as is)
        status, _, body = call(f"{emulator}/v1/messages/batches/{batch.id}/results")
        assert status == 200 and json.loads(body)["custom_id"] == "r0"
        advance_emulator_clock(emulator, 31)
        assert sdk.messages.batches.retrieve(batch.id).processing_status == "ended"


def test_limits_set_shown_and_reset_through_the_faults_endpoint(tmp_path: Path) -> None:
    with running(tmp_path) as emulator:
        faults = f"{emulator}/_emulator/faults"
        startup = call(faults)[2]
        assert "queue_limit" not in startup  # off: the answer is as it always was
        status, _, shown = call(faults, "POST", {"queue_limit": 2, "credit_usd": 1})
        assert status == 200 and (shown["queue_limit"], shown["credit_usd"]) == (2, 1.0)
        assert call(faults)[2] == shown
        for bad in ({"queue_limit": 0}, {"batch_rpm": 1.5}, {"queue_limit": 9, "typo_rate": 1}):
            status, _, body = call(faults, "POST", bad)
            assert status == 400 and body["error"]["type"] == "invalid_request_error", bad
        assert call(faults)[2] == shown  # a bad call changes nothing
        api = client(emulator).messages.batches
        with pytest.raises(anthropic.RateLimitError):
            api.create(requests=requests(3))
        assert "queue_limit" not in call(faults, "POST", {"queue_limit": None})[2]
        api.create(requests=requests(3))
        call(f"{emulator}/_emulator/reset", "POST", {})
        assert call(faults)[2] == startup
