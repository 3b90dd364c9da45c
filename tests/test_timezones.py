"""Time zones and dates: which rows a run date holds, and the text a timestamp prompts.

A TIMESTAMPTZ partition column is read in the pipeline's `partitions.timezone` (UTC by
default), never in the zone of the shell that runs batchpipe: a rerun from another
machine builds the same requests, so it sends and pays nothing. Rows whose partition
column is NULL fall on no date; validate and plan say how many.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from batchpipe import estimates, pipeline_sql, requests, resolve, state
from batchpipe.cli import main
from batchpipe.loader import load_file
from tests.support import batchpipe, ledger, query

DAY = dt.date(2026, 11, 3)

# Rows near midnight UTC: in New York (UTC-5 in November) e1 falls on 2026-11-02 and e3
# on 2026-11-03; e4 falls on no date at all.
EVENTS = """
CREATE OR REPLACE TABLE events AS SELECT * FROM (VALUES
    ('e1', TIMESTAMPTZ '2026-11-03 02:00:00+00', 'arrived'),
    ('e2', TIMESTAMPTZ '2026-11-03 23:30:00+00', 'left'),
    ('e3', TIMESTAMPTZ '2026-11-04 03:00:00+00', 'returned'),
    ('e4', NULL, 'lost')
) AS t(event_id, happened_at, note)
"""

PIPELINE = """\
name: {name}
source:
  table: events
  key: event_id
  partition_column: happened_at{where}
request:
  model: claude-haiku-4-5
  max_tokens: 50
  prompt: "{prompt}"
output:
  table: {name}_out
  column: reply
partitions:
  start: 2026-11-01{timezone}
"""
# The same text on both template paths: `{% if %}` makes the second one Jinja's.
SQL_PROMPT = "At {{ happened_at }}: {{ note }}"
JINJA_PROMPT = "At {{ happened_at }}:{% if note %} {{ note }}{% endif %}"


@pytest.fixture
def events(demo_db: Path) -> Path:
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute(EVENTS)
    return demo_db


def write(
    project: Path, name: str, prompt: str, *, timezone: str | None = None, where: str = ""
) -> Path:
    path = project / "pipelines" / f"{name}.yaml"
    path.write_text(
        PIPELINE.format(
            name=name,
            prompt=prompt,
            timezone=f"\n  timezone: {timezone}" if timezone else "",
            where=f'\n  where: "{where}"' if where else "",
        )
    )
    return path


def built(path: Path, date: dt.date = DAY) -> dict[str, str]:
    """Build the date's requests as a run does: custom_id -> the prompt's text."""
    pf = load_file(path)
    with state.connect() as con:
        requests.build_requests(con, resolve.resolve(pf, con), date)
        rows = con.execute(
            "SELECT custom_id, params FROM batchpipe_requests "
            "WHERE pipeline = ? AND partition_date = ? ORDER BY custom_id",
            [pf.pipeline.name, date],
        ).fetchall()
    return {custom_id: json.loads(params)["messages"][0]["content"] for custom_id, params in rows}


def test_dates_and_prompts_are_utc_by_default(events: Path) -> None:
    assert built(write(events, "ev_sql", SQL_PROMPT)) == {
        "e1": "At 2026-11-03 02:00:00+00: arrived",
        "e2": "At 2026-11-03 23:30:00+00: left",
    }
    assert built(write(events, "ev_jinja", JINJA_PROMPT)) == built(events / "pipelines/ev_sql.yaml")


def test_the_pipeline_zone_decides_the_day_and_the_text(events: Path) -> None:
    """In New York, 2026-11-04 03:00 UTC is the evening of 2026-11-03, and says so."""
    expected = {
        "e2": "At 2026-11-03 18:30:00-05: left",
        "e3": "At 2026-11-03 22:00:00-05: returned",
    }
    ny_sql = write(events, "ny_sql", SQL_PROMPT, timezone="America/New_York")
    assert built(ny_sql) == expected
    ny_jinja = write(events, "ny_jinja", JINJA_PROMPT, timezone="America/New_York")
    assert built(ny_jinja) == expected
    assert built(ny_sql, DAY - dt.timedelta(days=1)) == {"e1": "At 2026-11-02 21:00:00-05: arrived"}


def test_the_sql_clock_stays_utc_in_a_pipeline_zone(events: Path) -> None:
    """After a partition's rows are read in its zone the session stays there, but the
    state tables hold UTC: a prompt cache warmed two minutes ago is still warm at UTC+14
    (`now()::TIMESTAMP` would be 14 hours ahead of every stored stamp)."""
    with state.connect() as con:
        con.execute(
            "INSERT INTO batchpipe_results BY NAME SELECT 'ev' AS pipeline, 'b' AS batch_id, "
            "'e1' AS custom_id, 'h' AS request_hash, 'succeeded' AS result_type, "
            "0 AS cache_creation_input_tokens, 10 AS cache_read_input_tokens, "
            "CAST(? AS TIMESTAMP) AS loaded_at",
            [dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=2)],
        )
        pipeline_sql.bind_date(con, DAY, "Pacific/Kiritimati")
        assert con.execute("SELECT current_setting('TimeZone')").fetchone() == (
            "Pacific/Kiritimati",
        )
        assert estimates.cache_is_warm(con, "ev", "5m")


def test_validate_and_plan_count_the_rows_that_fall_on_no_date(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(events, "ev_sql", SQL_PROMPT)
    note = (
        f"note: {path}:5:3: source.partition_column: 1 source row(s) have no happened_at "
        "(NULL) and fall on no date: they are never sent"
    )
    assert main(["validate", str(path)]) == 0  # a note is no error
    shown = capsys.readouterr()
    assert note in shown.err and "ok  ev_sql" in shown.out

    assert main(["plan", "ev_sql", "--date", str(DAY)]) == 0
    shown = capsys.readouterr()
    assert note in shown.err and "rows:          2" in shown.out

    # The rows source.where leaves out are no concern of the pipeline's.
    filtered = write(events, "ev_sql", SQL_PROMPT, where="note <> 'lost'")
    assert main(["validate", str(filtered)]) == 0
    assert "note:" not in capsys.readouterr().err
    filtered = write(events, "ev_sql", SQL_PROMPT, where="note <> 'arrived'")
    assert main(["validate", str(filtered)]) == 0
    assert "1 source row(s) that source.where keeps have no happened_at" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_rerun_from_a_shell_in_another_zone_sends_nothing(events: Path, private_emulator) -> None:
    """The same partition, run from a UTC shell and then from a New York one, on both
    template paths: same rows, same prompts, nothing billed the second time."""
    url = private_emulator(latency=0)
    write(events, "ev_sql", SQL_PROMPT)
    write(events, "ev_jinja", JINJA_PROMPT)

    def state() -> tuple[list, list]:
        requests = query(
            events,
            "SELECT pipeline, custom_id, CAST(params AS VARCHAR) FROM batchpipe_requests "
            "WHERE partition_date = ? ORDER BY ALL",
            [DAY],
        )
        rows = query(
            events,
            "SELECT 'sql', event_id, partition_date, reply, result_status FROM ev_sql_out "
            "UNION ALL SELECT 'jinja', event_id, partition_date, reply, result_status "
            "FROM ev_jinja_out ORDER BY ALL",
        )
        return requests, rows

    first = batchpipe("run", "ev_sql", "ev_jinja", "--date", str(DAY), env={"TZ": "UTC"})
    assert first.returncode == 0, first.stderr
    billed = ledger(url)
    assert len(billed) == 4
    before = state()
    prompts = {json.loads(params)["messages"][0]["content"] for *_, params in before[0]}
    assert prompts == {"At 2026-11-03 02:00:00+00: arrived", "At 2026-11-03 23:30:00+00: left"}
    assert [row[1] for row in before[1]] == ["e1", "e2", "e1", "e2"]

    second = batchpipe(
        "run", "ev_sql", "ev_jinja", "--date", str(DAY), env={"TZ": "America/New_York"}
    )
    assert second.returncode == 0, second.stderr
    assert ledger(url) == billed
    assert state() == before
