"""The command line as a person uses it: real processes, real output, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import batchpipe

pytestmark = pytest.mark.slow

DAY = "2026-11-03"


def test_run_without_key_starts_an_emulator_once_and_reuses_it(demo_db: Path) -> None:
    state = demo_db / ".batchpipe" / "emulator" / "server.json"
    try:
        first = batchpipe("run", "product_descriptions", "--date", DAY)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("using the local Batches API emulator at http://127.0.0.1:") == 1
        assert "started in the background" in first.stdout
        assert (
            "enriched:     30 rows (30 succeeded, 0 errored, 0 expired, 0 canceled, 0 missing)"
            in (first.stdout)
        )

        second = batchpipe("run", "--all", "--date", DAY)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        assert "== review_replies 2026-11-03" in second.stdout
        assert "30 built, 0 to send, 30 reused" in second.stdout

        shown = batchpipe("show", "product_descriptions", "--date", DAY)
        assert "Emulated reply to: Write a 2-sentence description for: Cinder Lamp" in shown.stdout
        assert "the standard API would have cost" in shown.stdout
    finally:
        if state.exists():
            os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_validate_reports_every_broken_file_and_costs_nothing(demo_db: Path) -> None:
    pipelines = demo_db / "pipelines"
    descriptions = pipelines / "product_descriptions.yaml"
    descriptions.write_text(descriptions.read_text().replace("table: products", "table: nope"))
    replies = pipelines / "review_replies.yaml"
    replies.write_text(replies.read_text().replace("  key: review_id\n", ""))

    result = batchpipe("validate")

    assert result.returncode == 1
    assert f"{replies}:4:1: source.key: required key is missing" in result.stderr
    assert f"{descriptions}:5:3: source.table: table 'nope' does not exist" in result.stderr
    assert "ok  review_sentiment" in result.stdout  # the good files are still checked
    assert "Traceback" not in result.stderr


def test_validating_and_planning_without_an_api_load_neither_dagster_nor_the_sdk(
    demo_db: Path,
) -> None:
    """Only what talks to the API imports them, so `batchpipe validate FILE` starts fast."""
    script = """
import datetime as dt, sys
from batchpipe import cli, plan
from batchpipe.loader import load_pipelines
assert cli.main(["validate"]) == 0
for pf in load_pipelines():
    plan.forecast(pf, dt.date(2026, 11, 3), None)
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith(("dagster", "anthropic"))}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stdout


def test_dagster_cli_materializes_one_partition(demo_db: Path, emulator_url: str) -> None:
    """The command README shows for Dagster's own CLI."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "asset",
            "materialize",
            "-m",
            "batchpipe.definitions",
            "--select",
            "group:product_descriptions",
            "--partition",
            DAY,
            # wait inside the run, as `batchpipe run` does; without it the sensor finishes
            "--config-json",
            '{"resources": {"batchpipe": {"config": {"wait": true}}}}',
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANTHROPIC_BASE_URL": emulator_url},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = batchpipe("show", "product_descriptions", "--date", DAY, "--limit", "30")
    assert shown.stdout.count("│ succeeded ") == 30


def test_new_writes_a_starter_that_validates(demo_db: Path) -> None:
    made = batchpipe("new", "ticket_summary", "--table", "tickets")
    assert made.returncode == 0, made.stderr
    path = demo_db / "pipelines" / "ticket_summary.yaml"
    text = path.read_text()
    assert "key: ticket_id" in text and "partition_column: opened_on" in text
    assert "start: 2026-11-01" in text and "{{ body }}" in text
    checked = batchpipe("validate", str(path))
    assert checked.returncode == 0 and "ok  ticket_summary" in checked.stdout
    again = batchpipe("new", "ticket_summary", "--table", "tickets")
    assert again.returncode == 1 and "already exists" in again.stderr
