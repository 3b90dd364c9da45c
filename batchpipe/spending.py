"""`batchpipe costs`: where the money went, and what batching, caching and reuse saved.

Everything comes from the `batchpipe_costs` view (one row per partition), so the report
and an analyst's own SQL agree. A partition counts on the UTC day its first batch was
sent, the day a budget charges it to (on its run date if it sent nothing).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Literal

from batchpipe import state

By = Literal["day", "pipeline", "model"]
Format = Literal["table", "csv", "json"]

GROUPS: dict[str, str] = {
    "day": "CAST(day AS VARCHAR)",
    "pipeline": "pipeline",
    "model": "coalesce(model, '(nothing sent)')",
}
COUNTS = ("partitions", "requests", "reused")
MONEY = (
    "spent_usd",
    "estimated_usd",
    "standard_usd",
    "batch_saved_usd",
    "caching_saved_usd",
    "reuse_saved_usd",
)
COLUMNS = COUNTS + MONEY


def spending(names: list[str] | None, since: dt.date | None, by: By) -> list[dict]:
    """One dict per group (day, pipeline or model), in order, plus nothing else."""
    with state.connect(read_only=True) as con:
        rows = state.spending(con, GROUPS[by], by, names, since)
    return [
        {by: key, **dict(zip(COLUMNS, (_number(v) for v in values), strict=True))}
        for key, *values in rows
    ]


def _number(value: object) -> int | float:
    return value if isinstance(value, int) else round(float(value or 0), 6)


def render(rows: list[dict], by: By, fmt: Format) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[by, *COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return _table(rows, by)


def _table(rows: list[dict], by: By) -> str:
    if not rows:
        return "no spending recorded yet: nothing has been sent for these pipelines and dates"
    header = [by, "partitions", "requests", "reused", "spent", "estimated", "standard API"]
    header += ["saved: batch", "caching", "reuse"]
    total = {c: sum(r[c] for r in rows) for c in COLUMNS}
    body = [_cells(r[by], r) for r in rows] + [_cells("total", total)]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    spent, standard = total["spent_usd"], total["standard_usd"]
    saved = total["batch_saved_usd"] + total["caching_saved_usd"] + total["reuse_saved_usd"]
    return "\n".join(
        [
            line(header),
            *(line(cells) for cells in body),
            "",
            f"spent ${spent:.4f} at batch prices; the standard API would have cost "
            f"${standard:.4f}; batch pricing, prompt caching and request reuse saved "
            f"${saved:.4f} in all",
        ]
    )


def _cells(key: object, r: dict) -> list[str]:
    return [str(key), *(f"{r[c]:,}" for c in COUNTS), *(f"${r[c]:.4f}" for c in MONEY)]
