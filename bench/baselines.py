"""The bare DuckDB statements batchpipe's steps are held against, on the same data.

Each is the least a tool could do for its step: one COPY that writes the request JSONL
of the partition (the same params a pipeline sends), one `read_json` of the results
files batchpipe downloaded into a table, and one CREATE TABLE AS of the enriched shape
(the partition's source rows joined to the parsed answers). Together they are DuckDB's
floor for a partition; `bench/floor.py` runs them in a process of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.workload import DATE, MAX_TOKENS, MODEL, STRUCT, STRUCT_JSON_SCHEMA

RESULTS_TABLE = "floor_results"
ENRICHED_TABLE = "floor_enriched"


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


def read_results_sql() -> str:
    """The results files (a parameter: their paths) into a table, as DuckDB reads them."""
    return f"CREATE TABLE {RESULTS_TABLE} AS SELECT * FROM read_json(?)"


def enriched_sql(name: str) -> str:
    """The output table: each source row of the partition with its status and answer.
    A custom_id is batchpipe's `<key>-<suffix>`, so the key is its first part."""
    text = "r.result.message.content[1].text"
    if name == STRUCT:
        answer = (
            f"json_extract_string({text}, '$.label') AS label, "
            f"TRY_CAST(json_extract({text}, '$.score') AS DOUBLE) AS score"
        )
    else:
        answer = f"{text} AS summary"
    return f"""
        CREATE TABLE {ENRICHED_TABLE} AS
        SELECT i.*, r.result.type AS result_status, {answer}
        FROM items i JOIN {RESULTS_TABLE} r ON i.id = split_part(r.custom_id, '-', 1)::BIGINT
        WHERE i.added_on = DATE '{DATE}'
    """
