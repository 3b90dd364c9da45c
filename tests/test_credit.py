"""Issue 18, credit running out mid-batch: the requests the API left unrun come back
errored and unbilled. They are kept as errored_billing, never as a final invalid request;
the run stops and says so, and once there is credit `batchpipe retry` sends only those
rows again, within max_attempts counted apart from ordinary retries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anthropic
import pytest

from tests.support import batchpipe, ledger, query, request_of, set_emulator_limits

pytestmark = pytest.mark.slow

DAY = "2026-11-03"
RETRY = ("retry", "product_descriptions", "--date", DAY)


def _one_attempt(project: Path) -> None:
    """max_attempts 1: an ordinary retry would never send a row twice, so every second
    send below is a credit resend, counted apart."""
    path = project / "pipelines" / "product_descriptions.yaml"
    text = path.read_text()
    path.write_text(text.replace("  max_tokens: 200\n", "  max_tokens: 200\n  max_attempts: 1\n"))


def _statuses(project: Path) -> list[tuple]:
    return query(
        project,
        "SELECT result_status, count(*) FROM product_descriptions WHERE partition_date = ? "
        "GROUP BY ALL ORDER BY 1",
        [DAY],
    )


def _batch_sizes(url: str) -> list[int]:
    upstream = anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list()
    return sorted(b.request_counts.succeeded + b.request_counts.errored for b in upstream)


def test_requests_left_unrun_for_credit_stop_the_run_and_retry_sends_only_them(
    demo_db: Path, private_emulator
) -> None:
    """The credit covers the first line of the partition's one batch; the other 29 come
    back unbilled. The run fails naming the credit and the command that resumes; the
    rows are recorded as errored_billing, not as invalid requests. With credit added,
    `retry` sends exactly those 29, once; every row is billed once; a second `retry`
    has nothing to send."""
    _one_attempt(demo_db)
    url = private_emulator("--credit-usd", "0.000001", latency=0.0)
    (rows,) = query(demo_db, "SELECT count(*) FROM products WHERE added_on = ?", [DAY])[0]

    stopped = batchpipe("run", "product_descriptions", "--date", DAY)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert f"{rows - 1} request(s) of {DAY} came back unrun and unbilled" in stopped.stderr
    assert "credit balance is too low" in stopped.stderr
    assert f"batchpipe retry product_descriptions --date {DAY}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    kept = "SELECT result_type, error_type, count(*) FROM batchpipe_results GROUP BY ALL"
    assert sorted(query(demo_db, kept), key=str) == [
        ("errored_billing", "invalid_request_error", rows - 1),
        ("succeeded", None, 1),
    ]
    assert len(ledger(url)) == 1  # the unrun lines cost nothing
    written = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'product_descriptions'"
    assert query(demo_db, written) == [(0,)]  # no partition written: it is not final

    set_emulator_limits(url, credit_usd=None)  # credit added
    resumed = batchpipe(*RETRY)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{rows - 1} request(s) of product_descriptions {DAY} came back" in resumed.stdout
    assert _batch_sizes(url) == [rows - 1, rows]  # the resend held only the unrun rows
    billed = Counter(request_of(entry["custom_id"]) for entry in ledger(url))
    assert len(billed) == rows and set(billed.values()) == {1}
    assert _statuses(demo_db) == [("succeeded", rows)]

    again = batchpipe(*RETRY)
    assert again.returncode == 0 and "nothing to retry" in again.stdout
    assert len(_batch_sizes(url)) == 2


def test_credit_resends_stop_at_max_attempts_and_the_rows_stay_errored_billing(
    demo_db: Path, private_emulator
) -> None:
    """Credit never comes: the first send and max_attempts (1) resend both come back
    unrun. Then the rows are final, written as errored_billing (never as succeeded or
    as an invalid request), and `retry` says there is nothing left to send."""
    _one_attempt(demo_db)
    url = private_emulator("--credit-usd", "0.000001", latency=0.0)
    (rows,) = query(demo_db, "SELECT count(*) FROM products WHERE added_on = ?", [DAY])[0]
    assert batchpipe("run", "product_descriptions", "--date", DAY).returncode == 1
    batchpipe(*RETRY)
    assert _batch_sizes(url) == [rows - 1, rows]
    assert _statuses(demo_db) == [("errored_billing", rows - 1), ("succeeded", 1)]
    assert len(ledger(url)) == 1
    spent = batchpipe(*RETRY)
    assert spent.returncode == 0 and "nothing to retry" in spent.stdout
    assert len(_batch_sizes(url)) == 2
