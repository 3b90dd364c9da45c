"""Issue 15.2 and its "Also": a results file that lost bytes is fetched again, a run that
waits lets `batchpipe cancel` in, and a state folder that cannot be written stops a run
before it pays for anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anthropic
import pytest

from tests.conftest import REPO
from tests.support import batchpipe, ledger, query, request_of

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def rows(project: Path) -> list[tuple]:
    return query(
        project,
        "SELECT product_id, result_status, description FROM product_descriptions "
        "WHERE partition_date = ? ORDER BY 1",
        [DAY],
    )


@pytest.mark.parametrize("cut", ["last_line", "a_middle_line"])
def test_a_results_file_that_lost_bytes_is_fetched_again(
    demo_db: Path, private_emulator, cut: str
) -> None:
    """The run dies after downloading, before loading; then the file on disk loses bytes
    (a cut copy, a disk that filled up) but keeps its count of lines. The next run must
    not take it as whole: it fetches the results again (they stay upstream 29 days) and
    loads every row, with no DuckDB `Malformed JSON` shown and nothing paid twice."""
    url = private_emulator()
    env = {"ANTHROPIC_BASE_URL": url}
    killed = batchpipe(
        "run",
        "product_descriptions",
        "--date",
        DAY,
        env={**env, "BATCHPIPE_KILL_AT": "mid_results_load"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (path,) = (demo_db / ".batchpipe" / "results").glob("*.jsonl")
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    if cut == "last_line":
        broken = whole[:-20]  # the last line loses its end; 30 lines still counted
    else:
        broken = b"".join([*lines[:7], lines[7][:-20] + b"\n", *lines[8:]])
    assert broken.count(b"\n") >= len(lines) - 1
    path.write_bytes(broken)

    again = batchpipe("run", "product_descriptions", "--date", DAY, env=env)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "Malformed" not in again.stdout + again.stderr
    result = rows(demo_db)
    assert len(result) == 30 and {status for _, status, _ in result} == {"succeeded"}
    assert not path.exists()  # fetched again whole (every row loaded), then removed
    billed = [request_of(e["custom_id"]) for e in ledger(url)]
    assert len(billed) == len(set(billed)) == 30


@pytest.mark.parametrize("warehouse_kind", ["file", "ducklake"], indirect=True)
def test_cancel_gets_in_while_a_run_waits_on_its_batch(
    demo_db: Path, private_emulator, warehouse_kind: str
) -> None:
    """`batchpipe run` waits for its batch; meanwhile `batchpipe cancel` must be able to
    write (the waiting run holds no lock between polls: BATCHPIPE_LOCK_WAIT is 5 s here),
    the batch is canceled, and both commands end with the partition's rows canceled."""
    # One request every ten seconds: the batch would take five minutes.
    url = private_emulator("--requests-per-second", "0.1", latency=0.5)
    env = {**os.environ, "ANTHROPIC_BASE_URL": url}
    run = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", DAY],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api = anthropic.Anthropic(api_key="t", base_url=url)
        deadline = time.monotonic() + 60
        while not list(api.messages.batches.list()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the run is waiting on its batch now

        cancel = batchpipe(
            "cancel", "product_descriptions", "--date", DAY, env={"ANTHROPIC_BASE_URL": url}
        )

        assert cancel.returncode == 0, cancel.stderr
        assert "asked the API to cancel msgbatch_" in cancel.stdout, cancel.stdout
        _, err = run.communicate(timeout=90)
    finally:
        run.kill()
    assert run.returncode == 0, err[-3000:]
    (batch,) = list(api.messages.batches.list())
    done = batch.request_counts.succeeded
    assert batch.request_counts.canceled == 30 - done and done < 10
    statuses = Counter(status for _, status, _ in rows(demo_db))
    assert statuses == Counter(
        {"canceled": 30 - done, "succeeded": done} if done else {"canceled": 30}
    )
    assert len(ledger(url)) == done  # only what was answered before the cancel is billed


def test_a_state_folder_that_cannot_be_written_stops_the_run_before_any_create(
    demo_db: Path, private_emulator
) -> None:
    url = private_emulator()
    blocker = demo_db / "not-a-folder"
    blocker.write_text("a file where the state folder's parent should be")
    state = blocker / "state"

    result = batchpipe(
        "run", "product_descriptions", "--date", DAY,
        env={"ANTHROPIC_BASE_URL": url, "BATCHPIPE_STATE": str(state)},
    )  # fmt: skip

    assert result.returncode == 1
    assert f"cannot write results under {state / 'results'}" in result.stderr, result.stderr
    assert "nothing was sent" in result.stderr and "Traceback" not in result.stderr
    assert list(anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list()) == []
    assert ledger(url) == []
