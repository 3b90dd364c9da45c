"""The report's sections on the ten-million-row partition and on how soon after the
last batch ends the enriched partition is written (issue 21)."""

from __future__ import annotations

from bench.markdown import gigabytes, one_verdict, seconds, table
from bench.workload import MAX_BATCH_REQUESTS, TEXT

BIG_ROWS = 10_000_000
FULL_ROWS = 1_000_000
WALL_FACTOR = 12.0  # within 12x of the 1,000,000-row run's wall
RSS_LIMIT_MB = 1.2 * 1024
RSS_GROWTH = 1.2


def big(f: dict) -> str:
    """Targets with verdicts, then the disk used while it ran."""
    heading = "### Ten million rows in one partition\n"
    b = f.get("big")
    if not b:
        return heading + "\nNot measured in this run (`--big-rows 0`).\n"
    rows, main = b["rows"], f["pipelines"][TEXT]["run"]
    full = rows >= BIG_ROWS and f["rows"] >= FULL_ROWS  # the sizes the targets are for
    intro = (
        f"{rows:,} rows (source built in {b['source_s']:.1f} s), {TEXT} only, batches of "
        f"{MAX_BATCH_REQUESTS:,}, emulator at latency 0, against the {f['rows']:,}-row run "
        "of the same pipeline above; wall is the whole partition (`run_partition`), as there.\n"
    )
    if "error" in b:
        return f"{heading}\n{intro}\nIt did **not** complete: `{b['error']}`\n"
    run = b["run"]
    lines = table("target", "figure", "verdict")

    def target(label: str, figure: str, ok: bool | None) -> None:
        lines.append(f"| {label} | {figure} | {one_verdict(ok)} |")

    target(
        "completes",
        f"{run['total']:.1f} s, {len(run['batch_ids'])} batches (the canary's included)",
        True,
    )
    target(
        "every row once, each answered by the emulator",
        _every_row(b["every_row"]),
        b["every_row"]["ok"],
    )
    wall = run["total"] / main["total"]
    target(
        f"wall within {WALL_FACTOR:.0f}x of the {f['rows']:,}-row run",
        f"{wall:.1f}x ({run['total']:.1f} s / {main['total']:.1f} s; rows {rows / f['rows']:.0f}x)",
        (wall <= WALL_FACTOR) if full else None,
    )
    mb = run["peak_rss_mb"]
    target(
        "peak RSS of the run process ≤ 1.2 GB",
        f"{mb:,.0f} MB",
        (mb <= RSS_LIMIT_MB) if full else None,
    )
    growth = mb / main["peak_rss_mb"]
    target(
        f"peak RSS within {RSS_GROWTH}x of the {f['rows']:,}-row run's",
        f"{growth:.2f}x ({mb:,.0f} MB / {main['peak_rss_mb']:,.0f} MB)",
        (growth <= RSS_GROWTH) if full else None,
    )
    notes = (
        []
        if full
        else [
            "The wall and RSS targets are for 10,000,000 rows against 1,000,000: at these sizes "
            "they get no verdict."
        ]
    )
    peak, end = b["disk_peak"], b["disk_end"]
    notes.append(
        f"Disk under BATCHPIPE_STATE: {gigabytes(end['state'])} at the end, "
        f"{gigabytes(peak['state'])} at its peak (sampled every second while the run went); "
        f"the emulator's own state directory, separately: {gigabytes(end['emulator'])} at the "
        f"end, {gigabytes(peak['emulator'])} at its peak; the warehouse file (source, state "
        f"tables and output): {gigabytes(b['warehouse_bytes'])}. The run process's CPU: "
        f"{run['cpu_s']:.1f} s; spawn to exit {run['process_s']:.1f} s."
    )
    return f"{heading}\n{intro}\n" + "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def _every_row(check: dict) -> str:
    return (
        f"{check['rows']:,} rows, {check['keys']:,} distinct keys; the source "
        f"{check['source_rows']:,} rows, {check['source_keys']:,} keys; {check['answered']:,} "
        f"answered, {check['succeeded']:,} succeeded; {check['echoed']:,} of "
        f"{check['sampled']:,} sampled answers echo their own row's prompt"
    )


def as_batches_end(f: dict) -> str:
    """Last batch's `ended_at` (the emulator's, through the SDK) to the `enriched`
    step's STEP_SUCCESS (the Dagster event log), per measured partition."""
    runs = [(f"{name}, {f['rows']:,} rows", p["run"]) for name, p in f["pipelines"].items()]
    if f.get("big") and "error" not in f["big"]:
        runs.append((f"{TEXT}, {f['big']['rows']:,} rows", f["big"]["run"]))
    lines = table(
        "partition",
        "batches",
        "last batch ended → enriched partition written",
        "of which the `enriched` step",
    )
    for label, run in runs:
        lines.append(
            f"| {label} | {len(run['batch_ids'])} | {seconds(run['last_batch_to_enriched_s'])} "
            f"| {seconds(run.get('enriched'))} |"
        )
    return (
        "### Results as batches end\n\n"
        + "\n".join(lines)
        + "\n\nFrom the largest `ended_at` among the partition's batches (read from the emulator "
        "with the official SDK's `messages.batches.list()` after the run) to the `enriched` "
        "step's STEP_SUCCESS in the Dagster event log: what is left to do once the last "
        "batch has ended. At latency 0 the emulator ends a batch as it takes it in, so the "
        "last batch ends when its create call is answered.\n"
    )
