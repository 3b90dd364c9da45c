"""The command line as a person uses it: real processes, real output, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import batchpipe, ledger, start_emulator

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


def test_a_bad_file_fails_with_its_location_and_sends_nothing(
    demo_db: Path, emulator_url: str
) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(path.read_text().replace("{{ category }}", "{{ colour }}"))
    billed = len(ledger(emulator_url))

    result = batchpipe(
        "run", "product_descriptions", "--date", DAY, env={"ANTHROPIC_BASE_URL": emulator_url}
    )

    assert result.returncode == 1
    assert f"{path}:13:3: request.prompt: {{{{ colour }}}} is not a column" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(ledger(emulator_url)) == billed


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


def test_unknown_pipeline_and_early_date_are_plain_errors(demo_db: Path) -> None:
    unknown = batchpipe("run", "nope", "--date", DAY)
    assert unknown.returncode == 1
    assert "no pipeline named nope (pipelines: product_descriptions, review_replies, " in (
        unknown.stderr
    )
    early = batchpipe("run", "product_descriptions", "--date", "2026-10-01")
    assert early.returncode == 1
    assert "2026-10-01 is before the first partition of product_descriptions" in early.stderr
    assert not (demo_db / ".batchpipe" / "emulator").exists()  # nothing was started


def test_a_bad_memory_limit_names_the_variable(demo_db: Path) -> None:
    run = batchpipe(
        "run", "product_descriptions", "--date", DAY, env={"BATCHPIPE_MEMORY_LIMIT": "lots"}
    )
    assert run.returncode == 1
    assert "BATCHPIPE_MEMORY_LIMIT='lots' is not a DuckDB memory size such as 1GB" in run.stderr
    assert "Traceback" not in run.stderr


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


def test_a_wrong_api_key_is_a_clear_error_and_never_shown_or_stored(
    demo_db: Path, tmp_path: Path
) -> None:
    secret = "sk-ant-api03-not-the-right-key-0123456789"
    process, url = start_emulator(tmp_path / "locked", api_key="the-right-key")
    try:
        result = batchpipe(
            "run",
            "product_descriptions",
            "--date",
            DAY,
            env={"ANTHROPIC_API_KEY": secret, "ANTHROPIC_BASE_URL": url},
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert result.returncode == 1
    assert "the Batches API refused the batch (401): API key is invalid." in result.stderr
    assert "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr
    stored = b"".join(p.read_bytes() for p in demo_db.rglob("*") if p.is_file())
    assert secret.encode() not in stored


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
