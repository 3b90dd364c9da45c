"""The benchmark's data and pipeline files, in one place so that batchpipe, the bare
DuckDB baselines, the tutorial loop and the test's reference run all see the same
rows, the same prompt and the same request options."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

DATE = dt.date(2026, 11, 3)
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 100
PROMPT = "Summarise: {{ title }} {{ body }}"
MAX_BATCH_REQUESTS = 100_000
TEXT, STRUCT = "text_bench", "struct_bench"
OUTPUT_TABLES = {TEXT: "text_out", STRUCT: "struct_out"}
# The columns each pipeline's answer lands in, in batchpipe's table and the loop's alike.
ANSWER_COLUMNS = {TEXT: ("summary",), STRUCT: ("label", "score")}

# What a user of the SDK writes by hand for the structured pipeline's output.schema
# (label: enum a|b|c, score: number); the loop sends it, so both send equal requests.
STRUCT_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "number"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}

COMMON = f"""\
source:
  table: items
  key: id
  partition_column: added_on
request:
  model: {MODEL}
  max_tokens: {MAX_TOKENS}
  prompt: "{PROMPT}"
  max_batch_requests: MAX_BATCH_REQUESTS
partitions:
  start: 2026-11-01
"""
OUTPUTS = {
    TEXT: f"output:\n  table: {OUTPUT_TABLES[TEXT]}\n  column: summary\n",
    STRUCT: (
        f"output:\n  table: {OUTPUT_TABLES[STRUCT]}\n  schema:\n"
        "    label: {type: enum, values: [a, b, c]}\n    score: {type: number}\n"
    ),
}

# ~300 characters varying per row: a few hashed words, then filler cut to length.
SOURCE_SQL = """
CREATE TABLE items AS
SELECT i::BIGINT AS id,
       'Item ' || i || ' ' || md5(i::VARCHAR)[1:8] AS title,
       left(md5(i::VARCHAR) || ' ' || md5((i * 7)::VARCHAR) || ' '
            || repeat('lorem ipsum dolor sit amet ', 12), 290 + (i % 21)::INTEGER) AS body,
       DATE '2026-11-03' AS added_on
FROM range({rows}) t(i)
"""


def pipeline_yaml(name: str, max_batch_requests: int = MAX_BATCH_REQUESTS) -> str:
    """The pipeline file `name`; only the batch size varies (the reference run splits)."""
    common = COMMON.replace("MAX_BATCH_REQUESTS", str(max_batch_requests))
    return f"name: {name}\n{common}{OUTPUTS[name]}"


@dataclass(frozen=True)
class Project:
    """One warehouse with its pipeline files and state: each measured run gets its own,
    so no run can reuse another's answers (batchpipe never pays twice for a request)."""

    root: Path
    rows: int
    source_s: float = 0.0  # seconds DuckDB took to build the source table

    @property
    def db(self) -> Path:
        return self.root / "bench.duckdb"

    @property
    def pipelines(self) -> Path:
        return self.root / "pipelines"

    def env(self, emulator_url: str) -> dict[str, str]:
        """The environment a batchpipe process of this project runs with: `make`'s
        variables pointed here, the emulator by URL, never a real API key."""
        env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
        env.update(
            BATCHPIPE_DB=str(self.db),
            BATCHPIPE_PIPELINES=str(self.pipelines),
            BATCHPIPE_STATE=str(self.root / "state"),
            DAGSTER_HOME=str(self.root / "dagster"),
            ANTHROPIC_BASE_URL=emulator_url,
        )
        return env


def make_project(root: Path, rows: int, max_batch_requests: int = MAX_BATCH_REQUESTS) -> Project:
    """A new project under `root`: the source table of `rows` rows and both pipelines."""
    import duckdb

    (root / "pipelines").mkdir(parents=True)
    for name in OUTPUTS:
        (root / "pipelines" / f"{name}.yaml").write_text(pipeline_yaml(name, max_batch_requests))
    with duckdb.connect(str(root / "bench.duckdb")) as con:
        started = time.perf_counter()
        con.execute(SOURCE_SQL.format(rows=rows))
        source_s = time.perf_counter() - started
    _init_dagster_home(root / "dagster")
    return Project(root, rows, source_s)


def _init_dagster_home(home: Path) -> None:
    """Create the instance's storage now, as `make` users have it after their first run,
    so the first measured run does not pay for creating Dagster's databases."""
    import dagster as dg

    from batchpipe.runs import prepare_dagster_home

    prepare_dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
