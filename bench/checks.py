"""What the benchmark checks about a run's output, and what it asks the emulator after.

A figure is only worth reporting if the table behind it is right, so each measured
partition is checked in DuckDB: row for row against the tutorial loop's table (the
reference for the 1,000,000-row runs), or, for the ten-million-row run, every source
row once with an answer that is the emulator's reply to that row's prompt. The
emulator is asked, through the official SDK, when the partition's last batch ended.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from bench.workload import ANSWER_COLUMNS, DATE, OUTPUT_TABLES

EMULATOR_KEY = "batchpipe-emulator"  # what batchpipe sends with no ANTHROPIC_API_KEY
ECHO_SAMPLE = 1_000


def _connect(db: Path):
    import duckdb

    return duckdb.connect(str(db), read_only=True)


def batch_ids(db: Path, name: str) -> list[str]:
    """The batches the enriched partition's rows came from."""
    with _connect(db) as con:
        rows = con.execute(
            f"SELECT DISTINCT batch_id FROM {OUTPUT_TABLES[name]} WHERE partition_date = ?",
            [DATE],
        ).fetchall()
    return sorted(batch_id for (batch_id,) in rows if batch_id)


def last_batch_end(url: str, ids: list[str]) -> float | None:
    """The largest `ended_at` (time.time()) among `ids`, as the emulator lists them."""
    import anthropic

    wanted = set(ids)
    client = anthropic.Anthropic(base_url=url, api_key=EMULATOR_KEY)
    ends = [
        batch.ended_at.timestamp()
        for batch in client.messages.batches.list(limit=1000)
        if batch.id in wanted and batch.ended_at is not None
    ]
    return max(ends, default=None)


def download_results(url: str, ids: list[str], directory: Path) -> list[str]:
    """Each batch's results JSONL as the API serves it, for the floor to read when the
    run left no results files of its own (batchpipe may load them as they stream)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for batch_id in ids:
        path = directory / f"{batch_id}.jsonl"
        request = urllib.request.Request(
            f"{url}/v1/messages/batches/{batch_id}/results",
            headers={"x-api-key": EMULATOR_KEY, "anthropic-version": "2023-06-01"},
        )
        with urllib.request.urlopen(request, timeout=600) as response, path.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        paths.append(str(path))
    return paths


def _agreeing(name: str) -> str:
    return ", ".join(("result_status", *ANSWER_COLUMNS[name]))


def row_for_row(db: Path, name: str) -> dict:
    """batchpipe's enriched partition against the loop's table (`loop_<name>`) on the
    columns that must agree: the key, the result status and the answer. EXCEPT ALL both
    ways, duplicates counted, so `differing` 0 means the same multiset of rows."""
    ours = (
        f"SELECT CAST(id AS VARCHAR) AS key, {_agreeing(name)} FROM {OUTPUT_TABLES[name]} "
        f"WHERE partition_date = DATE '{DATE}'"
    )
    loop = f"SELECT custom_id AS key, {_agreeing(name)} FROM loop_{name}"
    with _connect(db) as con:
        (only_ours,) = con.execute(
            f"SELECT count(*) FROM (({ours}) EXCEPT ALL ({loop}))"
        ).fetchone()
        (only_loop,) = con.execute(
            f"SELECT count(*) FROM (({loop}) EXCEPT ALL ({ours}))"
        ).fetchone()
        (rows,) = con.execute(f"SELECT count(*) FROM ({ours})").fetchone()
    return {
        "rows": rows,
        "only_batchpipe": only_ours,
        "only_loop": only_loop,
        "differing": only_ours + only_loop,
        "columns": ["key", *_agreeing(name).split(", ")],
    }


def every_row_once(db: Path, name: str) -> dict:
    """The enriched partition has each source row once, each answered; and in a sample
    of ECHO_SAMPLE keys (every k-th), the answer is the emulator's reply to that row's
    own prompt (it echoes the prompt, cut at max_tokens). Cheap at ten million rows: the
    counts read two columns, the echo check a thousand rows."""
    table = OUTPUT_TABLES[name]
    answer = ANSWER_COLUMNS[name][0]
    with _connect(db) as con:
        source_rows, source_keys = con.execute(
            "SELECT count(*), count(DISTINCT id) FROM items WHERE added_on = ?", [DATE]
        ).fetchone()
        rows, keys, answered, succeeded = con.execute(
            f"SELECT count(*), count(DISTINCT id), count({answer}), "
            f"count(*) FILTER (result_status = 'succeeded') FROM {table} WHERE partition_date = ?",
            [DATE],
        ).fetchone()
        step = max(1, source_rows // ECHO_SAMPLE)
        sampled, echoed = con.execute(
            f"SELECT count(*), count(*) FILTER (contains({answer}, "
            "'Summarise: ' || title || ' ' || left(body, 200))) "
            f"FROM {table} WHERE partition_date = ? AND id % {step} = 0",
            [DATE],
        ).fetchone()
    return {
        "source_rows": source_rows,
        "source_keys": source_keys,
        "rows": rows,
        "keys": keys,
        "answered": answered,
        "succeeded": succeeded,
        "sampled": sampled,
        "echoed": echoed,
        "ok": rows == keys == source_rows == source_keys == answered == succeeded
        and sampled == echoed > 0,
    }
