"""The SQL of one resolved pipeline: its partition's rows, its requests, its output rows.

`Resolved` (made by resolve.py, once the file is checked against the warehouse) holds the
fragments every step composes: which source rows a date takes, each row's custom_id and
request params, and the SELECT of the enriched rows. All of it is SQL text built from the
file, so a partition's million rows are one statement, never a Python loop.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

import duckdb

from batchpipe import schema, state, templates, warehouse
from batchpipe.config import Pipeline
from batchpipe.loader import PipelineFile
from batchpipe.sqlcheck import quote_ident, sql_string

# The run date inside SQL: a session variable, so every statement over a partition's rows
# reads the same date without threading a parameter through each of them.
RUN_DATE = "getvariable('batchpipe_date')"


def bind_date(con: duckdb.DuckDBPyConnection, date: dt.date, timezone: str) -> None:
    """Set the run date and the pipeline's `partitions.timezone` on the connection.

    Every statement over a partition's rows comes after this, and the zone decides what
    they see: the day a TIMESTAMPTZ partition column falls on, and the text a TIMESTAMPTZ
    puts in a prompt on both template paths (CAST to VARCHAR, and to_json for Jinja). Set
    together, a rerun builds the same requests whatever the TZ of the shell. The session
    stays in that zone, so timestamps batchpipe stores say UTC explicitly.
    """
    con.execute("SET VARIABLE batchpipe_date = CAST(? AS DATE)", [date])
    warehouse.set_timezone(con, timezone)


# Columns batchpipe adds to every output table, beside the source columns.
RESULT_COLUMNS = (
    "partition_date",
    "result_status",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "batch_id",
)
CUSTOM_ID_PATTERN = "[a-zA-Z0-9_-]{1,64}"
DATE_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS")


@dataclass(frozen=True)
class Block:
    """One block of a message given as a list: text, or an image or document whose
    template names the row's media (media_build.py stages what each row's is)."""

    kind: Literal["text", "image", "document"]
    template: templates.Template  # the text, or what names the media
    key: tuple[str | int, ...]  # where the block is in the file, for messages
    cache: bool | str = False
    title: templates.Template | None = None
    context: templates.Template | None = None
    slot: int = -1  # a media block's number: its source is column s<slot> of the staging
    blob_column: str | None = None  # the template is this BLOB column alone: the bytes


Content = templates.Template | tuple[Block, ...]
MEDIA_ROWS = "bp_media_rows"  # media_build.py's staging: one row a request


@dataclass(frozen=True)
class Resolved:
    """SQL fragments for one pipeline, checked against the warehouse's real columns."""

    file: PipelineFile
    source_sql: str  # a relation: a table name or a parenthesized query
    columns: dict[str, str]
    messages: list[tuple[str, Content]]  # (role, content)
    system: list[tuple[templates.Template, bool | str]] | None  # (text, cache)

    @property
    def name(self) -> str:
        return self.file.pipeline.name

    def partition_rows_sql(self) -> str:
        """The source rows of the run date set by `bind_date` on the connection."""
        source = self.file.pipeline.source
        where = f" AND ({source.where})" if source.where else ""
        if source.partition_column:
            column = quote_ident(source.partition_column)
            return (
                f"SELECT * FROM {self.source_sql} AS s "
                f"WHERE CAST(s.{column} AS DATE) = {RUN_DATE}{where}"
            )
        # Incremental: the rows no other run date has taken yet (and those this date took).
        taken = state.ids_taken_by_other_dates(self.name, RUN_DATE)
        return (
            f"SELECT * FROM {self.source_sql} AS s "
            f"WHERE {self.custom_id_sql('s')} NOT IN {taken}{where}"
        )

    def output_columns_sql(self, relation: str = "s") -> str:
        """The source columns the output table carries: `columns`, plus the key."""
        chosen = self.file.pipeline.source.columns
        if chosen is None:
            return f"{relation}.*"
        keep = list(dict.fromkeys([*self.key_columns, *chosen]))
        return ", ".join(f"{relation}.{quote_ident(c)}" for c in keep)

    def custom_id_sql(self, relation: str = "s") -> str:
        """custom_id from the key: readable when it fits the API's rule, else a stable hash.

        One key column: its value when it matches ^[a-zA-Z0-9_-]{1,64}$. Several: the values
        joined by `_` when none contains `_` (so the join is unambiguous) and all fit.
        batchpipe_requests keeps each id's key values either way.
        """
        keys = [f"CAST({relation}.{quote_ident(k)} AS VARCHAR)" for k in self.key_columns]
        hashed = f"'h-' || md5(CAST(to_json(list_value({', '.join(keys)})) AS VARCHAR))"
        if len(keys) == 1:
            readable, fits = keys[0], f"regexp_full_match({keys[0]}, '{CUSTOM_ID_PATTERN}')"
        else:
            readable = " || '_' || ".join(keys)
            parts = " AND ".join(f"regexp_full_match({k}, '[a-zA-Z0-9-]+')" for k in keys)
            fits = f"({parts} AND length({readable}) <= 64)"
        return f"CASE WHEN coalesce({fits}, false) THEN {readable} ELSE {hashed} END"

    def key_values_sql(self, relation: str = "s") -> str:
        pairs = ", ".join(
            f"{quote_ident(k)} := {relation}.{quote_ident(k)}" for k in self.key_columns
        )
        return f"to_json(struct_pack({pairs}))"

    @property
    def key_columns(self) -> list[str]:
        return self.file.pipeline.source.key_columns

    def params_sql(self, relation: str = "s") -> str:
        """The Messages API params of a row as JSON text, written by concatenation.

        The text is exactly what `json_object` over the same fields gives (DuckDB writes
        the constant parts, folded once per statement; `to_json` escapes each row's
        strings), so request hashes stay what they always were, at a quarter of the cost
        of building a JSON document per row.
        """
        request = self.file.pipeline.request
        head = json_text(
            f"'model', {sql_string(request.model)}, 'max_tokens', {int(request.max_tokens)}"
        )
        parts = [f"left({head}, -1)"]  # without its closing brace
        if self.system is not None:
            parts += ["',\"system\":'", _json_value(self.system_sql(relation))]
        messages = " || ',' || ".join(
            f"'{{\"role\":' || {_json_value(sql_string(role))} || ',\"content\":' || "
            f"{self._content_sql(content, relation)} || '}}'"
            for role, content in self.messages
        )
        parts += ["',\"messages\":['", messages, "']'"]
        constant = constant_params(self.file)
        if constant:
            fields = ", ".join(
                f"{sql_string(key)}, {sql_string(json.dumps(value))}::JSON"
                for key, value in constant.items()
            )
            parts.append(f"',' || substr({json_text(fields)}, 2)")  # without its opening brace
        else:
            parts.append("'}'")
        return "(" + " || ".join(parts) + ")"

    def _content_sql(self, content: Content, relation: str) -> str:
        """A message's content as JSON text: a string, or its blocks' array."""
        if isinstance(content, templates.Template):
            return _json_value(templates.to_sql(content, relation))
        blocks = []
        for block in content:
            if block.kind == "text":
                text = _json_value(templates.to_sql(block.template, relation))
                parts = [f'\'{{"type":"text","text":\' || {text}']
            else:
                parts = [f'\'{{"type":"{block.kind}","source":\' || mb.s{block.slot}']
            for name, template in (("title", block.title), ("context", block.context)):
                if template is not None:
                    value = templates.to_sql(template, relation)
                    parts.append(
                        f"CASE WHEN {value} = '' THEN '' "
                        f"ELSE ',\"{name}\":' || {_json_value(value)} END"
                    )
            if block.cache:
                parts.append(sql_string(',"cache_control":' + _cache_control(block.cache)))
            parts.append("'}'")
            blocks.append(" || ".join(parts))
        return "'[' || " + " || ',' || ".join(blocks) + " || ']'"

    @property
    def media_blocks(self) -> list[Block]:
        return [
            b
            for _, content in self.messages
            if not isinstance(content, templates.Template)
            for b in content
            if b.kind != "text"
        ]

    def media_join_sql(self, relation: str = "s") -> str:
        """The join that gives each row its staged media (`mb`), or '' without media."""
        if not self.media_blocks:
            return ""
        return f" JOIN {MEDIA_ROWS} AS mb ON mb.custom_id = {self.custom_id_sql(relation)}"

    def system_sql(self, relation: str = "s") -> str:
        """A plain string when the file gave text, else text blocks with cache_control."""
        assert self.system is not None
        request = self.file.pipeline.request
        if len(self.system) == 1 and not isinstance(request.system, list):
            return templates.to_sql(self.system[0][0], relation)
        blocks = []
        for template, cache in self.system:
            parts = f"'type', 'text', 'text', {templates.to_sql(template, relation)}"
            if cache:
                parts += f", 'cache_control', {sql_string(_cache_control(cache))}::JSON"
            blocks.append(f"json_object({parts})")
        return f"json_array({', '.join(blocks)})"

    @property
    def templates(self) -> list[templates.Template]:
        found: list[templates.Template] = []
        for _, content in self.messages:
            if isinstance(content, templates.Template):
                found.append(content)
                continue
            for block in content:
                found += [t for t in (block.template, block.title, block.context) if t]
        return found + [t for t, _ in self.system or []]


def _cache_control(cache: bool | str) -> str:
    """A block's cache_control JSON: 5 minutes (the API's default) or `ttl: 1h`."""
    control = {"type": "ephemeral", **({"ttl": cache} if cache == "1h" else {})}
    return json.dumps(control, separators=(",", ":"))


def json_text(fields: str) -> str:
    """`json_object(fields)` as VARCHAR: constant fields make a literal DuckDB folds."""
    return f"CAST(json_object({fields}) AS VARCHAR)"


def _json_value(expression: str) -> str:
    """A value as JSON text, the way json_object writes it (NULL as null)."""
    return f"coalesce(CAST(to_json({expression}) AS VARCHAR), 'null')"


def constant_params(pf: PipelineFile) -> dict[str, Any]:
    """The request options that are the same for every row, as API version 2026-10-21
    names them."""
    request = pf.pipeline.request
    params: dict[str, Any] = {}
    output_config: dict[str, Any] = {}
    fields = pf.pipeline.output.fields
    if fields:
        output_config["format"] = {"type": "json_schema", "schema": schema.json_schema(fields)}
    if request.effort:
        output_config["effort"] = request.effort
    if output_config:
        params["output_config"] = output_config
    for option in ("thinking", "stop_sequences", "inference_geo", "metadata"):
        value = getattr(request, option)
        if value is not None:
            params[option] = value
    return params


def register_templates(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> None:
    """Templates that need Jinja render through a function registered on the connection."""
    for template in resolved.templates:
        templates.register(con, template)


def enriched_select(resolved: Resolved, date: dt.date) -> tuple[str, list]:
    """The SELECT of a partition's output rows (the date bound by `bind_date`), and its
    parameters: each source row beside its request's answer. The typed fields read the
    reply once, as valid JSON or NULL."""
    pipeline = resolved.file.pipeline
    name = resolved.name
    select = f"""
        WITH {state.answers_sql(schema.valid_json_sql("text"))}
        SELECT {resolved.output_columns_sql("s")},
               CAST(? AS DATE) AS partition_date,
               {_reply_columns(pipeline)},
               coalesce(res.result_type, CASE WHEN req.skipped THEN '{state.SKIPPED_STATUS}' END,
                        'missing') AS result_status,
               res.error_message,
               res.input_tokens, res.output_tokens, res.cost_usd, res.batch_id,
               req.custom_id
        FROM ({resolved.partition_rows_sql()}) AS s
        JOIN req ON req.custom_id = {resolved.custom_id_sql("s")}
        LEFT JOIN res ON res.request_hash = req.request_hash
    """
    return select, [name, date, name, date]


def output_types(con: duckdb.DuckDBPyConnection, resolved: Resolved) -> dict[str, str]:
    """Column -> DuckDB type of the rows the pipeline writes (any date: types do not
    depend on it), to check a table it would adopt before anything is sent."""
    select, params = enriched_select(resolved, resolved.file.pipeline.partitions.start)
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {select}", params).fetchall()}


def _reply_columns(pipeline: Pipeline) -> str:
    """The reply's text in output.column, or one typed column per field and parse_error."""
    fields = pipeline.output.fields
    if not fields:
        return f"res.text AS {quote_ident(pipeline.output.column)}"
    columns = [
        f"{schema.column_sql(name, field, 'res.reply_json')} AS {quote_ident(name)}"
        for name, field in fields.items()
    ]
    error = schema.error_sql(fields, "res.text", "res.reply_json", "res.stop_reason")
    columns.append(f"CASE WHEN res.result_type = 'succeeded' THEN {error} END AS parse_error")
    return ",\n               ".join(columns)
