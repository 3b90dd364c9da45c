"""A run SIGKILLed at each dangerous moment, then run again: it completes, nothing is
lost, nothing is paid twice, and no reader sees a half-written output partition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anthropic
import duckdb
import pytest

from tests.support import ledger

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def run(env: dict[str, str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    extra = {"BATCHPIPE_KILL_AT": kill_at} if kill_at else {}
    return subprocess.run(
        [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", DAY],
        capture_output=True,
        text=True,
        env={**os.environ, **env, **extra},
        timeout=300,
    )


def rows(project: Path) -> list[tuple]:
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(
            "SELECT product_id, result_status, description FROM product_descriptions "
            "WHERE partition_date = ? ORDER BY 1",
            [DAY],
        ).fetchall()


@pytest.fixture
def emulator(demo_db: Path, private_emulator) -> tuple[str, dict[str, str]]:
    url = private_emulator()
    return url, {"ANTHROPIC_BASE_URL": url}


@pytest.mark.parametrize("batches", [1, 3])
@pytest.mark.parametrize(
    "point", ["before_create", "after_create", "mid_download", "mid_results_load"]
)
def test_killed_run_recovers_without_paying_twice(
    demo_db: Path, emulator, point: str, batches: int
) -> None:
    """With three batches, the next batch's intent is already recorded (its body is built
    while the first uploads) when the kill comes: both intents are settled on the re-run."""
    url, env = emulator
    if batches > 1:
        path = demo_db / "pipelines" / "product_descriptions.yaml"
        text = path.read_text()
        path.write_text(
            text.replace("  max_tokens: 200\n", "  max_tokens: 200\n  max_batch_requests: 10\n")
        )
    killed = run(env, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    again = run(env)

    assert again.returncode == 0, again.stderr[-2000:]
    result = rows(demo_db)
    assert len(result) == 30 and {status for _, status, _ in result} == {"succeeded"}
    billed = [entry["custom_id"] for entry in ledger(url)]
    assert sorted(billed) == sorted(set(billed)) and len(billed) == 30  # each paid once
    upstream = anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list()
    # the batch made before the kill was adopted, not resent
    assert len(upstream.data) == batches


def test_killed_output_write_leaves_the_old_partition_whole(demo_db: Path, emulator) -> None:
    url, env = emulator
    assert run(env).returncode == 0
    before = rows(demo_db)
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute("UPDATE products SET name = 'Renamed Lamp' WHERE product_id = 2")

    killed = run(env, kill_at="mid_enriched_write")

    assert killed.returncode == -signal.SIGKILL
    assert rows(demo_db) == before  # the deleted-but-uncommitted partition is back, whole
    assert run(env).returncode == 0
    after = rows(demo_db)
    assert len(after) == 30 and "Renamed Lamp" in after[0][2]
    assert len(ledger(url)) == 31  # only the renamed row's new request was paid for
