"""Structured output: the `output.schema` of a pipeline file, as a JSON Schema for the
request and as typed SQL for the enriched table.

An analyst writes `label: {type: enum, values: [...]}`; Claude is asked for JSON
matching the derived JSON Schema (`output_config.format`), and one SQL expression
per field turns the reply into a typed column. A reply that does not fit is a parse
error on its row, never a crash: every cast here is a TRY_CAST.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from batchpipe.sqlcheck import sql_string

FieldType = Literal[
    "string",
    "number",
    "integer",
    "boolean",
    "enum",
    "date",
    "object",
    "list[string]",
    "list[number]",
    "list[integer]",
    "list[boolean]",
]

# JSON Schema of each type, and the DuckDB type of its column.
_JSON = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "object": {"type": "object"},
}
_SQL_TYPE = {
    "string": "VARCHAR",
    "enum": "VARCHAR",
    "number": "DOUBLE",
    "integer": "BIGINT",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "object": "JSON",
    "list[string]": "VARCHAR[]",
    "list[number]": "DOUBLE[]",
    "list[integer]": "BIGINT[]",
    "list[boolean]": "BOOLEAN[]",
}
# What json_type() reports for a value of each field type.
_JSON_TYPES = {
    "string": ("VARCHAR",),
    "enum": ("VARCHAR",),
    "date": ("VARCHAR",),
    "number": ("BIGINT", "UBIGINT", "DOUBLE"),
    "integer": ("BIGINT", "UBIGINT"),
    "boolean": ("BOOLEAN",),
    "object": ("OBJECT",),
}


class OutputField(BaseModel):
    """One field of a structured reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType = Field(
        description="string, number, integer, boolean, enum, date, "
        "object, or list[string|number|integer|boolean]."
    )
    values: list[str] | None = Field(None, description="The allowed values of an enum.")
    description: str | None = Field(None, description="Told to Claude in the JSON Schema.")

    @model_validator(mode="after")
    def _enum_values(self) -> OutputField:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum needs its values, e.g. {type: enum, values: [a, b]}")
        if self.type != "enum" and self.values is not None:
            raise ValueError(f"values only apply to type enum, not {self.type}")
        return self

    def json_schema(self) -> dict:
        if self.type == "enum":
            schema: dict = {"type": "string", "enum": list(self.values or [])}
        elif self.type.startswith("list["):
            schema = {"type": "array", "items": _JSON[self.type[5:-1]]}
        else:
            schema = dict(_JSON[self.type])
        if self.description:
            schema["description"] = self.description
        return schema

    @property
    def sql_type(self) -> str:
        return _SQL_TYPE[self.type]


def normalize(fields: dict[str, OutputField | str]) -> dict[str, OutputField]:
    return {
        name: OutputField(type=spec) if isinstance(spec, str) else spec
        for name, spec in fields.items()
    }


def json_schema(fields: dict[str, OutputField]) -> dict:
    """What the request sends as `output_config.format.schema`."""
    return {
        "type": "object",
        "properties": {name: f.json_schema() for name, f in fields.items()},
        "required": list(fields),
        "additionalProperties": False,
    }


def valid_json_sql(text: str) -> str:
    """The reply as JSON, or NULL when it is not JSON: DuckDB's JSON functions raise on
    malformed input, so every other expression here reads this one."""
    return f"CASE WHEN coalesce(json_valid({text}), false) THEN CAST({text} AS JSON) END"


def column_sql(name: str, field: OutputField, text: str) -> str:
    """The typed value of one field from the reply JSON `text` (NULL when it does not fit).
    `text` must be valid JSON or NULL (see valid_json_sql)."""
    path = sql_string(f"$.{quote_json_key(name)}")
    if field.type.startswith("list["):
        return f"TRY_CAST(json_extract({text}, {path}) AS {field.sql_type})"
    if field.type == "object":
        return (
            f"CASE WHEN json_type({text}, {path}) = 'OBJECT' THEN json_extract({text}, {path}) END"
        )
    value = f"json_extract_string({text}, {path})"
    if field.type == "enum":
        allowed = ", ".join(sql_string(v) for v in field.values or [])
        return f"CASE WHEN {value} IN ({allowed}) THEN {value} END"
    if field.type == "string":
        return f"CASE WHEN json_type({text}, {path}) = 'VARCHAR' THEN {value} END"
    return f"TRY_CAST({value} AS {field.sql_type})"


def error_sql(fields: dict[str, OutputField], text: str, reply_json: str, stop_reason: str) -> str:
    """Why a reply (`text`; `reply_json` is valid_json_sql of it) does not fit the schema,
    or NULL when it does."""
    checks = []
    for name, field in fields.items():
        path = sql_string(f"$.{quote_json_key(name)}")
        kind = f"json_type({reply_json}, {path})"
        value = column_sql(name, field, reply_json)
        if field.type.startswith("list["):
            bad = f"{kind} IS DISTINCT FROM 'ARRAY' OR {value} IS NULL"
        else:
            allowed = ", ".join(sql_string(t) for t in _JSON_TYPES[field.type])
            bad = f"{kind} IS NULL OR {kind} NOT IN ({allowed}) OR {value} IS NULL"
        article = "an" if field.type[0] in "aeiou" else "a"
        expected = f"one of {field.values}" if field.type == "enum" else f"{article} {field.type}"
        checks.append(f"CASE WHEN {bad} THEN {sql_string(f'{name}: expected {expected}')} END")
    fits = f"nullif(concat_ws('; ', {', '.join(checks)}), '')" if checks else "NULL"
    return (
        f"CASE WHEN {text} IS NULL THEN NULL "
        f"WHEN {reply_json} IS NULL THEN "
        f"'the reply is not valid JSON' || CASE WHEN {stop_reason} = 'max_tokens' "
        f"THEN ' (it was cut at max_tokens)' ELSE '' END "
        f"WHEN json_type({reply_json}) <> 'OBJECT' THEN 'the reply is not a JSON object' "
        f"ELSE {fits} END"
    )


def quote_json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'
