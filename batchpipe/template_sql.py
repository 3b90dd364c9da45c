"""The SQL half of templates: plain `{{ column | filter }}` text as one DuckDB expression.

This is the fast path: DuckDB renders a million prompts in one statement, no Python
per row. It accepts only what it can render exactly like the Jinja half
(template_jinja.py): text, columns, and the filters default/d, upper, lower,
truncate(n) and tojson, chained. Anything else returns None and renders with Jinja.

A value flows through a chain either as text (VARCHAR, NULL for NULL: what `{{ }}`
prints, coalesced to '') or as JSON (what tojson prints). Each filter is written for
both, so `{{ price | default(0) | tojson }}` stays a number, as it does in Jinja.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes

from batchpipe.sqlcheck import quote_ident, sql_string
from batchpipe.template_jinja import TemplateError, encode, text

# ("column", name) | ("literal", value) | ("filter", name, inner, args)
Expr = tuple[Any, ...]
# ("text", literal text) | ("expr", Expr)
Part = tuple[str, str | Expr]

STRING_FILTERS = {"upper": "upper", "lower": "lower"}
LITERALS = (str, int, float, bool, type(None))


def compile_parts(tree: nodes.Template, names_to_leave: frozenset[str]) -> tuple[Part, ...] | None:
    """Text and expressions in order, or None when the template needs Jinja.

    `names_to_leave` are Jinja globals (range, dict, ...): a template using them is Jinja's.
    """
    parts: list[Part] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                if parts and parts[-1][0] == "text":  # comments split text; join it again
                    parts[-1] = ("text", parts[-1][1] + child.data)
                else:
                    parts.append(("text", child.data))
                continue
            expr = _expr(child, names_to_leave)
            if expr is None or expr[0] == "literal":
                return None
            parts.append(("expr", expr))
    return tuple(parts)


def _expr(node: nodes.Node, names_to_leave: frozenset[str]) -> Expr | None:
    if isinstance(node, nodes.Name):
        ok = node.ctx == "load" and node.name not in names_to_leave
        return ("column", node.name) if ok else None
    if isinstance(node, nodes.Const):
        return ("literal", node.value) if isinstance(node.value, LITERALS) else None
    if isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const):  # truncate(-1)
        value = node.node.value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return ("literal", -value) if number else None
    if not isinstance(node, nodes.Filter) or node.node is None:
        return None
    if node.kwargs or node.dyn_args is not None or node.dyn_kwargs is not None:
        return None
    inner = _expr(node.node, names_to_leave)
    args = [_expr(arg, names_to_leave) for arg in node.args]
    if inner is None or None in args:
        return None
    name = "default" if node.name == "d" else node.name
    if name in ("upper", "lower", "tojson") and not args:
        return ("filter", name, inner, ())
    if name == "default" and len(args) <= 1:
        return ("filter", name, inner, tuple(args) or (("literal", ""),))
    if name == "truncate" and len(args) <= 1:
        length = args[0] if args else ("literal", 255)
        if length[0] != "literal" or type(length[1]) is not int:
            return None
        if length[1] < 0:
            raise TemplateError(f"template line {node.lineno}: truncate needs a length >= 0")
        return ("filter", name, inner, (length,))
    return None


def to_sql(parts: tuple[Part, ...], prefix: str) -> str:
    """One VARCHAR expression; `prefix` is "" or "relation." before each column."""
    pieces = []
    for kind, value in parts:
        if kind == "text":
            pieces.append(sql_string(value))
        else:
            pieces.append(f"coalesce({_text(value, prefix)}, '')")
    if not pieces:
        return "''"
    return pieces[0] if len(pieces) == 1 else f"concat({', '.join(pieces)})"


def _text(expr: Expr, prefix: str) -> str:
    """The value as DuckDB text, NULL when it is NULL (Jinja: template_jinja.text)."""
    kind = expr[0]
    if kind == "column":
        return f"CAST({prefix}{quote_ident(expr[1])} AS VARCHAR)"
    if kind == "literal":
        value = text(expr[1])
        return "NULL" if value is None else sql_string(value)
    _, name, inner, args = expr
    if name in STRING_FILTERS:
        return f"{STRING_FILTERS[name]}({_text(inner, prefix)})"
    if name == "truncate":
        return f"left({_text(inner, prefix)}, {args[0][1]})"
    if name == "default":
        return f"coalesce({_text(inner, prefix)}, {_text(args[0], prefix)})"
    return f"coalesce({_json(inner, prefix)}, 'null')"  # tojson


def _json(expr: Expr, prefix: str) -> str:
    """The value as JSON text, NULL when it is NULL (Jinja: template_jinja.encode)."""
    kind = expr[0]
    if kind == "column":
        return f"CAST(to_json({prefix}{quote_ident(expr[1])}) AS VARCHAR)"
    if kind == "literal":
        return "NULL" if expr[1] is None else sql_string(encode(expr[1]))
    _, name, inner, args = expr
    if name == "default":
        return f"coalesce({_json(inner, prefix)}, {_json(args[0], prefix)})"
    return f"CAST(to_json({_text(expr, prefix)}) AS VARCHAR)"  # the others return text
