"""The baseline batchpipe must beat: the loop of the usual Batches tutorial.

What a competent user writes without batchpipe: fetch the partition's rows, render
each prompt with Jinja2 in Python (the template compiled once), build the request
dicts, create batches of at most 100,000 with the official SDK, poll `retrieve`
until each has ended, iterate the SDK's typed results into a Python list, and load
that list into DuckDB in one statement.

The load: DuckDB's Python API scans a dict of NumPy arrays registered as a view
(`con.register`, then `CREATE TABLE t AS SELECT * FROM view`), one statement, no
pandas or pyarrow (neither is installed). That is the quickest bulk path open to
plain Python; row by row `executemany` would be far slower (issue 6: ~24 s per
50,000 rows) and would only flatter batchpipe.

    .venv/bin/python bench/loop.py NAME --db FILE --url EMULATOR_URL

Prints one JSON line: the time of each phase and the rows loaded. Writes the table
`loop_<NAME>` (custom_id and the output columns) into the database.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.workload import (
    DATE,
    MAX_BATCH_REQUESTS,
    MAX_TOKENS,
    MODEL,
    PROMPT,
    STRUCT,
    STRUCT_JSON_SCHEMA,
)

POLL_SECONDS = 1.0  # what `batchpipe run` waits between polls of the emulator


@contextmanager
def phase(figures: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to figures[name]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        figures[name] = figures.get(name, 0.0) + time.perf_counter() - started


def params_for(name: str, prompt: str) -> dict:
    """One request's params, as the pipeline file asks for them."""
    params: dict = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    }
    if name == STRUCT:
        params["output_config"] = {"format": {"type": "json_schema", "schema": STRUCT_JSON_SCHEMA}}
    return params


def submit_all(con, client, name: str, figures: dict[str, float]) -> list[str]:
    """Fetch, render and send the rows a batch at a time (the API's cap is 100,000);
    one batch's requests are in memory at once."""
    import jinja2

    template = jinja2.Template(PROMPT)
    with phase(figures, "fetch"):
        cursor = con.execute("SELECT * FROM items WHERE added_on = ?", [DATE])
        columns = [d[0] for d in cursor.description]
    batch_ids = []
    while True:
        with phase(figures, "fetch"):
            rows = cursor.fetchmany(MAX_BATCH_REQUESTS)
        if not rows:
            return batch_ids
        with phase(figures, "render"):
            requests = []
            for values in rows:
                row = dict(zip(columns, values, strict=True))
                requests.append(
                    {
                        "custom_id": str(row["id"]),
                        "params": params_for(name, template.render(**row)),
                    }
                )
        with phase(figures, "submit"):
            batch_ids.append(client.messages.batches.create(requests=requests).id)


def wait_all(client, batch_ids: list[str]) -> None:
    """Poll every batch until all have ended (the API has no webhooks)."""
    while any(client.messages.batches.retrieve(b).processing_status != "ended" for b in batch_ids):
        time.sleep(POLL_SECONDS)


def collect(client, name: str, batch_ids: list[str]) -> dict[str, list]:
    """Every result as plain values, column by column, from the SDK's typed objects."""
    columns: dict[str, list] = {"custom_id": [], "result_status": []}
    fields = ["label", "score"] if name == STRUCT else ["summary"]
    for field in fields:
        columns[field] = []
    for batch_id in batch_ids:
        for entry in client.messages.batches.results(batch_id):
            columns["custom_id"].append(entry.custom_id)
            columns["result_status"].append(entry.result.type)
            text = None
            if entry.result.type == "succeeded":
                text = "".join(b.text for b in entry.result.message.content if b.type == "text")
            if name == STRUCT:
                value = json.loads(text) if text else {}
                columns["label"].append(value.get("label"))
                columns["score"].append(value.get("score"))
            else:
                columns["summary"].append(text)
    return columns


def load(con, name: str, columns: dict[str, list]) -> None:
    """One statement: DuckDB scans the registered dict of NumPy arrays in place."""
    import numpy as np

    data = {
        key: np.array(values, dtype=np.float64 if key == "score" else object)
        for key, values in columns.items()
    }
    con.register("loop_rows", data)
    con.execute(f"CREATE OR REPLACE TABLE loop_{name} AS SELECT * FROM loop_rows")
    con.unregister("loop_rows")


def run(name: str, db: Path, url: str) -> dict:
    """The whole loop, each phase timed; the total is from connecting to loaded."""
    import anthropic
    import duckdb

    figures: dict[str, float] = {}
    started = time.perf_counter()
    client = anthropic.Anthropic(base_url=url, api_key="bench-loop")
    with duckdb.connect(str(db)) as con:
        batch_ids = submit_all(con, client, name, figures)
        with phase(figures, "wait"):
            wait_all(client, batch_ids)
        with phase(figures, "parse"):
            columns = collect(client, name, batch_ids)
        with phase(figures, "load"):
            load(con, name, columns)
    figures["total"] = time.perf_counter() - started
    return {"figures": figures, "rows": len(columns["custom_id"]), "batches": len(batch_ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="text_bench or struct_bench")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--url", required=True, help="the emulator batchpipe used")
    args = parser.parse_args()
    print(json.dumps(run(args.name, args.db, args.url)))


if __name__ == "__main__":
    main()
