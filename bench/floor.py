"""DuckDB's floor for one partition, in a process of its own so its CPU is its own.

The three bare statements of `bench/baselines.py` on the run's own database and
results files: the COPY of the request JSONL, the `read_json` of the results, the
CREATE TABLE AS of the enriched shape. The benchmark runs this through
`bench/reap.py`, which reads the process's CPU (DuckDB's threads included) from the
kernel; this script times each statement's wall and drops its tables after.

    .venv/bin/python bench/floor.py NAME --db FILE --out REQUESTS.jsonl RESULTS.jsonl...

Prints one JSON line: each statement's seconds and the rows of the enriched table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.baselines import (
    ENRICHED_TABLE,
    RESULTS_TABLE,
    enriched_sql,
    read_results_sql,
    requests_copy_sql,
)


def run(name: str, db: Path, out: Path, results: list[str]) -> dict:
    """Each statement timed; the tables dropped after, so the database is as it was."""
    import duckdb

    statements = {
        "copy_s": (requests_copy_sql(name, out), []),
        "read_json_s": (read_results_sql(), [results]),
        "write_s": (enriched_sql(name), []),
    }
    figures: dict[str, float] = {}
    with duckdb.connect(str(db)) as con:
        for key, (sql, parameters) in statements.items():
            started = time.perf_counter()
            con.execute(sql, parameters)
            figures[key] = time.perf_counter() - started
        (rows,) = con.execute(f"SELECT count(*) FROM {ENRICHED_TABLE}").fetchone()
        con.execute(f"DROP TABLE {ENRICHED_TABLE}")
        con.execute(f"DROP TABLE {RESULTS_TABLE}")
    return {"figures": figures, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="text_bench or struct_bench")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the COPY writes")
    parser.add_argument("results", nargs="+", help="the results files batchpipe downloaded")
    args = parser.parse_args()
    print(json.dumps(run(args.name, args.db, args.out, args.results)))


if __name__ == "__main__":
    main()
