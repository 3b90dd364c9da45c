"""The steps of a partition, each a plain function the Dagster assets call.

Keeping them free of Dagster lets the CLI, the assets, the sensor and the
tests share one implementation; each step opens the warehouse as the single
writer, does its work in SQL, and returns a small summary that becomes asset
metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anthropic
import duckdb

from batchpipe import (
    batches,
    budget,
    canary,
    enriched,
    estimates,
    media_send,
    ownership,
    requests,
    results,
    state,
    warehouse,
)
from batchpipe.api import Outage
from batchpipe.errors import BatchApiError
from batchpipe.loader import PipelineFile
from batchpipe.resolve import resolve
from batchpipe.sqlcheck import quote_ident
from batchpipe.versions import request_version

Log = Callable[[str], None]


@contextlib.contextmanager
def _writing(pf: PipelineFile, date: dt.date, log: Log) -> Iterator[duckdb.DuckDBPyConnection]:
    """The warehouse, to write the partition's run state: on a DuckLake, with the
    partition's lock held, so two runs of one partition take turns (warehouse.partition),
    and a commit run again after a lost race said in the step's log."""
    with (
        warehouse.reporting(log),
        warehouse.partition(pf.pipeline.name, date),
        state.connect() as con,
    ):
        yield con


def build_requests(pf: PipelineFile, date: dt.date, log: Log) -> requests.RequestsSummary:
    with _writing(pf, date, log) as con:
        summary = requests.build_requests(con, resolve(pf, con), date)
    if summary.requests == 0:
        where = pf.pipeline.source.partition_column or "the incremental source"
        log(f"no source rows fall on {date} (by {where}); nothing to send")
    log(
        f"{summary.requests} rows on {date}: {summary.to_send} request(s) to send, "
        f"{summary.reused} reused (answered before, or the same as another row's); "
        f"estimated ${summary.estimate.whole.expected_usd:.4f} "
        f"(at most ${summary.estimate.whole.high_usd:.4f})"
    )
    if summary.media_files:
        log(
            f"media: {summary.media_files} distinct file(s), about "
            f"{summary.media_tokens:,} input tokens over the rows"
        )
    return summary


@dataclass
class Loaded:
    """Results copied into DuckDB so far by one step: batches and their result lines."""

    batches: int = 0
    lines: int = 0


@dataclass(frozen=True)
class BatchesSummary:
    """Where a partition's batches stand; `open_batch_ids` is what the sensor watches."""

    sent_now: int
    batch_ids: list[str]
    open_batch_ids: list[str]
    requests: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    estimated_usd: float
    hold: state.Hold | None = None
    loaded: Loaded = field(default_factory=Loaded)  # results copied as each batch ended


def _loading_as_they_end(
    pf: PipelineFile, date: dt.date, api: anthropic.Anthropic, log: Log
) -> tuple[Loaded, Callable[[], None]]:
    """A wait's `on_ended`: copy each batch's results into DuckDB as soon as it ends, in a
    write of its own (so `batchpipe cancel` still gets in between polls), and count them."""
    loaded = Loaded()

    def load() -> None:
        with _writing(pf, date, log) as con:
            _load_on(con, pf, date, api, log, loaded)

    return loaded, load


def _load_on(
    con: duckdb.DuckDBPyConnection,
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    log: Log,
    loaded: Loaded,
) -> None:
    subs = batches.open_submissions(con, pf.pipeline.name, date)
    ended = [s for s in subs if s.state == "ended"]
    if ended:
        loaded.lines += _load_ended(con, pf, ended, api, log)
        loaded.batches += len(ended)


def _polling_between_creates(
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    log: Log,
    loaded: Loaded,
    poll_seconds: float,
) -> Callable[[duckdb.DuckDBPyConnection], None]:
    """A send's `between`: while a partition of many batches is still being sent (10
    minutes for 100), poll its open batches at most every `poll_seconds` and load the
    ones that have ended, so none waits for the last create."""
    last = time.monotonic()

    def between(con: duckdb.DuckDBPyConnection) -> None:
        nonlocal last
        if time.monotonic() - last < poll_seconds:
            return
        last = time.monotonic()
        batches.poll(con, api, pf.pipeline.name, date, log, Outage(api, log))
        _load_on(con, pf, date, api, log, loaded)

    return between


def submit(
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    log: Log,
    *,
    wait: bool,
    poll_seconds: float,
) -> BatchesSummary:
    """Send what is pending; with `wait`, poll here until every batch has ended, sending
    what a queue or rate limit held back as it lets it."""
    loaded, load = _loading_as_they_end(pf, date, api, log)
    between = _polling_between_creates(pf, date, api, log, loaded, poll_seconds) if wait else None
    with _writing(pf, date, log) as con:
        if not state.request_count(con, pf.pipeline.name, date):
            requests.build_requests(con, resolve(pf, con), date)
        sent = _send_pending(con, pf, date, api, log, poll_seconds, between)
    while wait:  # without holding the warehouse: `batchpipe cancel` can get in
        batches.wait_until_ended(api, pf.pipeline.name, date, poll_seconds, log, load)
        with _writing(pf, date, log) as con:
            if state.hold_of(con, pf.pipeline.name, date) is None:
                break
            sent += _send_pending(con, pf, date, api, log, poll_seconds, between)
    with state.connect() as con:
        summary = _batches_summary(con, pf.pipeline.name, date, sent)
    return dataclasses.replace(summary, loaded=loaded)


def _send_pending(
    con: duckdb.DuckDBPyConnection,
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    log: Log,
    poll_seconds: float | None = None,
    between: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> int:
    # Every send goes through here, also a retry or a batch_status run on its own: the
    # output table must still be this pipeline's (resolve checked it when built).
    ownership.check_output_table(con, pf)
    name, request = pf.pipeline.name, pf.pipeline.request
    pending, chars = requests.pending_size(con, pf, date)
    interrupted = any(
        s.state in state.UNSENT_STATES for s in batches.open_submissions(con, name, date)
    )
    if not pending and not interrupted:
        state.clear_hold(con, name, date)
        log("nothing to send: every request is answered, final or in flight")
        return 0
    first = canary.decide(con, pf, date, pending)
    if first.action == "load":  # this partition's canary has ended: its errors decide
        ended = [
            s
            for s in batches.open_submissions(con, name, date)
            if s.submission_id in first.submission_ids
        ]
        _load_ended(con, pf, ended, api, log)
        pending, chars = requests.pending_size(con, pf, date)
        first = canary.decide(con, pf, date, pending)
    if first.action == "failed":
        state.clear_hold(con, name, date)
        raise BatchApiError(first.why)
    spend = None  # while a canary runs nothing new is sent, so nothing is priced
    if first.action != "wait":
        # Input tokens counted on a sample of what is pending, output learned from
        # history: each batch's intent records its estimate and reserves its high end.
        sample = con.execute(
            estimates.sample_sql(state.pending_params_sample_sql()),
            requests.pending_params(pf, date),
        ).fetchall()
        counted = [(json.loads(media_send.count_params(con, p)), c) for p, c in sample]
        estimate = estimates.for_pending(con, name, request, api, counted, pending, chars)
        spend = batches.Spend(estimate.per_batch, budget.limits(pf))
        if pending:
            whole = estimate.whole
            log(
                f"estimated ${whole.expected_usd:.4f} (${whole.low_usd:.4f} to "
                f"${whole.high_usd:.4f}) for {pending} request(s); input: "
                f"{estimate.input.basis}; output: {estimate.output.basis}"
            )
    if first.action == "send":
        log(first.why)
    betas = list(request.betas or ())
    if pf.pipeline.media.upload == "files_api":
        # Uploaded only when something goes out now: a canary's wait sends nothing, and
        # every upload is checked upstream before it is named.
        if first.action != "wait":
            media_send.upload_pending(con, api, name, date, request.max_attempts, log)
        betas.append(media_send.FILES_BETA)
    send = batches.Send(
        pipeline=name,
        date=date,
        model=request.model,
        max_attempts=request.max_attempts,
        max_requests=request.max_batch_requests,
        betas=tuple(dict.fromkeys(betas)),
        spend=spend,
        poll_seconds=request.poll_interval if poll_seconds is None else poll_seconds,
        limit={"send": first.size, "wait": 0}.get(first.action),
        held_why=first.why,
        request_version=request_version(pf),
        between=between,
    )
    return batches.submit_partition(con, api, send, log)


def _batches_summary(
    con: duckdb.DuckDBPyConnection, name: str, date: dt.date, sent: int
) -> BatchesSummary:
    batch_ids, *counts = state.partition_batches(con, name, date)
    # What the sensor polls: the partition's batches still running, and the candidates of
    # a create whose outcome is not yet known (their results decide whose they are).
    watched = state.watched_batch_ids(con, name, date)
    return BatchesSummary(sent, batch_ids, watched, *counts, hold=state.hold_of(con, name, date))


@dataclass(frozen=True)
class ResultsSummary:
    batches_loaded: int
    lines_loaded: int
    retried: int
    open_batch_ids: list[str] = field(default_factory=list)
    hold: state.Hold | None = None


def load_results(
    pf: PipelineFile,
    date: dt.date,
    api: anthropic.Anthropic,
    log: Log,
    *,
    wait: bool,
    poll_seconds: float,
    retry: bool = True,
) -> ResultsSummary:
    """Copy every ended batch's results into DuckDB at once (upstream keeps them 29 days),
    then send retryable failures again in a follow-up batch. With `wait`, keep going
    until nothing is in flight; without it, leave the follow-ups to the sensor.

    Each round opens the warehouse for its own writes and closes it before waiting, so
    another writer (`batchpipe cancel`) is never locked out by a run that waits. A
    submission whose candidate batch proved foreign is sent here (never after a cancel:
    `retry` False)."""
    name = pf.pipeline.name
    loaded_batches = lines = retried = 0
    early, load = _loading_as_they_end(pf, date, api, log)
    while True:
        with _writing(pf, date, log) as con:
            batches.poll(con, api, name, date, log, Outage(api, log))
            ended = [s for s in batches.open_submissions(con, name, date) if s.state == "ended"]
            if ended:
                lines += _load_ended(con, pf, ended, api, log)
                loaded_batches += len(ended)
            still_open = batches.open_submissions(con, name, date)
            if any(s.state in state.UNSENT_STATES for s in still_open):
                if retry:
                    _send_pending(con, pf, date, api, log, poll_seconds)
                else:
                    for sub in still_open:
                        if sub.state in state.UNSENT_STATES:
                            batches.stop_unsent(con, api, sub, log)
                    state.clear_hold(con, name, date)  # canceled: nothing is held for later
                still_open = batches.open_submissions(con, name, date)
            open_ids = state.watched_batch_ids(con, name, date)
            hold = state.hold_of(con, name, date)
        if still_open and not wait:
            log(
                f"{len(still_open)} batch(es) still processing or held; the sensor runs "
                "this step again once they have ended, or once the held ones are due"
            )
            break
        if still_open:
            # Each batch is loaded as it ends; the next round counts them with its own.
            batches.wait_until_ended(api, name, date, poll_seconds, log, load)
            continue
        if not retry:
            break
        with _writing(pf, date, log) as con:
            no_credit = unbilled(con, pf, date)
            if no_credit:  # sending them again now would only meet the empty balance again
                raise BatchApiError(no_credit)
            was_held = hold is not None
            again = _send_pending(con, pf, date, api, log, poll_seconds)
            # Not only what `again` counts: a create whose outcome is unknown went out as
            # a provisional batch, awaited like any other.
            still_open = batches.open_submissions(con, name, date)
            open_ids = state.watched_batch_ids(con, name, date)
            hold = state.hold_of(con, name, date)
        if again and not was_held:
            retried += again
            log(f"sent {again} retryable request(s) again")
        elif again:
            log(f"sent {again} request(s) that were held")
        if not still_open and hold is None:
            break
        if not wait:
            break
        if hold is not None and not open_ids:
            batches.wait_until_ended(api, name, date, poll_seconds, log)
    loaded_batches, lines = loaded_batches + early.batches, lines + early.lines
    return ResultsSummary(loaded_batches, lines, retried, open_ids, hold)


def unbilled(con: duckdb.DuckDBPyConnection, pf: PipelineFile, date: dt.date) -> str | None:
    """What to tell a person when requests of the partition came back unrun for lack of
    credit (and with resends left), or None."""
    name = pf.pipeline.name
    count, words = state.pending_unbilled(con, name, date, pf.pipeline.request.max_attempts)
    if not count:
        return None
    return (
        f"{count} request(s) of {date} came back unrun and unbilled: {words} Add credit, "
        f"then `batchpipe retry {name} --date {date}` (or materialize {name}/batch_status) "
        "sends what is pending again: those, and any retryable ones this stop kept back; "
        "their resends are counted apart from max_attempts' retries"
    )


def _load_ended(
    con: duckdb.DuckDBPyConnection,
    pf: PipelineFile,
    ended: list[batches.Submission],
    api: anthropic.Anthropic,
    log: Log,
) -> int:
    """Download each ended batch's results and load them, one batch at a time: each is
    committed (and its file removed) before the next is fetched, so the disk holds one
    results file, not a partition's (9 GB for 10 million rows)."""
    count = 0
    for sub in ended:
        expected = state.result_lines_expected(con, sub.submission_id)
        path = batches.download_results(api, sub.batch_id, expected, log)
        found = results.ResultsFile(sub.submission_id, sub.batch_id, path, expected)
        loaded = results.load_results_files(
            con, pf.pipeline.name, pf.pipeline.request.model, [found]
        )
        log(f"loaded {loaded} results of {sub.batch_id}")
        count += loaded
    return count


def cancel(pf: PipelineFile, date: dt.date, api: anthropic.Anthropic, log: Log) -> dict:
    """Cancel the partition's open batches and record what became of each request."""
    with _writing(pf, date, log) as con:
        canceled = batches.cancel(con, api, pf.pipeline.name, date, log)
        for batch_id in canceled:
            log(f"asked the API to cancel {batch_id}")
    summary = load_results(pf, date, api, log, wait=True, poll_seconds=1.0, retry=False)
    with state.connect(read_only=True) as con:
        outcomes = state.outcomes(con, canceled)
    log(f"loaded {summary.lines_loaded} result line(s): {outcomes or 'nothing was open'}")
    return outcomes


def not_final(pf: PipelineFile, date: dt.date) -> str | None:
    """Why the partition's data is not final yet, or None when it is: a batch still open
    (or a send not yet known to have happened), or built requests never sent. The
    enriched table is written only once it is final, so a materialization has its data."""
    name = pf.pipeline.name
    with state.connect() as con:
        open_subs = batches.open_submissions(con, name, date)
        # Requests a budget refused are final until the limit is raised: they show as such.
        pending = state.pending_unskipped(con, name, date, pf.pipeline.request.max_attempts)
        hold = state.hold_of(con, name, date)
        no_credit = unbilled(con, pf, date)
    if hold is not None:
        return f"{hold.requests} request(s) of {date} held, not sent yet ({hold.message})"
    if no_credit:
        return no_credit
    if open_subs:
        return f"{len(open_subs)} batch(es) of {date} not ended yet"
    if pending:
        return f"{pending} request(s) of {date} not sent yet: materialize {name}/batch_status"
    return None


def write_enriched(pf: PipelineFile, date: dt.date, log: Log) -> enriched.EnrichedSummary:
    with _writing(pf, date, log) as con:
        resolved = resolve(pf, con)
        summary = enriched.write_enriched(con, resolved, date)
        columns = warehouse.describe(con, quote_ident(pf.pipeline.output.table))
        (catalog,) = con.execute("SELECT current_database()").fetchone()
    # Each row once: those without a final result (never answered, or skipped by a budget).
    answered = summary.succeeded + summary.errored + summary.expired + summary.canceled
    summary = dataclasses.replace(
        summary,
        unfinished=summary.rows - answered,
        columns=columns,
        table_name=f"{catalog}.main.{pf.pipeline.output.table}",
    )
    log(
        f"wrote {summary.rows} rows of {date} to {pf.pipeline.output.table} "
        f"({summary.succeeded} succeeded, {summary.errored} errored, {summary.missing} missing)"
    )
    return summary
