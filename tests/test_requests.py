"""Requests are built in SQL, one per source row of the date, matched back by key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from batchpipe import pipeline_sql, requests, resolve, state
from batchpipe.loader import load_pipelines

DAY = dt.date(2026, 11, 3)


def build(
    project: Path, name: str = "product_descriptions"
) -> tuple[requests.RequestsSummary, list]:
    (pf,) = [f for f in load_pipelines() if f.pipeline.name == name]
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        state.create(con)
        summary = requests.build_requests(con, resolve.resolve(pf, con), DAY)
        rows = con.execute(
            "SELECT custom_id, params FROM batchpipe_requests WHERE partition_date = ? "
            "ORDER BY custom_id",
            [DAY],
        ).fetchall()
    return summary, rows


def test_one_request_per_row_of_the_date_with_rendered_prompt(demo_db: Path) -> None:
    summary, rows = build(demo_db)
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        expected = dict(
            con.execute(
                "SELECT CAST(product_id AS VARCHAR), name || ' (' || category || ')' "
                "FROM products WHERE added_on = ?",
                [DAY],
            ).fetchall()
        )
    assert summary.requests == len(expected) == 30
    for custom_id, params in rows:
        params = json.loads(params)
        assert params["model"] == "claude-haiku-4-5"
        assert params["max_tokens"] == 200
        assert params["system"] == "You are a concise product copywriter."
        assert params["messages"] == [
            {
                "role": "user",
                "content": f"Write a 2-sentence description for: {expected[custom_id]}",
            }
        ]


def test_timestamp_partition_column_takes_the_rows_of_that_day(demo_db: Path) -> None:
    summary, rows = build(demo_db, "review_replies")
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        (count,) = con.execute(
            "SELECT count(*) FROM reviews WHERE CAST(posted_at AS DATE) = ?", [DAY]
        ).fetchone()
    assert summary.requests == count == len(rows) > 0


def test_null_column_renders_as_empty_text(demo_db: Path) -> None:
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute("UPDATE products SET category = NULL WHERE product_id = 2")
    _, rows = build(demo_db)
    params = json.loads(dict(rows)["2"])
    assert params["messages"][0]["content"].endswith(": Cinder Lamp Mk 1 ()")


def test_rebuilding_a_partition_replaces_its_requests(demo_db: Path) -> None:
    build(demo_db)
    summary, rows = build(demo_db)
    assert summary.requests == len(rows) == 30


def test_a_list_of_key_columns_gives_readable_ids_and_keeps_the_mapping(demo_db: Path) -> None:
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(path.read_text().replace("key: product_id ", "key: [category, product_id]"))
    _, first = build(demo_db)
    _, second = build(demo_db)
    assert first == second  # stable
    ids = [custom_id for custom_id, _ in first]
    assert len(set(ids)) == 30 and "kitchen_2" in ids
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute("UPDATE products SET category = 'home & garden' WHERE product_id = 2")
        (mapping,) = con.execute(
            "SELECT key_values FROM batchpipe_requests WHERE custom_id = 'kitchen_2'"
        ).fetchone()
    assert json.loads(mapping) == {"category": "kitchen", "product_id": 2}
    _, third = build(demo_db)
    hashed = [i for i, _ in third if not i.startswith("kitchen_")]
    assert len(hashed) == 1 and hashed[0].startswith("h-")  # '&' and ' ' do not fit the rule


def test_sql_and_jinja_templates_build_the_same_requests(demo_db: Path) -> None:
    """The fast path (one SQL expression) and the Jinja fallback agree request for request."""
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    original = path.read_text()
    simple = "\"Describe {{ name | upper }} for {{ category | default('all') }}: {{ price }}\""
    path.write_text(original.replace(original.split("prompt: ")[1].split("\n")[0], simple))
    _, fast = build(demo_db)
    jinja = (
        "\"{% if true %}Describe {{ name | upper }} for {{ category | default('all') }}"
        ': {{ price }}{% endif %}"'
    )
    path.write_text(original.replace(original.split("prompt: ")[1].split("\n")[0], jinja))
    _, slow = build(demo_db)
    assert fast == slow and len(fast) == 30
    texts = [json.loads(params)["messages"][0]["content"] for _, params in fast]
    assert any(t.startswith("Describe CINDER LAMP MK 1 for kitchen: ") for t in texts)


# md5 over "custom_id request_hash" lines of each example pipeline's 2026-11-03 partition,
# as batchpipe has always built them. A change here changes every request's identity: a
# re-run would send, and pay for, requests already answered. Change it only on purpose.
STABLE_HASHES = {
    "product_descriptions": "31378be844aa7542a572182baec164f0",
    "review_replies": "d845bfe7385c96ab27ffdad21f85f199",
    "review_sentiment": "da82f54969b3f56ef3bf97967f5a0c42",
    "ticket_triage": "46ea6da38a344742a38f4e4b9fa39aa1",
}


@pytest.mark.parametrize("name", sorted(STABLE_HASHES))
def test_request_identity_does_not_change_between_versions(demo_db: Path, name: str) -> None:
    build(demo_db, name)
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        (digest,) = con.execute(
            "SELECT md5(string_agg(custom_id || ' ' || request_hash, '\n' ORDER BY custom_id)) "
            "FROM batchpipe_requests WHERE pipeline = ? AND partition_date = ?",
            [name, DAY],
        ).fetchone()
    assert digest == STABLE_HASHES[name]


def test_params_text_is_what_json_object_writes_for_awkward_values(project: Path) -> None:
    """Params are written by concatenation for speed; their text (and so every request's
    hash) must be byte for byte what DuckDB's json_object gives, whatever the row holds."""
    awkward = [
        'quote " backslash \\ slash /',
        "newline \n tab \t return \r",
        "control \x01\x1f bell \x07",
        "accents é ü, CJK 漢字, emoji 😀, RTL עברית",
        "",
        None,
    ]
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute("CREATE TABLE notes (id INTEGER, body VARCHAR, added_on DATE)")
        con.executemany(
            "INSERT INTO notes VALUES (?, ?, ?)", [(i, v, DAY) for i, v in enumerate(awkward)]
        )
    (project / "pipelines" / "awkward.yaml").write_text(
        "name: awkward\nsource: {table: notes, key: id, partition_column: added_on}\n"
        "request:\n  model: claude-haiku-4-5\n  max_tokens: 50\n"
        '  system: "Be brief about {{ body }}"\n'
        '  prompt: "Say: {{ body }}!"\n'
        "output:\n  table: awkward_out\n  schema:\n    label: {type: enum, values: [x, y]}\n"
        "partitions: {start: 2026-11-01}\n"
    )
    (pf,) = [f for f in load_pipelines() if f.pipeline.name == "awkward"]
    constant = json.dumps(pipeline_sql.constant_params(pf))
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        resolved = resolve.resolve(pf, con)
        rows = con.execute(
            f"SELECT {resolved.params_sql('s')}, CAST(json_object('model', 'claude-haiku-4-5', "
            "'max_tokens', 50, 'system', concat('Be brief about ', s.body), 'messages', "
            "json_array(json_object('role', 'user', 'content', concat('Say: ', s.body, '!'))), "
            "'output_config', json_extract(?::JSON, '$.output_config')) AS VARCHAR) "
            "FROM notes AS s ORDER BY id",
            [constant],
        ).fetchall()
    assert len(rows) == len(awkward)
    for (ours, reference), value in zip(rows, awkward, strict=True):
        assert ours == reference
        assert json.loads(ours)["messages"][0]["content"] == f"Say: {value or ''}!"


def test_batches_are_cut_by_count_and_split_by_bytes_only_when_one_is_too_big() -> None:
    """25 requests of 1,000 bytes, 10 a batch: 10, 10, 5 when every batch fits the byte
    cap, whatever the partition's total. A cap below one batch's bytes splits that batch
    (from its own first request) and no other: the cuts by bytes do not drift across
    batches, which once made 10 million rows 122 batches instead of 101."""
    import duckdb

    from batchpipe import state

    con = duckdb.connect()
    con.execute(
        "CREATE TEMP TABLE pending AS SELECT i AS rn, 1000 AS body_chars, NULL::BIGINT AS chunk "
        "FROM range(25) t(i)"
    )
    line = 1000 + state.LINE_OVERHEAD

    def sizes(max_bytes: int) -> list[int]:
        batches = state.cut_chunks(con, per_batch=10, max_bytes=max_bytes, now=25)
        counts = con.execute("SELECT chunk, count(*) FROM pending GROUP BY 1 ORDER BY 1")
        found = [n for _, n in counts.fetchall()]
        assert len(found) == batches
        return found

    assert sizes(max_bytes=15 * line) == [10, 10, 5]  # the total (25 lines) is over the cap
    # A cap of 8 lines and a bit: each batch of 10 splits 8 + 2, the last 5 stays whole.
    assert sizes(max_bytes=8 * line + 1000) == [8, 2, 8, 2, 5]
