"""The bare DuckDB statements batchpipe's steps are held against, on the same data.

Each is the least a tool could do for the step: one COPY that writes the request
JSONL of the partition (the same params a pipeline sends), and one `read_json` of
the results files batchpipe downloaded into a table. They run in the benchmark's own
process after the measured run, on the run's own database and files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.workload import DATE, MAX_TOKENS, MODEL, STRUCT, STRUCT_JSON_SCHEMA


def requests_copy_sql(name: str, path: Path) -> str:
    """COPY of the partition's requests as `{"custom_id", "params"}` lines."""
    extra = ""
    if name == STRUCT:
        output_config = {"format": {"type": "json_schema", "schema": STRUCT_JSON_SCHEMA}}
        extra = f", 'output_config', '{json.dumps(output_config)}'::JSON"
    return f"""
        COPY (SELECT id::VARCHAR AS custom_id,
                     json_object('model', '{MODEL}', 'max_tokens', {MAX_TOKENS},
                                 'messages', json_array(json_object('role', 'user',
                                     'content', concat('Summarise: ', title, ' ', body))){extra})
                         AS params
              FROM items WHERE added_on = DATE '{DATE}') TO '{path}' (FORMAT json)
    """


def bare_copy_s(db: Path, name: str, out: Path) -> float:
    """Seconds for the bare COPY of `name`'s requests to `out`."""
    import duckdb

    with duckdb.connect(str(db)) as con:
        started = time.perf_counter()
        con.execute(requests_copy_sql(name, out))
        return time.perf_counter() - started


def bare_read_json_s(db: Path, files: list[str]) -> float:
    """Seconds for a bare `read_json` of `files` into a new table (dropped after)."""
    import duckdb

    with duckdb.connect(str(db)) as con:
        started = time.perf_counter()
        con.execute("CREATE TABLE bare_results AS SELECT * FROM read_json(?)", [files])
        elapsed = time.perf_counter() - started
        con.execute("DROP TABLE bare_results")
    return elapsed
