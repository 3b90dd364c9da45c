"""Spend guardrails against the emulator and its ledger: budgets refuse before anything is
billed, concurrent runs never reserve past a shared limit, estimates learn from history,
and the spending report equals what was billed."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import anthropic
import dagster as dg
import duckdb
import pytest

from batchpipe.defs.assets import pipeline_assets
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.specs import source_spec
from batchpipe.runs import run_partition
from tests.support import batchpipe, ledger, pipeline, query, request_of, wait_ended

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 3)
FAST = BatchpipeResource(poll_seconds=0.05, wait=True)
PIPELINES = ("product_descriptions", "review_replies", "review_sentiment", "ticket_triage")


@pytest.fixture
def emulator(demo_db: Path, private_emulator) -> str:
    """An emulator of the test's own, so its ledger holds only this test's charges."""
    return private_emulator(latency=0.05)


def more_products(project: Path, rows: int, day: dt.date = DAY) -> None:
    """Extra products on `day`, so the partition costs more than a few cents' fraction."""
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute(
            "INSERT INTO products SELECT i, 'Extra item ' || i, 'home', 9.99, ? "
            "FROM range(1000, 1000 + ?) AS t(i)",
            [day, rows],
        )


def set_budget(project: Path, text: str, name: str = "product_descriptions") -> Path:
    """Put a `budget:` block in the pipeline file, replacing the one there."""
    path = project / "pipelines" / f"{name}.yaml"
    without = re.sub(r"\nbudget:\n(?:  .*\n)*", "\n", path.read_text())
    path.write_text(without.replace("\npartitions:\n", f"\nbudget:\n{text}partitions:\n", 1))
    return path


def billed(url: str) -> float:
    return sum(entry["usd"] for entry in ledger(url))


def skipped(project: Path) -> set[str]:
    return {r[0] for r in query(project, "SELECT custom_id FROM batchpipe_skipped")}


def test_a_budget_a_cent_under_the_cost_is_refused_at_no_charge_then_raised(
    demo_db: Path, emulator: str, tmp_path: Path
) -> None:
    more_products(demo_db, 300)
    reference = tmp_path / "reference.duckdb"  # the same partition, no budget: its cost
    subprocess.run(["cp", str(demo_db / "warehouse.duckdb"), str(reference)], check=True)
    env = {"BATCHPIPE_DB": str(reference), "BATCHPIPE_STATE": str(tmp_path / "ref-state")}
    assert batchpipe("run", "product_descriptions", "--date", str(DAY), env=env).returncode == 0
    cost = billed(emulator)
    assert cost > 0.02
    charges = len(ledger(emulator))

    limit = round(cost - 0.01, 4)
    path = set_budget(demo_db, f"  max_usd_per_run: {limit}\n")
    refused = batchpipe("run", "product_descriptions", "--date", str(DAY))
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr + refused.stdout
    assert f"budget: max_usd_per_run ${limit} for one partition ({path}:" in refused.stderr, (
        refused.stderr
    )
    assert "Already committed: $0.0000; the next batch would reserve up to $" in refused.stderr
    assert "330 request(s) up to $" in refused.stderr
    assert "recorded as skipped_budget; nothing of them was sent or billed" in refused.stderr
    assert len(ledger(emulator)) == charges  # $0 billed
    assert len(skipped(demo_db)) == 330
    assert query(demo_db, "SELECT count(*) FROM batchpipe_batches WHERE state <> 'failed'") == [
        (0,)
    ]

    set_budget(demo_db, "  max_usd_per_run: 5.00\n")
    assert batchpipe("run", "product_descriptions", "--date", str(DAY)).returncode == 0
    sent = [request_of(e["custom_id"]) for e in ledger(emulator)[charges:]]
    assert sorted(sent) == sorted(
        {r[0] for r in query(demo_db, "SELECT custom_id FROM batchpipe_requests")}
    )
    assert billed(emulator) - cost == pytest.approx(cost)  # the same partition, once more
    assert skipped(demo_db) == set()


def test_raising_the_budget_sends_only_what_was_refused(demo_db: Path, emulator: str) -> None:
    """Four batches; the budget lets the first ones through and refuses the rest."""
    more_products(demo_db, 300)
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace(
            "  max_tokens: 200\n", "  max_tokens: 200\n  max_batch_requests: 100\n"
        )
    )
    plan = batchpipe("plan", "product_descriptions", "--date", str(DAY))
    high = float(plan.stdout.split(" to $")[1].split(";")[0])
    # Batches of 100, 100, 100 and 30: room for two reservations, not three.
    limit = round(high * 0.75, 4)
    set_budget(demo_db, f"  max_usd_per_run: {limit}\n")

    first = batchpipe("run", "product_descriptions", "--date", str(DAY))
    assert first.returncode == 1
    assert "request(s) within the limit were sent" in first.stderr, first.stderr
    # The run stops at the refusal without waiting for what it sent: let that end.
    api = anthropic.Anthropic(api_key="test", base_url=emulator)
    for (batch_id,) in query(demo_db, "SELECT batch_id FROM batchpipe_batches"):
        wait_ended(api, batch_id)
    sent_first = Counter(request_of(e["custom_id"]) for e in ledger(emulator))
    refused = skipped(demo_db)
    assert sent_first and refused and not (set(sent_first) & refused)
    assert len(sent_first) + len(refused) == 330
    assert billed(emulator) <= limit

    set_budget(demo_db, "  max_usd_per_run: 5\n")
    second = batchpipe("run", "product_descriptions", "--date", str(DAY))
    assert second.returncode == 0, second.stderr
    charges = Counter(request_of(e["custom_id"]) for e in ledger(emulator))
    assert set(charges) - set(sent_first) == refused  # only what was refused went out
    assert max(charges.values()) == 1  # nothing paid twice
    statuses = query(
        demo_db,
        "SELECT result_status, count(*) FROM product_descriptions WHERE partition_date = ? "
        "GROUP BY ALL",
        [DAY],
    )
    assert statuses == [("succeeded", 330)]


@pytest.mark.parametrize("warehouse_kind", ["file", "ducklake"], indirect=True)
def test_five_partitions_at_once_never_reserve_past_one_daily_budget(
    demo_db: Path, emulator: str
) -> None:
    """Separate processes, one warehouse: they take turns on the DuckDB file, or write a
    DuckLake at once, where two intents committed together conflict and the later one's
    reservation is checked again; each batch's reservation is checked with its intent in
    one transaction."""
    run_partition(pipeline(), dt.date(2026, 11, 2), FAST)  # history, so reservations are tight
    seed = billed(emulator)
    per_partition = seed  # every demo day has 30 products of the same shape
    limit = round(seed + 2.5 * per_partition, 6)
    env = {**os.environ, "BATCHPIPE_MAX_USD_PER_DAY": str(limit), "BATCHPIPE_LOCK_WAIT": "120"}
    days = [dt.date(2026, 11, 3) + dt.timedelta(days=n) for n in range(5)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "batchpipe", "run", "product_descriptions", "--date", str(d)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in days
    ]
    outcomes = [(*p.communicate(timeout=300), p.returncode) for p in processes]

    assert billed(emulator) <= limit
    refused = [err for _, err, code in outcomes if code == 1]
    assert refused and len(refused) < 5
    for err in refused:
        assert f"budget: BATCHPIPE_MAX_USD_PER_DAY ${limit}" in err
        assert "for every pipeline on" in err and "(environment) would be passed" in err
    assert [code for *_, code in outcomes].count(0) == 5 - len(refused)
    assert max(Counter(request_of(e["custom_id"]) for e in ledger(emulator)).values()) == 1


def materialize(name: str, day: dt.date) -> dict[str, float]:
    """One partition through Dagster; the enriched asset's numeric cost metadata."""
    pf = pipeline(name)
    result = dg.materialize(
        [source_spec(pf), *pipeline_assets(pf)],
        partition_key=day.isoformat(),
        resources={"batchpipe": FAST},
    )
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "enriched"
    ]
    metadata = event.materialization.metadata
    return {k: v.value for k, v in metadata.items() if k.endswith("_usd")}


def test_estimates_learn_and_the_costs_table_and_report_match_the_ledger(
    demo_db: Path, emulator: str
) -> None:
    day1, day2 = DAY, DAY + dt.timedelta(days=1)
    before = batchpipe("plan", "ticket_triage", "--date", str(day1))
    assert "no history yet: at most max_tokens (400) a reply" in before.stdout

    shown: dict[tuple[str, dt.date], dict[str, float]] = {}
    for day in (day1, day2):
        for name in PIPELINES:
            shown[name, day] = materialize(name, day)

    after = batchpipe("plan", "ticket_triage", "--date", str(day2 + dt.timedelta(days=1)))
    assert "the pipeline's 18 latest replies: median" in after.stdout, after.stdout
    assert "95th percentile" in after.stdout and "count_tokens on every request" in after.stdout

    batch_pipeline = dict(query(demo_db, "SELECT batch_id, pipeline FROM batchpipe_batches"))
    batch_day = dict(query(demo_db, "SELECT batch_id, partition_date FROM batchpipe_batches"))
    by_partition: dict[tuple[str, dt.date], float] = defaultdict(float)
    for e in ledger(emulator):
        by_partition[batch_pipeline[e["batch_id"]], batch_day[e["batch_id"]]] += e["usd"]

    rows = query(
        demo_db,
        "SELECT pipeline, partition_date, model, requests, estimated_low_usd, "
        "estimated_expected_usd, estimated_high_usd, actual_usd, input_tokens, output_tokens "
        "FROM batchpipe_costs ORDER BY ALL",
    )
    assert {(r[0], r[1]) for r in rows} == set(shown)
    for name, day, model, requests, low, expected, high, actual, tokens_in, tokens_out in rows:
        assert actual == pytest.approx(by_partition[name, day], abs=1e-9)
        assert model == pipeline(name).pipeline.request.model and requests > 0
        assert tokens_in > 0 and tokens_out > 0
        assert low <= expected <= high and actual <= high
        metadata = shown[name, day]
        assert metadata["batchpipe/cost_usd"] == pytest.approx(actual, abs=1e-6)
        assert metadata["batchpipe/estimated_usd"] == pytest.approx(expected, abs=1e-6)
        assert metadata["batchpipe/estimated_high_usd"] == pytest.approx(high, abs=1e-6)
        if day == day2:  # one partition of history: the estimate is within 10% of the bill
            assert expected == pytest.approx(actual, rel=0.10), (name, expected, actual)

    report = batchpipe("costs", "--by", "pipeline", "--format", "json")
    assert report.returncode == 0, report.stderr
    for row in json.loads(report.stdout):
        spent = sum(v for (name, _), v in by_partition.items() if name == row["pipeline"])
        assert row["spent_usd"] == pytest.approx(spent, abs=1e-6)
        assert row["partitions"] == 2
        assert row["batch_saved_usd"] == pytest.approx(row["spent_usd"], abs=2e-6)  # half price
    caching = {r["pipeline"]: r["caching_saved_usd"] for r in json.loads(report.stdout)}
    assert caching["ticket_triage"] > 0 and caching["product_descriptions"] == 0

    since = batchpipe("costs", "product_descriptions", "--by", "model", "--format", "csv")
    (line,) = list(csv.DictReader(io.StringIO(since.stdout)))
    assert line["model"] == "claude-haiku-4-5"
    assert float(line["spent_usd"]) == pytest.approx(
        sum(v for (name, _), v in by_partition.items() if name == "product_descriptions"),
        abs=1e-6,
    )
    table = batchpipe("costs")
    total = sum(by_partition.values())
    assert f"spent ${total:.4f} at batch prices" in table.stdout
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert "no spending recorded yet" in batchpipe("costs", "--since", str(tomorrow)).stdout

    # The per-row record: every output row names its request, batch, attempt and model,
    # and what it cost is what the ledger billed for that request in that batch.
    charge = {(e["batch_id"], request_of(e["custom_id"])): e["usd"] for e in ledger(emulator)}
    lineage = query(
        demo_db,
        "SELECT o.batch_id, c.batch_id, c.custom_id, c.attempt, c.model, c.cost_usd "
        "FROM product_descriptions o JOIN batchpipe_request_costs c "
        "ON c.pipeline = 'product_descriptions' AND c.partition_date = o.partition_date "
        "AND c.custom_id = o.custom_id",
    )
    assert len(lineage) == 60
    for out_batch, batch_id, custom_id, attempt, model, cost in lineage:
        assert out_batch == batch_id and attempt == 1 and model == "claude-haiku-4-5"
        assert cost == pytest.approx(charge[batch_id, custom_id], abs=1e-9)
