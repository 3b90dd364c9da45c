"""A partition end to end: Dagster runs the real assets, the SDK talks HTTP to a real
emulator process, and the results land in a real DuckDB file."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import anthropic
import pytest

from batchpipe import steps
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.runs import run_partition
from tests.support import execute, ledger, pipeline, query

# The steps against both warehouses: a DuckDB file and a DuckLake catalog in PostgreSQL.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("warehouse_kind", ["file", "ducklake"], indirect=True),
]

DAY = dt.date(2026, 11, 3)
FAST = BatchpipeResource(poll_seconds=0.1, wait=True)


def upstream_batches(url: str) -> list[str]:
    api = anthropic.Anthropic(api_key="test", base_url=url)
    return [batch.id for batch in api.messages.batches.list(limit=1000)]


@pytest.fixture
def emulator(demo_db: Path, emulator_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator_url)
    return emulator_url


def test_every_row_of_the_date_is_enriched_with_its_own_reply(demo_db: Path, emulator: str) -> None:
    lines = run_partition(pipeline(), DAY, FAST)

    rows = query(
        demo_db,
        "SELECT product_id, name, category, partition_date, description, result_status, "
        "input_tokens, output_tokens, cost_usd, batch_id FROM product_descriptions "
        "ORDER BY product_id",
    )
    source = query(demo_db, "SELECT product_id FROM products WHERE added_on = ? ORDER BY 1", [DAY])
    assert [r[0] for r in rows] == [s[0] for s in source]
    for _, name, category, day, text, status, tokens_in, tokens_out, cost, batch in rows:
        assert day == DAY
        assert status == "succeeded"
        assert f"description for: {name} ({category})" in text  # derived from its own row
        assert tokens_in > 0 and tokens_out > 0 and cost > 0
        assert batch.startswith("msgbatch_")
    (batch_id,) = {r[-1] for r in rows}
    billed = [entry for entry in ledger(emulator) if entry["batch_id"] == batch_id]
    assert len(billed) == len(rows)
    assert any(
        line.startswith("cost:") and "standard API would have cost" in line for line in lines
    )


def test_running_a_partition_again_sends_nothing_and_keeps_the_same_rows(
    demo_db: Path, emulator: str
) -> None:
    run_partition(pipeline(), DAY, FAST)
    first = query(demo_db, "SELECT * FROM product_descriptions ORDER BY product_id")
    batches_before = upstream_batches(emulator)
    billed_before = len(ledger(emulator))

    lines = run_partition(pipeline(), DAY, FAST)

    assert query(demo_db, "SELECT * FROM product_descriptions ORDER BY product_id") == first
    assert upstream_batches(emulator) == batches_before
    assert len(ledger(emulator)) == billed_before
    assert query(demo_db, "SELECT count(*) FROM batchpipe_batches") == [(1,)]
    assert "30 built, 0 to send, 30 reused" in lines[0]


def test_a_partition_run_replaces_only_its_own_rows(demo_db: Path, emulator: str) -> None:
    other = DAY + dt.timedelta(days=1)
    run_partition(pipeline(), DAY, FAST)
    run_partition(pipeline(), other, FAST)
    execute(demo_db, "UPDATE products SET name = 'Renamed Lamp' WHERE product_id = 2")

    run_partition(pipeline(), DAY, FAST)  # the edited row's request is new: only it is sent

    counts = query(
        demo_db, "SELECT partition_date, count(*) FROM product_descriptions GROUP BY 1 ORDER BY 1"
    )
    assert counts == [(DAY, 30), (other, 30)]
    (text,) = query(demo_db, "SELECT description FROM product_descriptions WHERE product_id = 2")
    assert "Renamed Lamp" in text[0]
    sent = query(demo_db, "SELECT request_count FROM batchpipe_batches ORDER BY intent_at")
    assert sent == [(30,), (30,), (1,)]


def test_an_interrupted_submission_is_adopted_not_sent_again(
    demo_db: Path, private_emulator
) -> None:
    """A crash between the create call and recording its id leaves an intent row without a
    batch id; the next run finds the batch through the list endpoint instead of paying twice."""
    url = private_emulator()
    pf = pipeline()
    steps.build_requests(pf, DAY, print)
    # The state a run leaves when it dies right after the create call went out.
    # Each request goes out under its custom_id and the submission's token.
    execute(
        demo_db,
        "INSERT INTO batchpipe_batch_requests SELECT 'crashed', custom_id, request_hash, "
        "custom_id || '-crashed' FROM batchpipe_requests",
    )
    execute(
        demo_db,
        "INSERT INTO batchpipe_batches (submission_id, pipeline, partition_date, state, "
        "request_count, model, intent_at) VALUES ('crashed', ?, ?, 'submitting', 30, "
        "'claude-haiku-4-5', now()::TIMESTAMP)",
        [pf.pipeline.name, DAY],
    )
    requests = [
        {"custom_id": f"{cid}-crashed", "params": json.loads(params)}
        for cid, params in query(demo_db, "SELECT custom_id, params FROM batchpipe_requests")
    ]
    api = anthropic.Anthropic(api_key="test", base_url=url)
    sent = api.messages.batches.create(requests=requests)

    run_partition(pf, DAY, FAST)

    assert upstream_batches(url) == [sent.id]
    assert len(ledger(url)) == 30
    assert query(demo_db, "SELECT DISTINCT batch_id FROM product_descriptions") == [(sent.id,)]


def test_identical_requests_are_sent_once_and_answer_every_row(
    demo_db: Path, emulator: str
) -> None:
    execute(
        demo_db,
        "UPDATE products SET name = 'Twin Lamp', category = 'home' WHERE product_id IN (2, 12)",
    )
    run_partition(pipeline(), DAY, FAST)
    texts = query(
        demo_db, "SELECT description FROM product_descriptions WHERE product_id IN (2, 12)"
    )
    assert texts[0] == texts[1] and "Twin Lamp (home)" in texts[0][0]
    (batch_id,) = query(demo_db, "SELECT batch_id FROM batchpipe_batches")[0]
    assert len([e for e in ledger(emulator) if e["batch_id"] == batch_id]) == 29


def test_a_partition_is_split_at_max_batch_requests(demo_db: Path, emulator: str) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace(
            "  max_tokens: 200\n", "  max_tokens: 200\n  max_batch_requests: 7\n"
        )
    )
    lines = run_partition(pipeline(), DAY, FAST)
    sizes = query(demo_db, "SELECT request_count FROM batchpipe_batches ORDER BY request_count")
    assert sorted(s for (s,) in sizes) == [2, 7, 7, 7, 7]
    # Each batch is estimated for its own requests, not given the whole partition's: the
    # batches add up to the partition's estimate (made from characters before counting).
    (estimate,) = [float(x.split("estimated $")[1]) for x in lines if "estimated $" in x]
    shares = query(demo_db, "SELECT request_count, estimated_usd FROM batchpipe_batches")
    assert sum(usd for _, usd in shares) == pytest.approx(estimate, rel=0.3)
    per_request = [usd / n for n, usd in shares]
    assert max(per_request) == pytest.approx(min(per_request), rel=0.2)
    assert query(
        demo_db, "SELECT count(*) FROM product_descriptions WHERE result_status = 'succeeded'"
    ) == [(30,)]


def test_request_wait_in_the_file_polls_inside_the_run(demo_db: Path, private_emulator) -> None:
    private_emulator(latency=2)  # ends well after a run that did not wait would have finished
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace("  max_tokens: 200\n", "  max_tokens: 200\n  wait: true\n")
    )
    lines = run_partition(pipeline(), DAY, BatchpipeResource(poll_seconds=0.1))  # wait unset
    assert any("30 succeeded, 0 errored, 0 expired" in line for line in lines)


def test_without_wait_batch_status_returns_while_the_batch_is_open(
    demo_db: Path, private_emulator
) -> None:
    private_emulator(latency=60)  # ends long after the run
    lines = run_partition(pipeline(), DAY, BatchpipeResource(poll_seconds=0.1, wait=False))
    assert any("1 batch(es) still processing" in line for line in lines)  # for the sensor
    assert not any(line.startswith("enriched:") for line in lines)  # nothing claimed
    assert query(demo_db, "SELECT state FROM batchpipe_batches") == [("submitted",)]
    # no output rows without answers: the table is written once the batch has ended
    tables = query(demo_db, "SELECT table_name FROM information_schema.tables")
    assert ("product_descriptions",) not in tables
