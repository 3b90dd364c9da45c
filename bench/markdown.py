"""The small pieces every section of the pipeline benchmark's report is made of:
table headers, verdicts, sizes."""

from __future__ import annotations


def table(*header: str) -> list[str]:
    """A Markdown table's first two lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def verdict(met: dict[str, bool | None]) -> str:
    """`meets`, `misses (which)`, or `no verdict` when no figure can be judged here."""
    judged = {name: ok for name, ok in met.items() if ok is not None}
    if not judged:
        return "no verdict"
    missed = [name for name, ok in judged.items() if not ok]
    return f"**misses** ({', '.join(missed)})" if missed else "meets"


def one_verdict(ok: bool | None) -> str:
    """The verdict of a target with one figure."""
    return "no verdict" if ok is None else ("meets" if ok else "**misses**")


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def gigabytes(size: int) -> str:
    """Bytes as GB (2**30, as the report's MB are 2**20)."""
    return f"{size / 2**30:,.2f} GB"
