"""Prompt templates -> one SQL expression, so DuckDB renders every row at once.

A template is text with `{{ column }}` placeholders. Compiling it to a single
`concat(...)` lets one INSERT ... SELECT build a million prompts without a
Python loop over rows.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A template that cannot be compiled; the caller adds the file and line."""


@dataclass(frozen=True)
class Template:
    """Alternating literal text and column names, in order."""

    parts: tuple[tuple[str, str], ...]  # ("text", "...") or ("column", "name")

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(v for kind, v in self.parts if kind == "column"))


def parse(source: str) -> Template:
    """Split a template into text and column references, refusing what is not supported."""
    if "{%" in source or "{#" in source:
        raise TemplateError("only {{ column }} placeholders are supported, not {% %} or {# #}")
    parts: list[tuple[str, str]] = []
    position = 0
    for match in PLACEHOLDER.finditer(source):
        if match.start() > position:
            parts.append(("text", source[position : match.start()]))
        name = match.group(1)
        if not NAME.match(name):
            raise TemplateError(
                f"{{{{ {name} }}}} is not a column name; write {{{{ column }}}} "
                "with a plain column of the source"
            )
        parts.append(("column", name))
        position = match.end()
    if position < len(source):
        parts.append(("text", source[position:]))
    leftover = "".join(v for kind, v in parts if kind == "text")
    if "{{" in leftover or "}}" in leftover:
        raise TemplateError("unbalanced {{ or }}")
    return Template(tuple(parts))


def check_columns(template: Template, available: list[str]) -> None:
    """Every placeholder must name a source column; say which exist when one does not."""
    for column in template.columns:
        if column not in available:
            close = difflib.get_close_matches(column, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"{{{{ {column} }}}} is not a column of the source{hint} "
                f"(columns: {', '.join(available)})"
            )


def to_sql(template: Template, relation: str = "") -> str:
    """A DuckDB VARCHAR expression; NULL renders as an empty string."""
    prefix = f"{relation}." if relation else ""
    pieces = []
    for kind, value in template.parts:
        if kind == "text":
            pieces.append(sql_string(value))
        else:
            pieces.append(f"coalesce(CAST({prefix}{quote_ident(value)} AS VARCHAR), '')")
    if not pieces:
        return "''"
    return pieces[0] if len(pieces) == 1 else f"concat({', '.join(pieces)})"


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
