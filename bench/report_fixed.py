"""The report's fixed-cost section: the real `batchpipe run` of 10 rows and `batchpipe
validate`, each against its target, then where the 10-row run's time goes."""

from __future__ import annotations

from bench.markdown import one_verdict, table

RUN_LIMIT_S = 2.0  # issue 21: a 10-row partition end to end
VALIDATE_LIMIT_S = 1.0


def fixed(f: dict) -> str:
    fixed = f.get("fixed")
    if not fixed:
        return "### Fixed cost\n\nFixed cost: not measured in this run.\n"
    return "\n".join(["### Fixed cost\n", _targets(fixed), _first_request(fixed), _where(fixed)])


def _targets(fixed: dict) -> str:
    run, validate = fixed["end_to_end_s"], fixed["validate_s"]
    low, high = fixed["range_whole"]
    low_v, high_v = fixed["range_validate"]
    lines = table("figure", "median", "target", "verdict")
    lines.append(
        f"| `batchpipe run` of a {fixed['rows']}-row text partition, end to end "
        f"(of {fixed['repeats']}: {low:.2f}-{high:.2f} s) | {run:.2f} s | ≤ 2 s "
        f"| {one_verdict(run <= RUN_LIMIT_S)} |"
    )
    lines.append(
        f"| `batchpipe validate FILE` (of {fixed['repeats']}: {low_v:.2f}-{high_v:.2f} s) "
        f"| {validate:.2f} s | ≤ 1 s | {one_verdict(validate <= VALIDATE_LIMIT_S)} |"
    )
    return "\n".join(lines) + "\n"


def _first_request(fixed: dict) -> str:
    low, high = fixed["range_first"]
    return (
        f"From starting `batchpipe run` to the first request built: "
        f"**{fixed['to_first_request_s']:.2f} s** ({low:.2f}-{high:.2f} s; the spawn to the "
        "`requests` step's STEP_SUCCESS in the Dagster event log). The 10-row run's process: "
        f"CPU {fixed['cpu_s']:.2f} s, peak RSS {fixed['peak_rss_mb']:,.0f} MB. Each figure is "
        "spawn to exit of a process started through `bench/reap.py`, as every measured one.\n"
    )


def _where(fixed: dict) -> str:
    """The median 10-row run cut at its events (the parts add up to its wall), and the
    import times that make up most of its first part."""
    parts = fixed["timeline"]
    lines = [
        "Where the median 10-row run's time goes (Dagster event log):",
        "",
        *table("part", "s"),
    ]
    lines += [f"| {label} | {value:.3f} |" for label, value in parts]
    lines.append(f"| **total, spawn to exit** | **{sum(v for _, v in parts):.3f}** |")
    imports = fixed["imports"]
    lines += ["", "Imports, each in a fresh interpreter (median):", "", *table("import", "s")]
    bare = imports["interpreter"]
    lines.append(f"| a bare interpreter, spawn to exit through `bench/reap.py` | {bare:.3f} |")
    lines += [
        f"| `import {module}` | {s:.3f} |"
        for module, s in imports.items()
        if module != "interpreter"
    ]
    spawn = parts[0][1]
    whole = imports["interpreter"] + imports["batchpipe.runs"]
    lines += [
        "",
        f"Of the {spawn:.2f} s from spawn to RUN_START, a bare interpreter and `import "
        f"batchpipe.runs` (which brings in Dagster, DuckDB and the SDK) account for "
        f"{whole:.2f} s; the remaining {spawn - whole:.2f} s is the CLI's own imports, loading "
        "the pipeline files, building the assets and starting the Dagster run.",
    ]
    return "\n".join(lines) + "\n"
