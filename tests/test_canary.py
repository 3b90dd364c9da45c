"""Issue 18: a request side that is new goes out as a canary batch of a few requests first,
and the rest only once the canary came back within output.max_error_rate."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from tests.support import batchpipe, bulk_project, query

pytestmark = pytest.mark.slow

DAY = "2026-11-03"
# Passes batchpipe's own checks; the API refuses it only as it processes each request
# (a thinking budget under 1,024 tokens), so every line of the batch comes back errored.
REFUSED = "  thinking: {type: enabled, budget_tokens: 500}\n"


def _sent_upstream(url: str) -> int:
    """Requests the emulator was sent, over all its batches."""
    upstream = anthropic.Anthropic(api_key="t", base_url=url)
    return sum(
        sum(dict(b.request_counts).values()) for b in upstream.messages.batches.list(limit=100)
    )


def test_a_canary_that_errors_stops_the_partition_after_ten_requests(
    project: Path, private_emulator
) -> None:
    """2,000 rows under a request side never sent before: `plan` says a canary goes first;
    the run sends 10 requests, their batch comes back errored, and the run fails naming
    the API's error. Nothing else was sent, and running again sends nothing more."""
    bulk_project(project, 2_000, extra=REFUSED)
    text = (project / "pipelines" / "bulk.yaml").read_text()
    (project / "pipelines" / "bulk.yaml").write_text(
        text.replace("  max_tokens: 16\n", "  max_tokens: 2000\n")
    )
    url = private_emulator(latency=0.5)

    plan = batchpipe("plan", "bulk", "--date", DAY)
    assert plan.returncode == 0, plan.stderr
    assert "canary:        a canary batch of 10 request(s) goes first" in plan.stdout

    run = batchpipe("run", "bulk", "--date", DAY)
    assert run.returncode == 1
    assert "the canary batch of bulk" in run.stderr
    assert "10 of 10 request(s) errored" in run.stderr
    assert "budget_tokens: Input should be greater than or equal to 1024" in run.stderr
    assert _sent_upstream(url) == 10

    again = batchpipe("run", "bulk", "--date", DAY)
    assert again.returncode == 1 and "the canary batch of bulk" in again.stderr
    assert _sent_upstream(url) == 10


def test_a_canary_within_the_error_rate_lets_the_rest_go_and_proves_the_version(
    project: Path, private_emulator
) -> None:
    """A good request side: the canary of 10 succeeds, the other 1,990 go out after it,
    every row is answered once. The version is then proven: the next large partition
    sends no canary."""
    bulk_project(project, 2_000, days=2)
    url = private_emulator(latency=0.2)
    first = batchpipe("run", "bulk", "--date", DAY)
    assert first.returncode == 0, first.stdout + first.stderr
    sizes = query(project, "SELECT request_count FROM batchpipe_batches ORDER BY intent_at")
    assert sizes == [(10,), (1_000,), (990,)]
    assert _sent_upstream(url) == 2_000

    plan = batchpipe("plan", "bulk", "--date", "2026-11-04")
    assert "canary:        none" in plan.stdout
    second = batchpipe("run", "bulk", "--date", "2026-11-04")
    assert second.returncode == 0, second.stderr
    sizes = query(
        project,
        "SELECT request_count FROM batchpipe_batches WHERE partition_date = '2026-11-04' "
        "ORDER BY intent_at",
    )
    assert sizes == [(1_000,), (1_000,)]


def test_canary_zero_sends_everything_at_once(project: Path, private_emulator) -> None:
    bulk_project(project, 2_000, extra="  canary: 0\n")
    private_emulator(latency=0.2)
    plan = batchpipe("plan", "bulk", "--date", DAY)
    assert "canary:        none (request.canary: 0)" in plan.stdout
    run = batchpipe("run", "bulk", "--date", DAY)
    assert run.returncode == 0, run.stderr
    assert query(project, "SELECT count(*) FROM batchpipe_batches") == [(2,)]
