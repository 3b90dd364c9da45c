"""Templates: the SQL path and the Jinja path print the same text for the same row."""

from __future__ import annotations

import json

import duckdb
import pytest

from batchpipe import templates
from batchpipe.templates import TemplateError, parse

ROWS = """
CREATE TABLE t AS SELECT * FROM (VALUES
  (1, 'Ann "the ''quick''" Lee', 3, 12345678901, 0.1::DOUBLE, 12.30::DECIMAL(8,2),
   1.5::FLOAT, DATE '2026-11-03', TIMESTAMP '2026-11-03 10:00:00.5',
   TIMESTAMPTZ '2026-11-03 10:00:00+00', true, ['a', 'b c']),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, 'Straße ΟΔΟΣ İx ﬁ' || chr(10) || 'line two' || chr(9) || chr(1) || chr(27) || '\\ /', -2,
   -7, 1e20::DOUBLE, -0.05::DECIMAL(8,2), 0.1::FLOAT, DATE '1999-01-31',
   TIMESTAMP '2026-11-03 00:00:00', TIMESTAMPTZ '2026-11-03 23:59:59.123+00', false, []),
  (4, '', 0, 0, 1e-7::DOUBLE, 0.00::DECIMAL(8,2), 0::FLOAT, DATE '2026-02-28',
   TIMESTAMP '2026-11-03 10:00:00.123456', TIMESTAMPTZ '2026-11-03 10:00:00+00', true,
   [NULL, 'x']),
  (5, '👍🏽e' || chr(769) || 'nd', 7, 9007199254740993, 'nan'::DOUBLE, 999999.99::DECIMAL(8,2),
   'inf'::FLOAT, DATE '2026-11-03', TIMESTAMP '2026-11-03 10:00:00', NULL, NULL, ['q''s'])
) AS v(id, name, stars, big, score, price, ratio, day, at_ts, at_tz, ok, tags)
"""
COLUMNS = ["name", "stars", "big", "score", "price", "ratio", "day", "at_ts", "at_tz", "ok", "tags"]

SIMPLE = [
    *(f"{{{{ {c} }}}}" for c in COLUMNS),
    *(f"{{{{ {c} | tojson }}}}" for c in COLUMNS),
    *(f"{{{{ {c} | upper }}}}|{{{{ {c} | lower }}}}" for c in COLUMNS),
    "Hi {{ name }}, {{ stars }} stars on {{ day }}.\n",
    "{{ name | default('n/a') }}/{{ price | default(stars) }}/{{ name | d }}/{{ ok | d(0) }}",
    "{{ name | truncate(3) }}|{{ name | truncate(0) }}|{{ name | truncate }}",
    "{{ price | truncate(2) }}|{{ day | truncate(4) }}",
    "{{ name | lower | truncate(20) }}",
    "{{ name | default('x') | upper | truncate(4) | tojson }}",
    "{{ price | default(0) | tojson }} {{ stars | default('none') | tojson }}",
    "{{ score | default(1.5) | tojson }} {{ score | default(1.5) }}",
    "{{ name | tojson | upper }} {{ name | tojson | tojson }}",
    "{{ tags | tojson }} {{ tags | default('[]') }}",
    "{# a comment #}{{- name -}}  {% raw %}{{ not a column }}{% endraw %}",
]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(ROWS)
    return con


def sql_and_jinja(con: duckdb.DuckDBPyConnection, source: str) -> list[tuple[str, str]]:
    """Each row rendered by the SQL path and by the Jinja path (templates.render)."""
    sql = parse(source)
    jinja = parse(source, force_jinja=True)
    assert sql.is_sql and not jinja.is_sql
    rows = con.execute(
        f"SELECT {templates.to_sql(sql, 's')}, {templates.payload_sql(jinja, 's')} "
        "FROM t AS s ORDER BY id"
    ).fetchall()
    return [(text, templates.render(jinja, payload)) for text, payload in rows]


@pytest.mark.parametrize("source", SIMPLE)
def test_sql_and_jinja_paths_render_the_same_text(con, source: str) -> None:
    for sql_text, jinja_text in sql_and_jinja(con, source):
        assert sql_text == jinja_text


def test_values_print_as_duckdb_casts_them(con) -> None:
    (first, null_row, *_) = sql_and_jinja(con, " ".join(f"{{{{ {c} }}}}" for c in COLUMNS))
    expected = (
        """Ann "the 'quick'" Lee 3 12345678901 0.1 12.30 1.5 2026-11-03 """
        "2026-11-03 10:00:00.5 2026-11-03 10:00:00+00 true [a, b c]"
    )
    assert first == (expected, expected)
    assert null_row == (" " * 10,) * 2


def test_tojson_is_valid_json_of_the_value(con) -> None:
    source = '{"name": {{ name | tojson }}, "price": {{ price | tojson }}, "ok": {{ ok | tojson }}}'
    names = [r[0] for r in con.execute("SELECT name FROM t ORDER BY id").fetchall()]
    for (sql_text, jinja_text), name in zip(sql_and_jinja(con, source), names, strict=True):
        assert sql_text == jinja_text
        assert json.loads(sql_text)["name"] == name
    first, null_row = (json.loads(text) for text, _ in sql_and_jinja(con, source)[:2])
    assert first == {"name": "Ann \"the 'quick'\" Lee", "price": 12.3, "ok": True}
    assert null_row == {"name": None, "price": None, "ok": None}


def test_simple_template_sql_is_unchanged() -> None:
    template = parse("Hi {{ name }}")
    assert template.columns == ["name"]
    assert templates.to_sql(template, "s") == (
        """concat('Hi ', coalesce(CAST(s."name" AS VARCHAR), ''))"""
    )
    assert templates.to_sql(parse("{{ name }}")) == """coalesce(CAST("name" AS VARCHAR), '')"""
    assert templates.to_sql(parse("")) == "''"


def test_templates_with_logic_take_the_jinja_path() -> None:
    for source in [
        "{% if stars < 3 %}bad{% endif %}",
        "{{ name.first }}",
        "{{ stars + 1 }}",
        "{{ name | title }}",
        "{{ name | truncate(length=3) }}",
        "{{ 'literal' }}",
    ]:
        assert not parse(source).is_sql, source


def test_columns_of_a_jinja_template_leave_out_loop_variables_and_globals() -> None:
    template = parse(
        "{% for tag in tags %}{{ loop.index }}. {{ tag | upper }}{% endfor %}"
        "{% set n = 2 %}{{ range(n) | list }}{{ name | default(nickname) }}"
    )
    assert template.columns == ["tags", "name", "nickname"]


def test_unknown_column_suggests_the_closest() -> None:
    for source in ["{{ nme }}", "{% if nme %}x{% endif %}"]:
        with pytest.raises(TemplateError, match=r"\{\{ nme \}\} is not a column.*'name'"):
            templates.check_columns(parse(source), ["id", "name"])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a\nb {{ name | }}\n", "template line 2: expected token 'name'"),
        ("a\n\n{{ name | lower | shout }}", "template line 3: No filter named 'shout'"),
        ("x\n{% if stars %}\nno end", "template line 2: Unexpected end of template"),
        ("{{ name | truncate(-1) }}", "template line 1: truncate needs a length >= 0"),
    ],
)
def test_bad_template_names_its_line_and_jinja_message(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse(source)


def test_unknown_filter_shows_the_expression_and_a_close_name() -> None:
    with pytest.raises(TemplateError) as caught:
        parse("Describe\n{{ name | lower | uper(2) }}")
    assert str(caught.value).startswith(
        "{{ name | lower | uper(2) }}: template line 2: No filter named 'uper'; "
        "did you mean 'upper'?"
    )
    with pytest.raises(TemplateError, match=r"^\{\{ stars is evn \}\}: .* No test named 'evn'"):
        parse("{% if stars is evn %}x{% endif %}")


def test_sandbox_refuses_private_attributes_when_parsing() -> None:
    for source in ["{{ name.__class__ }}", "ok\n{{ name['__class__'] }}"]:
        with pytest.raises(TemplateError, match=r"'__class__' is not allowed"):
            parse(source)


def test_sandbox_refuses_unsafe_access_when_rendering() -> None:
    hidden = parse("{{ name[key] }}")  # the attribute name comes from the data
    with pytest.raises(TemplateError, match=r"sandbox refused.*__class__"):
        templates.render(hidden, '{"name": "x", "key": "__class__"}')
    mutating = parse("{{ tags.append(1) }}")  # the sandbox is immutable
    with pytest.raises(TemplateError, match="sandbox refused"):
        templates.render(mutating, '{"tags": []}')


def test_a_row_that_cannot_render_is_a_template_error() -> None:
    template = parse("{% if stars < 3 %}low{% endif %}")
    assert templates.render(template, '{"stars": 1}') == "low"
    with pytest.raises(TemplateError, match="cannot render a row: TypeError"):
        templates.render(template, '{"stars": null}')


def test_udf_names_are_per_source_and_sql_templates_need_none() -> None:
    a, b = parse("{% if x %}a{% endif %}"), parse("{% if x %}b{% endif %}")
    assert a.udf_name == parse("{% if x %}a{% endif %}").udf_name != b.udf_name
    assert a.udf_name.startswith("bp_render_")
    con = duckdb.connect()
    templates.register(con, parse("{{ x }}"))  # nothing to register
    (count,) = con.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE 'bp_render_%'"
    ).fetchone()
    assert count == 0


def test_conditionals_and_loops_render_through_the_udf_in_one_select(con) -> None:
    template = parse(
        "{% if stars is none %}no rating{% elif stars < 0 %}low ({{ stars }}){% else %}"
        "{{ name | truncate(3) }}: {% for tag in tags %}[{{ tag | upper }}]{% endfor %}"
        "{% endif %}"
    )
    templates.register(con, template)
    templates.register(con, template)  # once per connection; again is harmless
    rows = con.execute(f"SELECT {templates.to_sql(template, 's')} FROM t AS s ORDER BY id")
    assert [r[0] for r in rows.fetchall()] == [
        "Ann: [A][B C]",
        "no rating",
        "low (-2)",
        ": [][X]",
        "👍🏽e: [Q'S]",
    ]


@pytest.mark.parametrize("source", SIMPLE)
def test_the_udf_renders_as_the_sql_path(con, source: str) -> None:
    sql, jinja = parse(source), parse(source, force_jinja=True)
    templates.register(con, jinja)
    rows = con.execute(
        f"SELECT {templates.to_sql(sql, 's')}, {templates.to_sql(jinja, 's')} "
        "FROM t AS s ORDER BY id"
    ).fetchall()
    for sql_text, udf_text in rows:
        assert sql_text == udf_text


def test_a_udf_error_names_the_template_problem(con) -> None:
    template = parse("{% if stars < 3 %}low{% endif %}")
    templates.register(con, template)
    with pytest.raises(duckdb.Error, match="TemplateError: cannot render a row: TypeError"):
        con.execute(f"SELECT {templates.to_sql(template, 's')} FROM t AS s").fetchall()
