"""What a person reads after a run: a few enriched rows and the partition's cost."""

from __future__ import annotations

import datetime as dt

from batchpipe import warehouse
from batchpipe.errors import BatchpipeError
from batchpipe.loader import PipelineFile
from batchpipe.templates import quote_ident


def show_partition(pf: PipelineFile, date: dt.date, limit: int = 5) -> None:
    pipeline = pf.pipeline
    table = ".".join(quote_ident(p) for p in pipeline.output.table.split("."))
    keys = ", ".join(quote_ident(k) for k in pipeline.source.key_columns)
    column = quote_ident(pipeline.output.column)
    with warehouse.connect(read_only=True) as con:
        if pipeline.output.table.split(".")[-1] not in warehouse.table_names(con):
            raise BatchpipeError(
                f"{pipeline.output.table} does not exist yet: run "
                f"`batchpipe run {pipeline.name} --date {date}` first"
            )
        rows = con.sql(
            f"SELECT {keys}, left({column}, 70) AS {column}, result_status, "
            f"CAST(cost_usd AS DECIMAL(12, 6)) AS cost_usd FROM {table} WHERE partition_date = ? "
            f"ORDER BY {keys} LIMIT {int(limit)}",
            params=[date],
        )
        print(f"{pipeline.output.table} on {date} (first {limit} rows):")
        rows.show(max_rows=limit, max_width=160)
        total, cost, standard = con.execute(
            "SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(standard_cost_usd), 0) "
            "FROM batchpipe_results WHERE batch_id IN (SELECT batch_id FROM batchpipe_batches "
            "WHERE pipeline = ? AND partition_date = ?)",
            [pipeline.name, date],
        ).fetchone()
    print(
        f"cost of {date}: ${cost:.4f} for {total} batch request(s); the standard API would "
        f"have cost ${standard:.4f}\n",
        flush=True,
    )
