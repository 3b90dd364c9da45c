"""A results file goes into DuckDB whole, matched by custom_id, or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from batchpipe import pricing, results, state
from batchpipe.errors import BatchApiError

MODEL = "claude-haiku-4-5"


def _succeeded(custom_id: str, text: str, usage: dict) -> dict:
    message = {
        "id": "msg_01",
        "type": "message",
        "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "toolu_01", "name": "t", "input": {"a": [1]}},
        ],
        "stop_reason": "end_turn",
        "usage": usage | {"service_tier": "batch", "server_tool_use": None},
    }
    return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}


def _errored(custom_id: str) -> dict:
    error = {"type": "invalid_request_error", "message": "max_tokens: too large"}
    body = {"type": "error", "error": error, "request_id": None}
    return {"custom_id": custom_id, "result": {"type": "errored", "error": body}}


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    state.create(con)
    con.execute(
        # Rows recorded before wire ids (wire_id NULL): results name the plain custom_id.
        "INSERT INTO batchpipe_batch_requests (submission_id, custom_id, request_hash) "
        "VALUES ('s1', 'a', 'ha'), ('s1', 'b', 'hb'), "
        "('s1', 'c', 'hc')"
    )
    return con


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_each_line_lands_once_with_text_tokens_and_cost(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    usage = {
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
    }
    path = _write(
        tmp_path / "r.jsonl",
        [
            _succeeded("b", "hello", usage),
            _errored("a"),
            {"custom_id": "c", "result": {"type": "expired"}},
        ],
    )
    files = [results.ResultsFile("s1", "msgbatch_1", path, 3)]
    loaded = results.load_results_files(con, "p", MODEL, files)
    assert loaded == 3
    rows = con.execute(
        "SELECT custom_id, request_hash, result_type, text, stop_reason, input_tokens, "
        "output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd, "
        "standard_cost_usd, error_type, error_message FROM batchpipe_results ORDER BY custom_id"
    ).fetchall()
    assert rows[0][:4] == ("a", "ha", "errored", None)
    assert rows[0][-2:] == ("invalid_request_error", "max_tokens: too large")
    # Only the text block is the reply; thinking and tool blocks are skipped by type.
    assert rows[1][:9] == ("b", "hb", "succeeded", "hello", "end_turn", 120, 30, 2000, 500)
    assert rows[1][9] == pytest.approx(pricing.cost_usd(MODEL, usage, batch=True))
    assert rows[1][10] == pytest.approx(pricing.cost_usd(MODEL, usage, batch=False))
    assert rows[2][:4] == ("c", "hc", "expired", None)
    state = con.execute("SELECT count(*) FROM batchpipe_results WHERE batch_id = 'msgbatch_1'")
    assert state.fetchone() == (3,)


def test_a_line_for_a_request_never_sent_loads_nothing_of_any_file(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    con.execute(
        "INSERT INTO batchpipe_batch_requests (submission_id, custom_id, request_hash) "
        "VALUES ('s2', 'd', 'hd')"
    )
    usage = {"input_tokens": 10, "output_tokens": 5}
    fine = _write(tmp_path / "fine.jsonl", [_succeeded("d", "fine", usage)])
    path = _write(
        tmp_path / "r.jsonl",
        [_succeeded("a", "fine", usage), _succeeded("stranger-9", "not ours", usage)],
    )
    files = [
        results.ResultsFile("s2", "msgbatch_1", fine, 1),
        results.ResultsFile("s1", "msgbatch_2", path, 2),
    ]
    with pytest.raises(
        BatchApiError,
        match=r"batch msgbatch_2 returned 1 result\(s\) for requests it was not sent "
        r"\(e.g. stranger-9\)",
    ):
        results.load_results_files(con, "p", MODEL, files)
    assert con.execute("SELECT count(*) FROM batchpipe_results").fetchone() == (0,)


def test_several_files_load_in_one_go_each_to_its_own_batch(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    con.execute(
        "INSERT INTO batchpipe_batch_requests (submission_id, custom_id, request_hash) "
        "VALUES ('s2', 'd', 'hd')"
    )
    usage = {"input_tokens": 10, "output_tokens": 5}
    first = _write(tmp_path / "1.jsonl", [_succeeded("a", "A", usage), _errored("b")])
    second = _write(tmp_path / "2.jsonl", [_succeeded("d", "D", usage)])
    files = [
        results.ResultsFile("s1", "msgbatch_1", first, 2),
        results.ResultsFile("s2", "msgbatch_2", second, 1),
    ]
    assert results.load_results_files(con, "p", MODEL, files) == 3
    rows = con.execute(
        "SELECT batch_id, custom_id, request_hash, text FROM batchpipe_results ORDER BY custom_id"
    ).fetchall()
    assert rows == [
        ("msgbatch_1", "a", "ha", "A"),
        ("msgbatch_1", "b", "hb", None),
        ("msgbatch_2", "d", "hd", "D"),
    ]


def test_lines_are_matched_by_wire_id_and_a_copy_with_the_same_keys_is_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A request goes out as `<custom_id>-<submission token>`: its result is stored under
    the request's own custom_id, and a line naming the same custom_id without this
    submission's token (a copy of the pipeline on the same API key) loads nothing."""
    con.execute("INSERT INTO batchpipe_batch_requests VALUES ('s3', 'e', 'he', 'e-0123456789ab')")
    usage = {"input_tokens": 10, "output_tokens": 5}
    theirs = _write(tmp_path / "theirs.jsonl", [_succeeded("e-ba9876543210", "theirs", usage)])
    with pytest.raises(BatchApiError, match="returned 1 result"):
        results.load_results_files(con, "p", MODEL, [results.ResultsFile("s3", "b1", theirs, 1)])
    ours = _write(tmp_path / "ours.jsonl", [_succeeded("e-0123456789ab", "ours", usage)])
    assert results.load_results_files(con, "p", MODEL, [results.ResultsFile("s3", "b2", ours, 1)])
    assert con.execute("SELECT custom_id, text FROM batchpipe_results").fetchall() == [
        ("e", "ours")
    ]
