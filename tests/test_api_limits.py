"""Issue 18, the real API's limits, as far as they are built: a batch that retrieve does not
know yet right after its create is waited for, never sent again."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import anthropic
import pytest

from batchpipe import batches
from tests.support import (
    batchpipe,
    ledger,
    query,
    request_of,
    set_emulator_limits,
    wait_ended,
)

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def _answered_and_billed(project: Path, url: str) -> tuple[list[tuple], int, set[int]]:
    """The partition's rows by result_status; how many requests the emulator billed, and
    how many times each was billed (a set: {1} when each row was paid once)."""
    billed = Counter(request_of(entry["custom_id"]) for entry in ledger(url))
    statuses = query(
        project,
        "SELECT result_status, count(*) FROM product_descriptions WHERE partition_date = ? "
        "GROUP BY ALL",
        [DAY],
    )
    return statuses, len(billed), set(billed.values())


def test_a_batch_not_found_right_after_its_create_is_waited_for_not_sent_again(
    demo_db: Path, private_emulator
) -> None:
    """The emulator answers retrieve 404 for 5 s after each create, as the real API can
    for a short while (anthropic-sdk-python#1432). The run must wait it out and complete:
    one batch upstream, each row billed once, every row answered."""
    url = private_emulator("--not-found-after-create", "5", latency=0.2)
    upstream = anthropic.Anthropic(api_key="t", base_url=url)
    run = batchpipe("run", "product_descriptions", "--date", DAY)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(list(upstream.messages.batches.list())) == 1
    (rows,) = query(demo_db, "SELECT count(*) FROM products WHERE added_on = ?", [DAY])[0]
    assert _answered_and_billed(demo_db, url) == ([("succeeded", rows)], rows, {1})


def test_many_batches_are_polled_with_one_list_call_not_one_retrieve_each(
    tmp_path: Path, private_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch endpoints share one requests-per-minute limit: a partition waiting on
    several batches reads them from one page of the list endpoint, and each comes back as
    retrieve would show it; a polled batch's results are then downloaded in one call,
    without the retrieve the SDK's results() makes first."""
    monkeypatch.setenv("BATCHPIPE_STATE", str(tmp_path / "state"))
    url = private_emulator(latency=0.2)
    calls: list[str] = []
    api = anthropic.Anthropic(
        api_key="t",
        base_url=url,
        http_client=anthropic.DefaultHttpxClient(
            event_hooks={"request": [lambda r: calls.append(f"{r.method} {r.url.path}")]}
        ),
    )
    sent_at = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=5)
    request = {"model": "claude-haiku-4-5", "max_tokens": 16,
               "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    created = [
        api.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": request}])
        for i in range(3)
    ]
    for batch in created:  # ended, so the two reads below are of the same state
        wait_ended(api, batch.id)
    watch = [
        batches.Watch(batches.Submission(f"s{i}", b.id, "submitted", 1, sent_at), b.id, False)
        for i, b in enumerate(created)
    ]
    calls.clear()
    seen = batches.retrieve_all(api, watch)
    assert calls == ["GET /v1/messages/batches"]
    assert [b.id for b in seen] == [b.id for b in created]
    for batch in seen:
        assert batch == api.messages.batches.retrieve(batch.id)
    calls.clear()
    path = batches.download_results(api, created[0].id, 1)
    assert calls == [f"GET /v1/messages/batches/{created[0].id}/results"]
    assert json.loads(path.read_text())["custom_id"] == "r0"


@pytest.mark.parametrize(
    ("flag", "key", "words"),
    [
        ("--spend-limit-usd", "spend_limit_usd", "You have reached your API usage limit"),
        (
            "--workspace-limit-usd",
            "workspace_limit_usd",
            "You have reached your specified workspace API usage limits",
        ),
    ],
)
def test_a_spend_limit_stops_the_run_at_once_and_the_held_rows_go_out_once_it_lifts(
    demo_db: Path, private_emulator, flag: str, key: str, words: str
) -> None:
    """Three batches of ten; the limit is reached once the first is billed. The run stops
    at the second create, in the API's words, without retrying; nothing is marked as
    sent that was not. With the limit lifted, the same command sends the held rows, and
    every row is billed once."""
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    text = path.read_text()
    path.write_text(
        text.replace("  max_tokens: 200\n", "  max_tokens: 200\n  max_batch_requests: 10\n")
    )
    url = private_emulator(flag, "0.000001", latency=0.0)
    upstream = anthropic.Anthropic(api_key="t", base_url=url)

    stopped = batchpipe("run", "product_descriptions", "--date", DAY)
    assert stopped.returncode == 1
    assert words in stopped.stderr and "a spend limit was reached" in stopped.stderr
    assert "Sent before it: 10 request(s) in 1 batch(es)" in stopped.stderr
    assert "held, recorded and not sent: 20 request(s)" in stopped.stderr
    assert ("1st of the next month" in stopped.stderr) == (key == "spend_limit_usd")
    assert len(list(upstream.messages.batches.list())) == 1

    set_emulator_limits(url, **{key: None})
    resumed = batchpipe("run", "product_descriptions", "--date", DAY)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(list(upstream.messages.batches.list())) == 3
    assert _answered_and_billed(demo_db, url) == ([("succeeded", 30)], 30, {1})
