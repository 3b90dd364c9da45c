"""Prompt templates -> one SQL expression, so one INSERT ... SELECT builds every request.

A template is Jinja text over the columns of a source row:

    Write a reply to this {{ stars }}-star review of {{ product | default('our product') }}:
    {{ body | truncate(2000) }}{% if stars < 3 %} Apologise first.{% endif %}

- `{{ column }}` prints the column as DuckDB's `CAST(column AS VARCHAR)` would (a DATE
  as 2026-11-03, a DECIMAL(8,2) as 12.30, booleans as true/false); NULL prints nothing.
- Filters: `default(x)` / `d(x)` (x when the value is NULL; x is a column or a literal,
  '' if omitted), `upper`, `lower`, `truncate(n)` (the first n characters, no ellipsis,
  255 if omitted: unlike Jinja's own truncate, which counts words and appends '...'),
  `tojson` (the value as JSON: a string quoted and escaped, a number as a number, NULL as
  null), chained left to right: `{{ name | lower | truncate(20) }}`.
- Anything else Jinja allows: `{% if %}`, `{% for tag in tags %}` over a LIST column,
  other Jinja filters. Inside `{% %}` a value is typed: numbers compare as numbers, NULL
  is None (`{% if stars < 3 %}` fails on a NULL star count; write `stars | default(0)`).

Two paths give one result. A template of text and `{{ column | filters }}` only compiles
to a DuckDB expression (template_sql.py): the fast path, no Python per row. Anything
else renders in a sandboxed Jinja environment (template_jinja.py), which DuckDB calls
per row through a Python UDF, so the caller still gets one SQL expression:

    template = parse(text); check_columns(template, columns)
    register(con, template)      # once per connection; does nothing for SQL templates
    con.execute(f"SELECT {to_sql(template, 's')} FROM source AS s")

`render(template, payload)` renders one row in Python from the JSON `payload_sql` selects
(what the UDF does), for previews or for rendering outside DuckDB. DuckDB's Python UDFs
need numpy (duckdb#17052), which batchpipe depends on for that reason.

The sandbox refuses `_private` attributes when parsing and any other unsafe access when
rendering; both raise TemplateError (inside DuckDB, wrapped in a duckdb.Error).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import jinja2
from jinja2 import meta, nodes

from batchpipe import template_jinja, template_sql
from batchpipe.sqlcheck import quote_ident, sql_string
from batchpipe.template_jinja import TEXT_KEY, TemplateError
from batchpipe.template_sql import Part

__all__ = [
    "Template",
    "TemplateError",
    "check_columns",
    "parse",
    "payload_sql",
    "register",
    "render",
    "to_sql",
]

# DuckDB types whose to_json value prints in Jinja exactly as CAST(... AS VARCHAR) does.
# Other columns (DECIMAL, FLOAT, lists, structs, ...) also send their CAST text.
EXACT_JSON_TYPES = (
    "VARCHAR",
    "BOOLEAN",
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "DOUBLE",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE",
    "TIMESTAMP_S",
    "TIMESTAMP_MS",
    "TIMESTAMP_NS",
    "INTERVAL",
    "UUID",
)


@dataclass(frozen=True)
class Template:
    """A checked template: its source, the columns it reads, and its SQL form if it has one."""

    source: str
    names: tuple[str, ...]  # source columns read, in order of first use
    parts: tuple[Part, ...] | None  # text and expressions for SQL; None: rendered by Jinja

    @property
    def columns(self) -> list[str]:
        return list(self.names)

    @property
    def is_sql(self) -> bool:
        """True when DuckDB renders it alone, without the UDF."""
        return self.parts is not None

    @property
    def udf_name(self) -> str:
        """The UDF `register` creates: one per source text, the same in every process."""
        return "bp_render_" + hashlib.sha1(self.source.encode()).hexdigest()[:12]


def parse(source: str, *, force_jinja: bool = False) -> Template:
    """Check a template and choose its path; force_jinja=True skips the SQL path (tests)."""
    env = template_jinja.environment()
    try:
        tree = env.parse(source)
        _refuse_private_attributes(tree)
        _refuse_unknown_filters(tree, env)
        globals_ = frozenset(env.globals)
        parts = None if force_jinja else template_sql.compile_parts(tree, globals_)
        if parts is None:
            template_jinja.compiled(source)  # what else Jinja refuses fails here, once
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"template line {err.lineno}: {err.message}") from None
    undeclared = meta.find_undeclared_variables(tree) - globals_
    names = [n.name for n in tree.find_all(nodes.Name) if n.name in undeclared]
    return Template(source, tuple(dict.fromkeys(names)), parts)


def _refuse_private_attributes(tree: nodes.Template) -> None:
    """`x.__class__` and `x['_y']` are the way out of a sandbox: refuse them up front."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            attribute = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attribute = node.arg.value
        else:
            continue
        if attribute.startswith("_"):
            raise TemplateError(
                f"template line {node.lineno}: {attribute!r} is not allowed "
                "(names starting with _ are private)"
            )


def _refuse_unknown_filters(tree: nodes.Template, env: jinja2.Environment) -> None:
    """Jinja would say only "No filter named 'nope'"; show the expression and a close name."""
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = env.filters if isinstance(node, nodes.Filter) else env.tests
        if node.name in known:
            continue
        kind = "filter" if isinstance(node, nodes.Filter) else "test"
        close = difflib.get_close_matches(node.name, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TemplateError(
            f"{{{{ {_describe(node)} }}}}: template line {node.lineno}: No {kind} named "
            f"{node.name!r}{hint} (batchpipe's filters: default, upper, lower, truncate, "
            "tojson; Jinja's built-in filters work too)"
        )


def _describe(node: nodes.Node) -> str:
    """An expression written back roughly as in the template, for messages."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Const):
        return repr(node.value)
    if isinstance(node, nodes.Filter | nodes.Test) and node.node is not None:
        args = f"({', '.join(_describe(a) for a in node.args)})" if node.args else ""
        operator = "|" if isinstance(node, nodes.Filter) else "is"
        return f"{_describe(node.node)} {operator} {node.name}{args}"
    return "..."


def check_columns(template: Template, available: Sequence[str]) -> None:
    """Every name must be a source column; say which exist when one does not."""
    for column in template.columns:
        if column not in available:
            close = difflib.get_close_matches(column, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"{{{{ {column} }}}} is not a column of the source{hint} "
                f"(columns: {', '.join(available)})"
            )


def to_sql(template: Template, relation: str = "") -> str:
    """A DuckDB VARCHAR expression over `relation`'s columns; NULL renders as ''.

    A Jinja template's expression calls its UDF: `register` it on the connection first.
    """
    if template.parts is not None:
        return template_sql.to_sql(template.parts, f"{relation}." if relation else "")
    return f"{template.udf_name}({payload_sql(template, relation)})"


def payload_sql(template: Template, relation: str = "") -> str:
    """The JSON text of a row's columns that the Jinja path renders (see `render`).

    Values keep their types (numbers stay numbers for `{% if %}`); for columns whose JSON
    would print differently from their CAST text (DECIMAL 12.30 -> 12.3), that text rides
    along under TEXT_KEY. typeof() is constant, so DuckDB folds the CASE away.
    """
    if not template.names:
        return "'{}'"
    prefix = f"{relation}." if relation else ""
    exact = ", ".join(sql_string(t) for t in EXACT_JSON_TYPES)
    values, texts = [], []
    for name in template.names:
        column = f"{prefix}{quote_ident(name)}"
        values.append(f"{quote_ident(name)} := {column}")
        texts.append(
            f"{quote_ident(name)} := CASE WHEN typeof({column}) IN ({exact}) THEN NULL "
            f"ELSE CAST({column} AS VARCHAR) END"
        )
    texts_sql = f"{quote_ident(TEXT_KEY)} := struct_pack({', '.join(texts)})"
    return f"CAST(to_json(struct_pack({', '.join(values)}, {texts_sql})) AS VARCHAR)"


def render(template: Template, payload: str) -> str:
    """Render one row with Jinja from its `payload_sql` JSON, as the UDF does.

    For previews, tests, and rendering outside DuckDB; raises TemplateError.
    """
    return template_jinja.row_renderer(template.source)(payload)


def register(con: duckdb.DuckDBPyConnection, template: Template) -> None:
    """Create the UDF that `to_sql` calls for a Jinja template, once per connection."""
    if template.parts is not None:
        return
    name = template.udf_name
    (exists,) = con.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = ?", [name]
    ).fetchone()
    if exists:
        return
    varchar = duckdb.sqltype("VARCHAR")
    # DuckDB runs Python functions only with numpy installed (duckdb#17052): a dependency.
    con.create_function(name, template_jinja.row_renderer(template.source), [varchar], varchar)
