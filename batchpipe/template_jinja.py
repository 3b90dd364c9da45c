"""The Jinja half of templates: a sandboxed environment that prints what DuckDB would.

A template that is not plain `{{ column | filter }}` text renders here, one row at a
time. The other half (template_sql.py) renders the simple ones in DuckDB. Both must
give the same text for the same row, so this module defines the shared meaning of
values and filters in DuckDB's terms:

- A row arrives as DuckDB's `to_json(struct_pack(...))`: strings stay strings (dates and
  timestamps too, already in DuckDB's text), numbers are numbers (so `{% if stars < 3 %}`
  compares numbers), NULL is None.
- `text(value)` is DuckDB's `CAST(value AS VARCHAR)`; `encode(value)` is DuckDB's `to_json`.
  Non-integer numbers keep both texts (`Number`), because JSON loses DECIMAL's scale
  (12.30 comes back as 12.3); the SQL side sends the CAST text of such columns alongside.
- upper/lower use DuckDB's own per-character case mapping (asked of DuckDB once), since
  Python maps 'ß' to 'SS' and applies a final sigma where DuckDB does neither.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import duckdb
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

# The payload key holding the CAST text of columns whose JSON loses it; it cannot be a
# Jinja name, so it never clashes with a column.
TEXT_KEY = "%text"


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the caller adds the file and line."""


class Number(float):
    """A non-integer number of a row: computes as a float, prints as DuckDB prints it."""

    __slots__ = ("_json", "_text")

    def __new__(cls, json_text: str, text: str | None = None) -> Number:
        number = super().__new__(cls, json_text)
        number._json = json_text  # DuckDB's to_json text, e.g. 1e38 or 12.3
        number._text = repr(float(number)) if text is None else text  # its CAST text
        return number

    def __str__(self) -> str:
        return self._text


class _List(list):
    """A LIST column: iterates as a list, prints as DuckDB's CAST ('[a, b]')."""

    _text: str


class _Dict(dict):
    """A STRUCT or MAP column: a dict to Jinja, printed as DuckDB's CAST."""

    _text: str


def text(value: Any) -> str | None:
    """DuckDB's CAST(value AS VARCHAR) of a row value; None (NULL) stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Number | _List | _Dict):
        return value._text
    if isinstance(value, int | float):
        return repr(value)  # DuckDB prints a DOUBLE as the shortest round-trip text too
    return str(value)


# to_json's string escapes: DuckDB writes \u000B where Python's json writes \u000b.
_ESCAPES = {i: f"\\u{i:04X}" for i in range(32)} | {
    8: "\\b",
    9: "\\t",
    10: "\\n",
    12: "\\f",
    13: "\\r",
    34: '\\"',
    92: "\\\\",
}


def encode(value: Any) -> str:
    """DuckDB's to_json text of a row value: compact, numbers as DuckDB wrote them."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Number):
        return value._json
    if isinstance(value, int | float):
        return json.dumps(value)  # NaN and Infinity as DuckDB writes them
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return encode(text(value))


def decode_row(payload: str) -> dict[str, Any]:
    """The Jinja context of a row from the JSON that payload SQL builds."""
    row = json.loads(payload, parse_float=Number, parse_constant=Number)
    for name, cast_text in (row.pop(TEXT_KEY, None) or {}).items():
        value = row.get(name)
        if cast_text is None or value is None:
            continue
        if isinstance(value, list):
            row[name] = value = _List(value)
            value._text = cast_text
        elif isinstance(value, dict):
            row[name] = value = _Dict(value)
            value._text = cast_text
        elif isinstance(value, int | float) and not isinstance(value, bool):
            row[name] = Number(encode(value), cast_text)
        else:
            row[name] = cast_text
    return row


@functools.cache
def _case_tables() -> tuple[dict[int, str], dict[int, str]]:
    """DuckDB's upper and lower, per character, for every character they change."""
    with duckdb.connect() as con:
        rows = con.execute(
            """
            SELECT i, upper(c), lower(c)
            FROM (
                SELECT i, chr(CAST(i AS INTEGER)) AS c
                FROM (SELECT * FROM range(1, 55296) UNION ALL  -- every codepoint but NUL
                      SELECT * FROM range(57344, 1114112)) AS r(i)  -- and the surrogates
            )
            WHERE upper(c) <> c OR lower(c) <> c
            """
        ).fetchall()
    return {i: u for i, u, _ in rows}, {i: lo for i, _, lo in rows}


def _upper(value: Any) -> str | None:
    s = text(value)
    if s is None:
        return None
    return s.upper() if s.isascii() else s.translate(_case_tables()[0])


def _lower(value: Any) -> str | None:
    s = text(value)
    if s is None:
        return None
    return s.lower() if s.isascii() else s.translate(_case_tables()[1])


def _truncate(value: Any, length: int = 255) -> str | None:
    """At most `length` characters, no ellipsis (DuckDB's left())."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise TemplateError(f"truncate needs a whole number >= 0, not {length!r}")
    s = text(value)
    return None if s is None else s[:length]


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """The value, or `default_value` when it is NULL (Jinja's default only sees undefined)."""
    if value is None or isinstance(value, jinja2.Undefined) or (boolean and not value):
        return default_value
    return value


def _finalize(value: Any) -> str:
    """What `{{ value }}` prints: DuckDB's text, and nothing for NULL."""
    return "" if value is None else text(value)


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    """The one environment: sandboxed, strict about unknown names, no HTML escaping."""
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters.update(
        default=_default,
        d=_default,
        upper=_upper,
        lower=_lower,
        truncate=_truncate,
        tojson=encode,
    )
    return env


@functools.lru_cache(maxsize=256)
def compiled(source: str) -> jinja2.Template:
    """Compile once per source; raises jinja2.TemplateSyntaxError."""
    return environment().from_string(source)


@functools.lru_cache(maxsize=256)
def row_renderer(source: str) -> Callable[[str], str]:
    """A function from a row's JSON payload to its text: the body of the DuckDB UDF."""
    template = compiled(source)

    def render(payload: str) -> str:
        try:
            return template.render(decode_row(payload))
        except SecurityError as err:
            raise TemplateError(f"the template sandbox refused: {err}") from None
        except TemplateError:
            raise
        except Exception as err:
            # The row's values the template reads, so the analyst can find the row.
            values = {k: v for k, v in json.loads(payload).items() if k != TEXT_KEY}
            shown = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            raise TemplateError(
                f"cannot render a row: {type(err).__name__}: {err} (the row's values: {shown})"
            ) from None

    return render
