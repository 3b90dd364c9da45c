"""The pipeline file, as pydantic models.

These models are the contract analysts write against: every key is checked
(`extra="forbid"`), so a typo is an error with its file and line (see loader.py)
instead of a setting silently ignored.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from batchpipe.schema import FieldType, OutputField, normalize

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_identifier(value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain column or table name (letters, digits and _)")
    return value


class Source(_Strict):
    """Where the rows come from: a table or view, or a query."""

    table: str | None = Field(None, description="A DuckDB table or view.")
    query: str | None = Field(None, description="A SELECT whose rows are the source.")
    key: str | list[str] = Field(description="A column, or a list of columns, unique per row.")
    partition_column: str | None = Field(
        None,
        description="DATE or TIMESTAMP column; the rows of run date D are those falling on D. "
        "Without one the pipeline is incremental: D takes the rows no earlier date took.",
    )
    where: str | None = Field(None, description="A SQL filter on the source's rows.")
    columns: list[str] | None = Field(
        None, description="Source columns carried into the output (default: all)."
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
    def _partition_column(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value)

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        for column in value or []:
            _check_identifier(column)
        return value

    @property
    def key_columns(self) -> list[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key)


class SystemBlock(_Strict):
    """One block of a system prompt; `cache: true` marks the prompt up to here for caching."""

    text: str | None = Field(None, description="Text; {{ column }} inserts a source column.")
    file: str | None = Field(None, description="Or a file beside the pipeline holding the text.")
    cache: bool | Literal["5m", "1h"] = Field(
        False, description="true (5 minutes) or 1h: reuse this prefix across requests."
    )

    @model_validator(mode="after")
    def _text_or_file(self) -> SystemBlock:
        if (self.text is None) == (self.file is None):
            raise ValueError("give a block either text or file")
        return self


class ContentBlock(_Strict):
    """One block of a message: text, or an image or document read from a row's column.

    A media block's template gives a local path (relative to media.root), an http(s)
    URL, or, as a bare `{{ column }}` of a BLOB column, the bytes themselves. The media
    type comes from the bytes, never from the name.
    """

    text: str | None = Field(None, description="Text; {{ column }} inserts a source column.")
    image: str | None = Field(
        None,
        description="An image: JPEG, PNG, GIF or WebP, from a path, an http(s) URL or a BLOB "
        "column, e.g. '{{ photo_path }}'.",
    )
    document: str | None = Field(
        None,
        description="A PDF or plain text document, from a path, an http(s) URL or a BLOB "
        "column, e.g. '{{ invoice_pdf }}'.",
    )
    title: str | None = Field(None, description="A document's title; {{ column }} works.")
    context: str | None = Field(
        None, description="Text about a document that is not part of it; {{ column }} works."
    )
    cache: bool | Literal["5m", "1h"] = Field(
        False, description="true (5 minutes) or 1h: cache the prompt up to this block."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ContentBlock:
        kinds = [k for k in ("text", "image", "document") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give a block exactly one of text, image or document")
        if (self.title is not None or self.context is not None) and kinds != ["document"]:
            raise ValueError("title and context belong to a document block")
        return self

    @property
    def kind(self) -> Literal["text", "image", "document"]:
        return (
            "text" if self.text is not None else "image" if self.image is not None else "document"
        )

    @property
    def source(self) -> str:
        """The block's template: its text, or what names its media."""
        return self.text or self.image or self.document or ""


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock] = Field(
        description="Text ({{ column }} inserts a source column), or a list of blocks: "
        "{text: ...}, {image: ...}, {document: ..., title: ...}."
    )


class Media(_Strict):
    """How the media blocks' files are found and sent."""

    root: str | None = Field(
        None,
        description="Folder that relative paths are read from (default: the pipeline file's "
        "folder; a relative root is relative to it too).",
    )
    upload: Literal["inline", "files_api"] = Field(
        "inline",
        description="inline: the bytes go base64 in each request; files_api: each distinct "
        "file is uploaded once through the Files API and requests name its file_id.",
    )
    fetch_urls: bool = Field(
        False,
        description="true: batchpipe downloads http(s) URLs and sends their bytes; false: "
        "the URL goes in the request and the API fetches it.",
    )


class Request(_Strict):
    """What is sent to Claude for each row."""

    model: str = Field(description="A Claude model id, e.g. claude-haiku-4-5.")
    max_tokens: Annotated[int, Field(gt=0, description="Upper bound on the reply's tokens.")]
    system: str | list[SystemBlock] | None = Field(
        None, description="System prompt: text, or a list of blocks (with cache: true)."
    )
    prompt: str | list[Message] | None = Field(
        None,
        description="The user message, or a list of messages with roles; {{ column }} "
        "inserts a source column.",
    )
    prompt_file: str | None = Field(None, description="Or a file beside the pipeline.")
    system_file: str | None = Field(None, description="Or a file beside the pipeline.")
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
            "overloaded_error), first one included. A request the API left unrun because the "
            "credit ran out (errored_billing) gets as many resends again, counted apart.",
        ),
    ] = 3
    canary: Annotated[
        int | None,
        Field(
            ge=0,
            le=100_000,
            description="Requests of each partition sent first, alone: the rest goes only if "
            "their error rate is within output.max_error_rate. Unset: 10, when the request "
            "side is new or changed and a partition has more than 1,000 to send; 0: never.",
        ),
    ] = None
    wait: bool = Field(
        False,
        description="Poll inside the batch_status run until the batches end (for small, quick "
        "batches) instead of leaving it to the sensor.",
    )
    poll_interval: Annotated[
        int, Field(ge=5, description="Seconds between the sensor's polls of open batches.")
    ] = 60
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="output_config.effort: how much the model thinks."
    )
    thinking: dict[str, Any] | None = Field(
        None,
        description="Passed as is, e.g. {type: adaptive} or {type: enabled, budget_tokens: 2048}.",
    )
    stop_sequences: list[str] | None = None
    inference_geo: str | None = Field(None, description="Where the request runs, e.g. us.")
    metadata: dict[str, str] | None = Field(None, description="e.g. {user_id: ...}.")
    betas: list[str] | None = Field(
        None, description="anthropic-beta values, e.g. output-300k-2026-03-24."
    )
    # Removed from the API in version 2026-10-21: named here so the error says so.
    temperature: SkipJsonSchema[Any] = Field(None, exclude=True)
    top_p: SkipJsonSchema[Any] = Field(None, exclude=True)
    top_k: SkipJsonSchema[Any] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _one_prompt(self) -> Request:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("set exactly one of 'prompt' or 'prompt_file'")
        if self.system is not None and self.system_file is not None:
            raise ValueError("set at most one of 'system' or 'system_file'")
        return self

    @field_validator("temperature", "top_p", "top_k")
    @classmethod
    def _removed(cls, value: Any, info: Any) -> None:
        if value is not None:
            raise ValueError(
                f"{info.field_name} was removed in API version 2026-10-21, which batchpipe "
                "uses; delete it (effort and thinking steer the model instead)"
            )
        return None


class Output(_Strict):
    """Where the enriched rows go."""

    table: str = Field(description="Output table, created if missing.")
    column: str = Field("output", description="Column that receives the reply's text.")
    schema_: dict[str, OutputField | FieldType] | None = Field(
        None,
        alias="schema",
        description="Structured output: field -> type. One typed column per field.",
    )
    mode: Literal["replace_partition", "append"] = Field(
        "replace_partition",
        description="replace_partition rewrites the run date's rows; append adds the rows "
        "not already in the table.",
    )
    max_error_rate: Annotated[
        float,
        Field(ge=0, le=1, description="Largest share of errored rows the asset check accepts."),
    ] = 0.05
    block_on_error_rate: bool = Field(
        False,
        description="true: a failed error_rate check is blocking, so Dagster does not run "
        "what depends on the enriched table.",
    )
    # An output table belongs to the one pipeline that created it (batchpipe_outputs): a
    # typo or a copied file must not add columns to, and delete rows of, someone's table.
    # Writing into a table batchpipe did not create is therefore a choice made in the file.
    adopt_existing: bool = Field(
        False,
        description="true: write into an existing table that batchpipe did not create "
        "(its key columns present, shared columns of the same types); this pipeline then "
        "owns it. A table another pipeline owns is refused either way.",
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        # A pipeline writes only its own table in the main schema of BATCHPIPE_DB: a
        # schema or catalog prefix could reach another (ATTACHed) database, and the
        # batchpipe_ tables hold the state that makes runs recoverable.
        if "." in value:
            raise ValueError(
                f"{value!r}: expected a plain table name (letters, digits and _); the output "
                "table is always created in the main schema of BATCHPIPE_DB, so it takes no "
                "schema or database prefix"
            )
        if value.lower().startswith("batchpipe_"):
            raise ValueError(
                f"{value!r}: names starting with batchpipe_ are batchpipe's own state tables; "
                "choose another name"
            )
        return _check_identifier(value)

    @field_validator("column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        return _check_identifier(value)

    @field_validator("schema_")
    @classmethod
    def _field_names(cls, value: dict | None) -> dict | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one field")
            for name in value:
                _check_identifier(name)
        return value

    @property
    def fields(self) -> dict[str, OutputField] | None:
        return normalize(self.schema_) if self.schema_ else None


class Partitions(_Strict):
    start: dt.date = Field(description="First daily partition, YYYY-MM-DD.")
    schedule: str | None = Field(
        None,
        description="Cron of a daily run, e.g. '0 6 * * *'; each tick runs the partition of "
        "the day that has just ended (see schedule_offset_days).",
    )
    # A schedule spends money on every tick: it starts only when the file says so.
    schedule_enabled: bool = Field(
        False,
        description="true: the schedule runs as soon as it is loaded; else start it in the UI.",
    )
    schedule_offset_days: Annotated[int, Field(ge=0)] = Field(
        1,
        description="How many days before the tick's date its partition is: 1 (the day that "
        "has just ended, as Dagster's partitioned schedules do), 0 for the tick's own day.",
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone, e.g. Europe/Paris: the day a TIMESTAMP WITH TIME ZONE "
        "partition column falls on, and how such values print in prompts. DATE and "
        "TIMESTAMP values are taken as they are.",
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        # Checked here, not left to DuckDB's SET TimeZone at run time: a typo would
        # otherwise surface only when a partition's rows are first read.
        known = iana_timezones()
        if value in known:
            return value
        lowered = {name.lower(): name for name in known}
        close = [lowered[value.lower()]] if value.lower() in lowered else []
        close = close or difflib.get_close_matches(value, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{value!r} is not an IANA time zone name such as 'UTC', 'Europe/Paris' or "
            f"'America/New_York'{hint}"
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


@functools.cache
def iana_timezones() -> frozenset[str]:
    """The zone names `partitions.timezone` accepts: the IANA database's, as Python's
    zoneinfo finds them (the system's, else the tzdata package that requirements.lock
    pins through dagster); DuckDB's ICU knows each of them. `localtime` is left out: it
    means the machine's zone, which is what the setting exists to be independent of."""
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


class Budget(_Strict):
    """Spend limits, checked before each batch is sent (see batchpipe/budget.py)."""

    max_usd_per_run: Annotated[float, Field(ge=0)] | None = Field(
        None, description="USD one partition may spend, all its batches together."
    )
    max_usd_per_day: Annotated[float, Field(ge=0)] | None = Field(
        None, description="USD this pipeline may spend on batches sent on one day (UTC)."
    )


class Pipeline(_Strict):
    """One analyst-authored file in pipelines/."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique; the Dagster asset key prefix.")
    description: str | None = None
    source: Source
    request: Request
    output: Output
    partitions: Partitions
    budget: Budget | None = None
    media: Media = Field(default_factory=Media)
    owners: list[str] = Field(
        default_factory=list,
        description="Dagster asset owners: emails or team:NAME, e.g. team:data-eng.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Dagster asset tags, e.g. {domain: catalog}."
    )

    # Dagster refuses a bad owner or tag when the code location loads, which would take
    # every other pipeline down with this file: check them here, at file:line.
    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not (re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", owner) or owner.startswith("team:")):
                raise ValueError(
                    f"{owner!r}: an owner is an email address or a team name such as team:data-eng"
                )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        part = r"[A-Za-z0-9_.-]{1,63}"
        for key, tag in value.items():
            if not re.fullmatch(rf"{part}(/{part})?", key):
                raise ValueError(
                    f"tag key {key!r}: letters, digits, _ - . (and one / for a namespace), "
                    "at most 63 each"
                )
            if not re.fullmatch(r"[A-Za-z0-9_.-]{0,63}", tag):
                raise ValueError(
                    f"tag {key}: {tag!r}: a value is letters, digits, _ - . only, at most 63"
                )
        return value


def json_schema() -> dict:
    """The JSON Schema of a pipeline file, for editors and docs."""
    return Pipeline.model_json_schema()
