"""The pipeline file, as pydantic models.

These models are the contract analysts write against: every key is checked
(`extra="forbid"`), so a typo is an error with its file and line (see loader.py)
instead of a setting silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_identifier(value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain column or table name (letters, digits and _)")
    return value


class Source(_Strict):
    """Where the rows come from: a table or view, or a query."""

    table: str | None = Field(None, description="A DuckDB table or view.")
    query: str | None = Field(None, description="A SELECT whose rows are the source.")
    key: str | list[str] = Field(description="A column, or a list of columns, unique per row.")
    partition_column: str = Field(
        description="DATE or TIMESTAMP column; the rows of run date D are those falling on D."
    )

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> Source:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of 'table' or 'query'")
        return self

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Allow schema-qualified names, each part a plain identifier.
        for part in value.split("."):
            _check_identifier(part)
        return value

    @field_validator("key")
    @classmethod
    def _key_columns(cls, value: str | list[str]) -> str | list[str]:
        columns = [value] if isinstance(value, str) else value
        if not columns:
            raise ValueError("name at least one key column")
        for column in columns:
            _check_identifier(column)
        return value

    @field_validator("partition_column")
    @classmethod
    def _partition_column(cls, value: str) -> str:
        return _check_identifier(value)

    @property
    def key_columns(self) -> list[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key)


class Request(_Strict):
    """What is sent to Claude for each row."""

    model: str = Field(description="A Claude model id, e.g. claude-haiku-4-5.")
    max_tokens: Annotated[int, Field(gt=0, description="Upper bound on the reply's tokens.")]
    system: str | None = Field(None, description="System prompt, the same for every row.")
    prompt: str = Field(description="The user message; {{ column }} inserts a source column.")
    max_batch_requests: Annotated[
        int,
        Field(
            gt=0,
            le=100_000,
            description="Most requests per batch (the API allows 100,000; 2,000-5,000 under "
            "heavy traffic).",
        ),
    ] = 100_000
    max_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=10,
            description="Sends of a request whose result is retryable (expired, api_error, "
            "overloaded_error), first one included.",
        ),
    ] = 3
    wait: bool = Field(
        False,
        description="Poll inside the batch_status run until the batches end (for small, quick "
        "batches) instead of leaving it to the sensor.",
    )
    poll_interval: Annotated[
        int, Field(ge=5, description="Seconds between the sensor's polls of open batches.")
    ] = 60


class Output(_Strict):
    """Where the enriched rows go."""

    table: str = Field(description="Output table, created if missing.")
    column: str = Field("output", description="Column that receives the reply's text.")
    max_error_rate: Annotated[
        float,
        Field(ge=0, le=1, description="Largest share of errored rows the asset check accepts."),
    ] = 0.05

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        for part in value.split("."):
            _check_identifier(part)
        return value

    @field_validator("column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        return _check_identifier(value)


class Partitions(_Strict):
    start: dt.date = Field(description="First daily partition, YYYY-MM-DD.")
    schedule: str | None = Field(
        None, description="Cron for a daily run of that day's partition, e.g. '0 6 * * *'."
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError(f"{value!r} is not a cron expression like '0 6 * * *'")
        return value


class Pipeline(_Strict):
    """One analyst-authored file in pipelines/."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique; the Dagster asset key prefix.")
    description: str | None = None
    source: Source
    request: Request
    output: Output
    partitions: Partitions


def json_schema() -> dict:
    """The JSON Schema of a pipeline file, for editors and docs."""
    return Pipeline.model_json_schema()
