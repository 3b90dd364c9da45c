"""How mistakes are reported together: every problem of a file at once, across files.

One mistake per file, with its message, is the corpus in tests/bad_pipelines/ (checked
by test_bad_pipelines.py through the command line); this file keeps what one broken
file cannot show."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpipe.errors import ConfigError
from batchpipe.loader import load_file, load_pipelines
from tests.support import resolve_problem

GOOD = """\
name: product_descriptions
source:
  table: products
  key: product_id
  partition_column: added_on
request:
  model: claude-haiku-4-5
  max_tokens: 200
  system: You are a concise product copywriter.
  prompt: "Write a 2-sentence description for: {{ name }} ({{ category }})"
output:
  table: product_descriptions
  column: description
partitions:
  start: 2026-11-01
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    return caught.value.problems


def test_the_example_pipelines_load() -> None:
    files = load_pipelines(Path(__file__).parent.parent / "pipelines")
    assert {pf.pipeline.name for pf in files} == {
        "invoice_fields",
        "photo_alt_text",
        "product_descriptions",
        "review_replies",
        "review_sentiment",
        "ticket_triage",
    }


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("max_tokens: 200", "max_tokens: lots").replace("name: product", "name: P")
    problems = problems_of(write(tmp_path, text))
    assert any(":1:" in p and "name:" in p for p in problems)
    assert any(
        ":8:" in p and "request.max_tokens: Input should be a valid integer" in p for p in problems
    )


def test_duplicate_pipeline_names_are_refused(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(ConfigError, match=r"b\.yaml:1:1: name: 'product_descriptions' is already"):
        load_pipelines(tmp_path)


def test_every_warehouse_problem_of_a_file_is_reported_at_once(demo_db: Path) -> None:
    text = (
        GOOD.replace("key: product_id", "key: product_di")
        .replace("{{ category }}", "{{ colour }}")
        .replace("claude-haiku-4-5", "claude-haiku-4.5")
    )
    message = resolve_problem(demo_db, write(demo_db, text))
    path = demo_db / "p.yaml"
    assert f"{path}:7:3: request.model: unknown model 'claude-haiku-4.5'" in message
    assert (
        f"{path}:4:3: source.key: key column 'product_di' is not in the source; did you "
        "mean 'product_id'?" in message
    )
    assert f"{path}:10:3: request.prompt: {{{{ colour }}}} is not a column" in message
