"""The benchmark measures what batchpipe really produces (issue 6: "do not change what a
pipeline produces to get a number").

The benchmark's own code path (`bench.pipeline.measure`) runs at a few hundred rows and
keeps its warehouse; then a reference run of the same pipeline files on a copy of the
same source rows goes through the plain CLI (a fresh warehouse, an emulator of its own,
Dagster's defaults, batches of 150 so there are several), and the enriched tables must
match row for row. The tutorial loop's output must match batchpipe's too, so the
"x faster than the loop" ratio compares equal work, and the benchmark's own row-for-row
figure must say so (and must catch a difference). The big partition runs at a few hundred
rows too, checked every row once; the fixed cost once, its parts adding up. No figure
here is a result: the numbers come from `make bench`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from bench.checks import row_for_row
from bench.pipeline import measure
from bench.report import report
from bench.workload import DATE, MAX_BATCH_REQUESTS, OUTPUT_TABLES, STRUCT, TEXT
from tests.support import batchpipe, start_emulator

pytestmark = pytest.mark.slow

ROWS = 400
BIG_ROWS = 600
REFERENCE_BATCH = 150
# Legitimately different between two runs: the ids the API gave the batches.
RUN_SPECIFIC = {"batch_id"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The benchmark's main warehouse (kept) and its figures; no profile, one CLI timing."""
    keep = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ANTHROPIC_API_KEY", raising=False)
        figures = measure(ROWS, keep, profile_rows=0, fixed_repeats=1, big_rows=BIG_ROWS)
    return keep / "main" / "bench.duckdb", figures


@pytest.fixture(scope="module")
def reference(bench: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same files and rows through `batchpipe run`, with nothing of the bench's."""
    bench_db, _ = bench
    root = tmp_path_factory.mktemp("reference")
    pipelines = root / "pipelines"
    shutil.copytree(bench_db.parent / "pipelines", pipelines)
    for path in pipelines.glob("*.yaml"):
        text = path.read_text()
        setting = f"max_batch_requests: {MAX_BATCH_REQUESTS}"
        assert setting in text
        path.write_text(text.replace(setting, f"max_batch_requests: {REFERENCE_BATCH}"))
    db = root / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(f"ATTACH '{bench_db}' AS bench (READ_ONLY)")
        con.execute("CREATE TABLE items AS SELECT * FROM bench.items")
    process, url = start_emulator(root / "emulator", latency=0.0)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.delenv("ANTHROPIC_API_KEY", raising=False)
            env.delenv("DAGSTER_HOME", raising=False)
            done = batchpipe(
                *("run", TEXT, STRUCT, "--date", DATE.isoformat()),
                env={
                    "BATCHPIPE_DB": str(db),
                    "BATCHPIPE_PIPELINES": str(pipelines),
                    "BATCHPIPE_STATE": str(root / "state"),
                    "ANTHROPIC_BASE_URL": url,
                },
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    return db


def _both(bench_db: Path, reference_db: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"ATTACH '{bench_db}' AS b (READ_ONLY)")
    con.execute(f"ATTACH '{reference_db}' AS r (READ_ONLY)")
    return con


def _columns(con: duckdb.DuckDBPyConnection, database: str, table: str) -> list[str]:
    return [
        name
        for (name,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? "
            "ORDER BY column_index",
            [database, table],
        ).fetchall()
    ]


def _difference(con: duckdb.DuckDBPyConnection, left: str, right: str) -> list[tuple]:
    """Rows of `left` (a query) that `right` lacks, duplicates counted."""
    return con.execute(f"({left}) EXCEPT ALL ({right}) LIMIT 5").fetchall()


def test_source_is_the_issue_workload(bench: tuple[Path, dict]) -> None:
    """N rows of ~300-character prompts, all on the benchmark's date."""
    bench_db, _ = bench
    with duckdb.connect(str(bench_db), read_only=True) as con:
        rows, chars, dates = con.execute(
            "SELECT count(*), avg(length(title) + length(body)), count(DISTINCT added_on) "
            "FROM items"
        ).fetchone()
    assert (rows, dates) == (ROWS, 1)
    assert 280 <= chars <= 340


@pytest.mark.parametrize("name", [TEXT, STRUCT])
def test_bench_enriched_table_equals_reference_run(
    bench: tuple[Path, dict], reference: Path, name: str
) -> None:
    bench_db, _ = bench
    table = OUTPUT_TABLES[name]
    con = _both(bench_db, reference)
    columns = _columns(con, "b", table)
    assert columns == _columns(con, "r", table)
    kept = ", ".join(f'"{c}"' for c in columns if c not in RUN_SPECIFIC)
    ours, theirs = f"SELECT {kept} FROM b.{table}", f"SELECT {kept} FROM r.{table}"
    assert con.execute(f"SELECT count(*) FROM b.{table}").fetchone()[0] == ROWS
    assert con.execute(f"SELECT count(*) FROM r.{table}").fetchone()[0] == ROWS
    assert _difference(con, ours, theirs) == []
    assert _difference(con, theirs, ours) == []
    statuses = con.execute(f"SELECT DISTINCT result_status FROM b.{table}").fetchall()
    assert statuses == [("succeeded",)]  # so equal tables are not equal failures
    batches = con.execute(f"SELECT count(DISTINCT batch_id) FROM r.{table}").fetchone()[0]
    assert batches == -(-ROWS // REFERENCE_BATCH)


def test_text_replies_answer_the_whole_prompt(bench: tuple[Path, dict]) -> None:
    """The emulator echoes the prompt (cut at max_tokens): each row's prompt reached it,
    title and body, not a shorter stand-in."""
    bench_db, _ = bench
    with duckdb.connect(str(bench_db), read_only=True) as con:
        (missing,) = con.execute(
            f"SELECT count(*) FROM {OUTPUT_TABLES[TEXT]} "
            "WHERE NOT contains(summary, 'Summarise: ' || title || ' ' || left(body, 200))"
        ).fetchone()
    assert missing == 0


@pytest.mark.parametrize(
    ("name", "fields"), [(TEXT, "summary"), (STRUCT, "label, score")], ids=[TEXT, STRUCT]
)
def test_loop_baseline_does_the_same_work(bench: tuple[Path, dict], name: str, fields: str) -> None:
    bench_db, figures = bench
    assert figures["pipelines"][name]["loop"]["rows"] == ROWS
    ours = f"SELECT CAST(id AS VARCHAR), {fields} FROM {OUTPUT_TABLES[name]}"
    loop = f"SELECT custom_id, {fields} FROM loop_{name} WHERE result_status = 'succeeded'"
    with duckdb.connect(str(bench_db), read_only=True) as con:
        assert _difference(con, ours, loop) == []
        assert _difference(con, loop, ours) == []


@pytest.mark.parametrize("name", [TEXT, STRUCT])
def test_row_for_row_figure_says_equal_and_catches_a_change(
    bench: tuple[Path, dict], name: str, tmp_path: Path
) -> None:
    bench_db, figures = bench
    assert figures["pipelines"][name]["row_for_row"] == row_for_row(bench_db, name)
    assert figures["pipelines"][name]["row_for_row"]["differing"] == 0
    assert figures["pipelines"][name]["row_for_row"]["rows"] == ROWS
    changed = tmp_path / "changed.duckdb"
    shutil.copy(bench_db, changed)
    with duckdb.connect(str(changed)) as con:
        con.execute(f"UPDATE loop_{name} SET result_status = 'errored' WHERE custom_id = '7'")
    assert row_for_row(changed, name)["differing"] == 2  # one row each way


@pytest.mark.parametrize("name", [TEXT, STRUCT])
def test_cpu_and_batch_end_figures(bench: tuple[Path, dict], name: str) -> None:
    """Each process's CPU is the kernel's, the floor did the whole partition, and the
    last batch ended before the enriched partition was written, within the run."""
    _, figures = bench
    pipe = figures["pipelines"][name]
    for process in ("run", "floor", "loop"):
        assert 0 < pipe[process]["cpu_s"] < 10 * pipe[process]["process_s"]
    assert pipe["floor"]["rows"] == ROWS
    run = pipe["run"]
    assert run["batch_ids"]
    assert 0 <= run["last_batch_to_enriched_s"] < run["process_s"]


def test_big_partition_has_every_row_once(bench: tuple[Path, dict]) -> None:
    bench_db, figures = bench
    big = figures["big"]
    assert "error" not in big
    assert big["every_row"]["ok"]
    assert big["every_row"]["rows"] == big["every_row"]["keys"] == BIG_ROWS
    assert big["every_row"]["sampled"] > 0
    assert big["disk_peak"]["emulator"] >= big["disk_end"]["emulator"] > 0
    assert big["disk_peak"]["state"] >= big["disk_end"]["state"]
    assert 0 <= big["run"]["last_batch_to_enriched_s"] < big["run"]["process_s"]
    with duckdb.connect(
        str(bench_db.parent.parent / "big" / "bench.duckdb"), read_only=True
    ) as con:
        table = OUTPUT_TABLES[TEXT]
        (missing,) = con.execute(
            f"SELECT count(*) FROM items LEFT JOIN {table} USING (id) WHERE {table}.id IS NULL"
        ).fetchone()
    assert missing == 0


def test_fixed_cost_parts_add_up(bench: tuple[Path, dict]) -> None:
    _, figures = bench
    fixed = figures["fixed"]
    parts = dict(fixed["timeline"])
    assert {"step `requests`", "step `enriched`"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(fixed["end_to_end_s"], abs=0.01)
    assert set(fixed["imports"]) == {
        "interpreter",
        "anthropic",
        "dagster",
        "duckdb",
        "batchpipe.runs",
    }
    assert 0 < fixed["validate_s"] < fixed["end_to_end_s"]


def test_report_covers_every_target(bench: tuple[Path, dict]) -> None:
    _, figures = bench
    text = report(figures, "bench/pipeline.py --rows 400")
    for target in ("≤ 60 s", "≥ 5x", "≤ 2x", "≤ 1.5 GB", "≤ 1.5x", "≥ 5x (CPU)", "≤ 2 s", "≤ 1 s"):
        assert target in text
    for figure in ("equal (400 rows)", "≤ 1.2 GB", "within 12x", "Results as batches end"):
        assert figure in text
    assert "make bench" in text and "--big-rows" in text
