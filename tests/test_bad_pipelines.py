"""The corpus of broken pipeline files: each names the line, the key and what was
expected, exits 1, shows no traceback, and costs nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.support import batchpipe, ledger

CORPUS = Path(__file__).parent / "bad_pipelines"
CASES = sorted(CORPUS.glob("*.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_each_broken_file_is_explained_at_its_line(demo_db: Path, case: Path) -> None:
    expected = case.read_text().splitlines()[0].removeprefix("# expect: ")
    result = batchpipe("validate", str(case))
    assert result.returncode == 1
    assert f"{case}:{expected}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_duplicate_keys_stop_the_run_before_anything_is_sent(
    demo_db: Path, emulator_url: str
) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(path.read_text().replace("key: product_id ", "key: category "))
    billed = len(ledger(emulator_url))
    result = batchpipe(
        "run", "product_descriptions", "--date", "2026-11-03",
        env={"ANTHROPIC_BASE_URL": emulator_url},
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{path}:7:3: source.key: the key is not unique on 2026-11-03: " in result.stderr
    assert "kitchen (30 rows). Choose columns unique per row" in result.stderr
    assert "Traceback" not in result.stderr and "dagster - ERROR" not in result.stderr
    assert len(ledger(emulator_url)) == billed


def test_a_date_without_rows_is_a_clear_no_op(demo_db: Path, emulator_url: str) -> None:
    billed = len(ledger(emulator_url))
    result = batchpipe(
        "run", "product_descriptions", "--date", str(dt.date(2026, 11, 20)),
        env={"ANTHROPIC_BASE_URL": emulator_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no source rows fall on 2026-11-20" in result.stdout
    assert "enriched:     0 rows" in result.stdout
    assert len(ledger(emulator_url)) == billed
