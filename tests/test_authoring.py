"""What an analyst writes, run for real on the emulator: structured output, options,
template files, the plan, and the mistakes each gets explained."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from batchpipe import pipeline_sql, resolve
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.errors import ConfigError
from batchpipe.loader import load_file
from batchpipe.runs import run_partition
from tests.support import batchpipe, ledger, pipeline, query

DAY = dt.date(2026, 11, 3)
FAST = BatchpipeResource(poll_seconds=0.05, wait=True)


@pytest.fixture
def own_emulator(demo_db: Path, private_emulator) -> str:
    return private_emulator(latency=0.1)


@pytest.mark.slow
def test_structured_output_becomes_typed_columns(demo_db: Path, own_emulator: str) -> None:
    run_partition(pipeline("review_sentiment"), DAY, FAST)
    with duckdb.connect(str(demo_db / "warehouse.duckdb"), read_only=True) as con:
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'review_sentiment'"
            ).fetchall()
        )
        rows = con.execute(
            "SELECT label, score, aspects, is_spam, parse_error FROM review_sentiment"
        ).fetchall()
    assert types["label"] == "VARCHAR" and types["score"] == "DOUBLE"
    assert types["aspects"] == "VARCHAR[]" and types["is_spam"] == "BOOLEAN"
    assert rows and all(label in ("positive", "neutral", "negative") for label, *_ in rows)
    assert all(isinstance(aspects, list) for _, _, aspects, _, _ in rows)
    assert {error for *_, error in rows} == {None}


@pytest.mark.slow
def test_a_reply_cut_at_max_tokens_is_a_parse_error_not_a_crash(
    demo_db: Path, own_emulator: str
) -> None:
    path = demo_db / "pipelines" / "review_sentiment.yaml"
    path.write_text(path.read_text().replace("max_tokens: 300", "max_tokens: 8"))
    lines = run_partition(pipeline("review_sentiment"), DAY, FAST)
    errors = query(demo_db, "SELECT DISTINCT parse_error, label FROM review_sentiment")
    assert errors == [("the reply is not valid JSON (it was cut at max_tokens)", None)]
    assert any("enriched:" in line for line in lines)


@pytest.mark.slow
def test_the_plan_sends_nothing_and_its_tokens_match_the_bill(
    demo_db: Path, own_emulator: str
) -> None:
    """The cached example: count_tokens on the emulator gives the plan's input tokens; the
    run's ledger then bills within 10% of them, and the plan shows the cache saving."""
    shown = batchpipe("plan", "ticket_triage", "--date", str(DAY))
    assert shown.returncode == 0, shown.stderr
    assert ledger(own_emulator) == [] and "nothing was sent" in shown.stdout
    planned = int(shown.stdout.split("input tokens:")[1].split()[0].replace(",", ""))
    assert "count_tokens on every request" in shown.stdout
    assert "with prompt caching" in shown.stdout and "cached tokens a request" in shown.stdout

    run_partition(pipeline("ticket_triage"), DAY, FAST)
    billed = sum(
        e["input_tokens"] + e["cache_creation_input_tokens"] + e["cache_read_input_tokens"]
        for e in ledger(own_emulator)
    )
    assert abs(billed - planned) <= 0.1 * billed
    reads = [e["cache_read_input_tokens"] for e in ledger(own_emulator)]
    assert sum(1 for r in reads if r > 0) == len(reads) - 1  # one write, then reads


def test_request_options_reach_the_params(demo_db: Path) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace(
            "  max_tokens: 200\n",
            "  max_tokens: 200\n  effort: low\n  stop_sequences: [END]\n"
            "  inference_geo: us\n  metadata: {user_id: analyst-7}\n",
        )
    )
    pf = load_file(path)
    assert pipeline_sql.constant_params(pf) == {
        "output_config": {"effort": "low"},
        "stop_sequences": ["END"],
        "inference_geo": "us",
        "metadata": {"user_id": "analyst-7"},
    }


@pytest.mark.parametrize("option", ["temperature: 0.2", "top_p: 0.9", "top_k: 5"])
def test_removed_sampling_options_are_refused_with_the_reason(demo_db: Path, option: str) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace("  max_tokens: 200\n", f"  max_tokens: 200\n  {option}\n")
    )
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    name = option.split(":")[0]
    assert f"{path}:12:3: request.{name}: {name} was removed in API version 2026-10-21" in str(
        caught.value
    )


def test_a_missing_template_file_names_the_key(demo_db: Path) -> None:
    path = demo_db / "pipelines" / "ticket_triage.yaml"
    path.write_text(path.read_text().replace("file: ticket_triage_policy.md", "file: nope.md"))
    pf = load_file(path)
    with (
        duckdb.connect(str(demo_db / "warehouse.duckdb")) as con,
        pytest.raises(ConfigError) as caught,
    ):
        resolve.resolve(pf, con)
    assert "request.system.0.file: cannot read" in str(caught.value) and "nope.md" in str(
        caught.value
    )


def test_schema_shipped_with_the_examples_is_current() -> None:
    from batchpipe.config import json_schema

    shipped = json.loads((Path(__file__).parent.parent / "pipelines" / "schema.json").read_text())
    assert shipped == json_schema()


def test_new_points_its_schema_line_at_a_schema_beside_it(
    demo_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipelines folder of the user's own has no schema.json: `batchpipe new` writes the
    one its `$schema` line names, and it is the pipeline model's JSON Schema."""
    import jsonschema
    import yaml

    from batchpipe.cli import main
    from batchpipe.config import json_schema

    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.setenv("BATCHPIPE_PIPELINES", str(folder))
    assert main(["new", "ticket_summary", "--table", "tickets"]) == 0

    text = (folder / "ticket_summary.yaml").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    pointed = folder / first.split("$schema=", 1)[1]
    schema = json.loads(pointed.read_text())
    assert schema == json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # What an editor checks: the file as YAML text, its dates as strings.
    as_editor_sees_it = json.loads(json.dumps(yaml.safe_load(text), default=str))
    jsonschema.validate(as_editor_sees_it, schema)


def test_new_leaves_a_schema_that_is_there_alone(demo_db: Path) -> None:
    from batchpipe.starter import write_starter

    kept = demo_db / "pipelines" / "schema.json"
    kept.write_text('{"title": "the project\'s own"}')
    write_starter("ticket_summary", "tickets", demo_db / "pipelines")
    assert kept.read_text() == '{"title": "the project\'s own"}'


def write_pipeline(project: Path, text: str) -> None:
    (project / "pipelines" / "custom.yaml").write_text(text)


CUSTOM = """\
name: custom
source:
{source}
request:
  model: claude-haiku-4-5
  max_tokens: 100
{request}
output:
  table: custom_out
{output}
partitions:
  start: 2026-11-01
"""


@pytest.mark.slow
def test_where_columns_and_a_message_list(demo_db: Path, own_emulator: str) -> None:
    write_pipeline(
        demo_db,
        CUSTOM.format(
            source="  table: products\n  key: product_id\n  partition_column: added_on\n"
            "  where: category = 'kitchen'\n  columns: [name]",
            request="  prompt:\n    - {role: user, content: 'Name: {{ name }}'}\n"
            "    - {role: assistant, content: 'Noted.'}\n"
            "    - {role: user, content: 'Now describe {{ name }}'}",
            output="  column: text",
        ),
    )
    run_partition(pipeline("custom"), DAY, FAST)
    with duckdb.connect(str(demo_db / "warehouse.duckdb"), read_only=True) as con:
        columns = [r[0] for r in con.execute("DESCRIBE custom_out").fetchall()]
        rows = con.execute("SELECT name, text FROM custom_out").fetchall()
        kitchen = con.execute(
            "SELECT count(*) FROM products WHERE added_on = ? AND category = 'kitchen'", [DAY]
        ).fetchone()[0]
    assert columns[:3] == ["product_id", "name", "partition_date"]  # only the chosen columns
    assert len(rows) == kitchen > 0
    assert all(text == f"Emulated reply to: Now describe {name}" for name, text in rows)


@pytest.mark.slow
def test_a_query_reads_the_run_date_and_incremental_runs_take_new_rows(
    demo_db: Path, own_emulator: str
) -> None:
    write_pipeline(
        demo_db,
        CUSTOM.format(
            source='  query: "SELECT * FROM products WHERE added_on <= {{ partition_date }}"\n'
            "  key: product_id",
            request='  prompt: "Describe {{ name }}"',
            output="  column: text",
        ),
    )
    run_partition(pipeline("custom"), DAY, FAST)
    first = query(demo_db, "SELECT count(*) FROM custom_out WHERE partition_date = ?", [DAY])
    run_partition(pipeline("custom"), DAY + dt.timedelta(days=1), FAST)
    counts = query(demo_db, "SELECT partition_date, count(*) FROM custom_out GROUP BY 1 ORDER BY 1")
    # 11-01..11-03 added 90 rows; 11-04 takes only the 30 added that day
    assert first == [(90,)] and counts == [(DAY, 90), (DAY + dt.timedelta(days=1), 30)]
    assert query(demo_db, "SELECT count(DISTINCT product_id) FROM custom_out") == [(120,)]


@pytest.mark.slow
def test_append_mode_keeps_other_rows_and_never_duplicates(
    demo_db: Path, own_emulator: str
) -> None:
    write_pipeline(
        demo_db,
        CUSTOM.format(
            source="  table: products\n  key: product_id\n  partition_column: added_on",
            request='  prompt: "Describe {{ name }}"',
            # A table made outside batchpipe is written into only when the file says so.
            output="  column: text\n  mode: append\n  adopt_existing: true",
        ),
    )
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute(
            "CREATE TABLE custom_out AS SELECT *, DATE '2026-10-01' AS partition_date, "
            "'kept' AS text, 'succeeded' AS result_status, NULL::VARCHAR AS error_message, "
            "0::BIGINT AS input_tokens, 0::BIGINT AS output_tokens, 0::DOUBLE AS cost_usd, "
            "NULL::VARCHAR AS batch_id FROM products WHERE product_id = 1"
        )
    run_partition(pipeline("custom"), DAY, FAST)
    run_partition(pipeline("custom"), DAY, FAST)
    assert query(demo_db, "SELECT count(*), count(DISTINCT product_id) FROM custom_out") == [
        (31, 31)
    ]
    assert query(demo_db, "SELECT text FROM custom_out WHERE product_id = 1") == [("kept",)]


@pytest.mark.slow
def test_options_a_jinja_template_and_a_prompt_file_through_a_real_run(
    demo_db: Path, own_emulator: str
) -> None:
    (demo_db / "pipelines" / "describe.txt").write_text(
        "{% if price > 100 %}Premium: {% endif %}Describe {{ name | lower }}"
    )
    write_pipeline(
        demo_db,
        CUSTOM.format(
            source="  table: products\n  key: product_id\n  partition_column: added_on",
            request="  prompt_file: describe.txt\n  effort: low\n  stop_sequences: [ZZZ]\n"
            "  inference_geo: us\n  metadata: {user_id: analyst-7}\n"
            "  betas: [output-300k-2026-03-24]",
            output="  column: text",
        ),
    )
    run_partition(pipeline("custom"), DAY, FAST)
    rows = query(demo_db, "SELECT name, price, text, result_status FROM custom_out")
    assert len(rows) == 30 and {status for *_, status in rows} == {"succeeded"}
    for name, price, text, _ in rows:
        premium = "Premium: " if price > 100 else ""
        assert text == f"Emulated reply to: {premium}Describe {name.lower()}"
