"""Results files -> DuckDB: every paid line kept, matched to its request by wire id.

One statement parses the files (`read_json`) and inserts what batchpipe keeps, costed
in SQL; the batches are marked loaded in the same transaction, so a crash leaves them
either loaded or still to load. The steps load one batch at a time, as each ends, and
each file is removed once its batch is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from batchpipe import pricing, state, warehouse
from batchpipe.errors import BatchApiError
from batchpipe.failpoints import kill_point

# One results line as DuckDB parses it: read_json turns each line into these structs in
# one pass, ignoring the fields batchpipe does not keep (ids, thinking, tool input).
LINE_COLUMNS = (
    "{custom_id: 'VARCHAR', result: 'STRUCT("
    "type VARCHAR, "
    "message STRUCT(model VARCHAR, stop_reason VARCHAR, "
    f"content STRUCT(type VARCHAR, text VARCHAR)[], usage {pricing.USAGE_TYPE}), "
    "error STRUCT(error STRUCT(type VARCHAR, message VARCHAR)))'}"
)
# The text of a reply is its text blocks joined; thinking blocks (which come first on
# models that always think) and tool blocks are skipped by type, never by position.
TEXT_SQL = (
    "array_to_string(list_transform(list_filter(j.result.message.content, "
    "lambda b: b.type = 'text'), lambda b: b.text), '')"
)
USAGE = "j.result.message.usage"
# The same usage with every cache token billed as plain input: what caching saved.
UNCACHED = (
    f"{{'input_tokens': coalesce({USAGE}.input_tokens, 0) "
    f"+ coalesce({USAGE}.cache_creation_input_tokens, 0) "
    f"+ coalesce({USAGE}.cache_read_input_tokens, 0), "
    f"'output_tokens': {USAGE}.output_tokens, 'cache_creation_input_tokens': 0, "
    "'cache_read_input_tokens': 0, 'cache_creation': {'ephemeral_1h_input_tokens': 0}}"
)


# How the API words a request left unrun because the credit ran out mid-batch
# (bespokelabsai/curator#296: "Your credit balance is too low to access the Anthropic
# API..."): such lines are kept as errored_billing, unbilled and sent again later.
NO_CREDIT_SQL = (
    "j.result.type = 'errored' AND j.result.error.error.message ILIKE '%credit balance is too low%'"
)


def _usage(field: str) -> str:
    return f"coalesce({USAGE}.{field}, 0)"


@dataclass(frozen=True)
class ResultsFile:
    """A downloaded results file, the submission whose batch it answers, and how many
    lines it holds (the download checked that, so loading need not read it again)."""

    submission_id: str
    batch_id: str
    path: Path
    lines: int


def load_results_files(
    con: duckdb.DuckDBPyConnection, pipeline: str, model: str, files: list[ResultsFile]
) -> int:
    """Bulk-load ended batches' results, matched to requests by their wire custom_id (the
    request's custom_id and its submission's token), never by order.

    One statement parses the files and inserts what batchpipe keeps, and one
    transaction marks the batches loaded. A line for a request its batch was not
    sent makes the insert fall short of the files' line count, and it is all rolled
    back before anything is visible.
    """
    if not files:
        return 0
    for attempt in warehouse.transactions(con, "load the results"):
        with attempt:
            # Read in the transaction: a retry after a lost race sees what another
            # process loaded meanwhile, and leaves those batches alone.
            done = state.loaded_among(con, [f.submission_id for f in files])
            fresh = [f for f in files if f.submission_id not in done]
            sources = [[str(f.path), f.submission_id, f.batch_id] for f in fresh]
            loaded = 0
            if sources:
                loaded = state.insert_results(
                    con,
                    pipeline,
                    f"""{_lines("$paths")}
                    JOIN (SELECT s[1] AS path, s[2] AS submission_id, s[3] AS batch_id
                          FROM (SELECT unnest($sources::VARCHAR[][]) AS s)) AS f
                      ON f.path = j.filename""",
                    _result_columns(model),
                    {"sources": sources, "paths": [f[0] for f in sources]},
                    [f.submission_id for f in fresh],
                )
                if loaded != sum(f.lines for f in fresh):
                    raise _strangers(con, fresh)
                kill_point("mid_results_load")
                state.mark_loaded(con, [f.submission_id for f in fresh])
    # Committed: every field batchpipe reads of a line is in batchpipe_results now, and the
    # raw lines stay upstream for 29 days, so the files go (a 10-million-row partition's
    # were 9 GB). A crash before this leaves files of loaded batches, which nothing reads.
    for f in files:
        f.path.unlink(missing_ok=True)
    return loaded


def _result_columns(model: str) -> str:
    """batchpipe_results' columns from result_type on, from a parsed line `j`."""
    return f"""CASE WHEN {NO_CREDIT_SQL} THEN 'errored_billing' ELSE j.result.type END,
        CASE WHEN j.result.type = 'succeeded' THEN {TEXT_SQL} END,
        j.result.message.stop_reason, j.result.message.model,
        {_usage("input_tokens")}, {_usage("output_tokens")},
        {_usage("cache_creation_input_tokens")}, {_usage("cache_read_input_tokens")},
        {pricing.cost_sql(model, USAGE, batch=True)},
        {pricing.cost_sql(model, USAGE, batch=False)},
        j.result.error.error.type, j.result.error.error.message, timezone('UTC', now()),
        {pricing.cost_sql(model, UNCACHED, batch=True)}"""


def _lines(paths: str) -> str:
    return (
        f"read_json({paths}, format = 'newline_delimited', filename = true, "
        f"columns = {LINE_COLUMNS}) AS j"
    )


def _strangers(con: duckdb.DuckDBPyConnection, files: list[ResultsFile]) -> BatchApiError:
    for f in files:
        lines, ours, example = state.wire_matches(con, _lines("?"), f.path, f.submission_id)
        count = lines - ours
        if count:
            return BatchApiError(
                f"batch {f.batch_id} returned {count} result(s) for requests it was not sent "
                f"(e.g. {example}); nothing of it was loaded"
            )
    return BatchApiError("the results files' lines do not match their batches' requests one to one")
