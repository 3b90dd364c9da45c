"""`BatchpipeComponent`: a folder of pipeline files in a Dagster project's defs folder.

    # defs/enrich/defs.yaml
    type: batchpipe.BatchpipeComponent
    attributes:
      pipelines: pipelines

`dg scaffold defs batchpipe.BatchpipeComponent NAME` writes that file and a starter
pipeline in `NAME/pipelines/`. The pipeline files are read by batchpipe's own loader,
never by the Components template engine: it would render a prompt's `{{ column }}` as
its own template. Only the attributes below are Dagster's (and may use its `{{ }}`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from pydantic import BaseModel, Field

from batchpipe.defs.build import build_definitions
from batchpipe.defs.specs import POOL
from batchpipe.defs.translator import ConfiguredTranslator
from batchpipe.errors import ConfigError

__all__ = ["BatchpipeComponent", "BatchpipeScaffolder"]


def _asset_key(value: str | Sequence[str]) -> dg.AssetKey:
    """`raw/products` or `[raw, products]`, as Dagster's own components take a key."""
    if isinstance(value, str):
        return dg.AssetKey.from_user_string(value)
    return dg.AssetKey([str(part) for part in value])


def _resolve_source_keys(
    context: dg.ResolutionContext, value: Mapping[str, Any] | None
) -> dict[str, dg.AssetKey]:
    resolved = context.resolve_value(value or {})
    return {str(table): _asset_key(key) for table, key in resolved.items()}


def _resolve_tags(context: dg.ResolutionContext, value: Mapping[str, Any] | None) -> dict:
    resolved = context.resolve_value(value or {})
    return {str(k): str(v) for k, v in resolved.items()}  # `tier: 1` is the tag "1"


SourceAssetKeys = Annotated[
    dict[str, dg.AssetKey],
    dg.Resolver(
        _resolve_source_keys,
        model_field_type=dict[str, str | list[str]],
        description="A source table's name -> the asset key of whatever loads it (a dlt or "
        "Sling asset), as `raw/products` or `[raw, products]`: the pipeline's requests "
        "then depend on that asset, so lineage joins upstream ingestion.",
        examples=[{"products": ["raw", "products"]}],
    ),
]
Tags = Annotated[
    dict[str, str],
    dg.Resolver(
        _resolve_tags,
        model_field_type=dict[str, Any],
        description="Tags added to every asset (a pipeline file's own tags win).",
        examples=[{"domain": "catalog"}],
    ),
]


class BatchpipeScaffoldParams(BaseModel):
    """`dg scaffold defs batchpipe.BatchpipeComponent NAME [--table T] [--database D]`."""

    table: str | None = Field(
        None,
        description="Start from this DuckDB table's columns (as `batchpipe new` does); "
        "default: a starter over a few inline rows, which runs on any database.",
    )
    database: str | None = Field(
        None,
        description="The DuckDB file, written to defs.yaml (relative to the folder the "
        "command runs in); default: BATCHPIPE_DB when a step runs.",
    )


class BatchpipeScaffolder(dg.Scaffolder[BatchpipeScaffoldParams]):
    """Writes `defs.yaml` and a starter pipeline file that `batchpipe validate` accepts."""

    @classmethod
    def get_scaffold_params(cls) -> type[BatchpipeScaffoldParams]:
        return BatchpipeScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[BatchpipeScaffoldParams]) -> None:
        from batchpipe import warehouse
        from batchpipe.starter import write_schema, write_starter

        params = request.params or BatchpipeScaffoldParams()
        target = request.target_path.resolve()
        if request.append and target.suffix in (".yaml", ".yml"):
            target = target.parent  # appending a document to this defs.yaml
        database = params.database
        if database and not _is_special(database):
            database = str(Path(database).resolve())  # as typed: relative to where dg runs
        relative = database and _relative_to(database, target)
        if request.append:
            dg.scaffold_component(
                request, {"pipelines": "pipelines", **({"database": relative} if relative else {})}
            )
        elif request.scaffold_format == "python":
            (target / "component.py").write_text(_component_py(relative), encoding="utf-8")
        else:
            (target / "defs.yaml").write_text(_defs_yaml(request.type_name, relative), "utf-8")
        pipelines = target / "pipelines"
        pipelines.mkdir(parents=True, exist_ok=True)
        name = _pipeline_name(target.name)
        if params.table:
            # The table's own columns: the prompt names its text columns.
            with warehouse.using(database):
                write_starter(name, params.table, pipelines)
        else:
            path = pipelines / f"{name}.yaml"
            if not path.exists():  # a file someone already edited is theirs
                path.write_text(starter_text(name), encoding="utf-8")
            write_schema(pipelines)


@dg.scaffold_with(BatchpipeScaffolder)
class BatchpipeComponent(dg.Component, dg.Resolvable, dg.Model):
    """Enriches DuckDB tables with Claude through the Message Batches API: one pipeline
    file (YAML) per enrichment in the `pipelines` folder, each becoming partitioned
    assets `NAME/requests`, `NAME/batch_status`, `NAME/results` and `NAME/enriched`
    (with their checks), a job, a sensor that loads the batches once they end, and a
    schedule.

    ```yaml
    type: batchpipe.BatchpipeComponent
    attributes:
      pipelines: pipelines             # relative to this defs.yaml's folder
      database: warehouse.duckdb       # default: BATCHPIPE_DB when a step runs
      pool: duckdb_writer
      group_prefix: enrich_
      owners: ["team:data"]
      tags: {domain: catalog}
      source_asset_keys: {products: raw/products}
    ```

    **Set the pool's limit once per Dagster instance.** DuckDB takes one writer per
    file: every step runs in the concurrency pool `duckdb_writer` (the `pool`
    attribute), which must allow one step at a time, or two runs fail on the file lock:

        dagster instance concurrency set duckdb_writer 1

    (with another `pool`, that name instead of `duckdb_writer`). A run that finds no
    limit on its pool warns in its log.

    Prompt templates stay in the pipeline files, which batchpipe reads itself: their
    `{{ column }}` placeholders are never rendered by the Components template engine.
    The API key is read from ANTHROPIC_API_KEY when a step runs, never from config.
    """

    pipelines: Annotated[
        str,
        dg.Resolver.default(
            description="The folder of pipeline files (*.yaml), relative to the folder "
            "of this defs.yaml. A broken file is shown in the group `batchpipe_problems` "
            "and the others keep loading."
        ),
    ] = "pipelines"
    database: Annotated[
        str | None,
        dg.Resolver.default(
            description="The DuckDB database the steps read and write, relative to the "
            "folder of this defs.yaml; default: the BATCHPIPE_DB environment variable "
            "when a step runs. A name that is not a file path (`:memory:`, `md:...`) "
            "is used as it is."
        ),
    ] = None
    resource_key: Annotated[
        str, dg.Resolver.default(description="The key of the resource the steps use.")
    ] = "batchpipe"
    pool: Annotated[
        str,
        dg.Resolver.default(
            description="The Dagster concurrency pool every step runs in; limit it to 1 "
            "once per instance: `dagster instance concurrency set duckdb_writer 1`."
        ),
    ] = POOL
    group_prefix: Annotated[
        str | None,
        dg.Resolver.default(description="Put before each pipeline's group name (`enrich_` ...)."),
    ] = None
    owners: Annotated[
        list[str],
        dg.Resolver.default(
            description="Owners of every asset (`team:data`, an email), before a file's own."
        ),
    ] = []  # noqa: RUF012 (pydantic copies the default)
    tags: Tags = {}  # noqa: RUF012
    source_asset_keys: SourceAssetKeys = {}  # noqa: RUF012

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # A defs.yaml's context path is its folder; a component.py's is the file.
        defs_dir = context.path if context.path.is_dir() else context.path.parent
        folder = self.pipelines_path(defs_dir)
        if not folder.is_dir():
            declared = context.path if context.path.is_file() else defs_dir / "defs.yaml"
            raise ConfigError(
                [
                    f"{declared}: attributes.pipelines: {self.pipelines!r} is not a folder "
                    f"({folder} does not exist); name the folder of pipeline files, "
                    f"relative to {defs_dir}"
                ]
            )
        translator = ConfiguredTranslator(
            group_prefix=self.group_prefix,
            owners=tuple(self.owners),
            tags=dict(self.tags),
            source_asset_keys=dict(self.source_asset_keys),
        )
        # one resource object per key (see build.shared_resource): two Components merge
        return build_definitions(
            folder,
            database=self.database_path(defs_dir),
            translator=translator,
            resource_key=self.resource_key,
            pool=self.pool,
        )

    def pipelines_path(self, defs_dir: Path) -> Path:
        return (Path(defs_dir) / Path(self.pipelines).expanduser()).resolve()

    def database_path(self, defs_dir: Path) -> str | None:
        """The database as the steps open it: a file path made absolute against the defs
        folder (steps run in other processes, started from other folders)."""
        if self.database is None or _is_special(self.database):
            return self.database
        return str((Path(defs_dir) / Path(self.database).expanduser()).resolve())


def _is_special(database: str) -> bool:
    """Not a file path: `:memory:`, `md:...`, `` (as warehouse and `batchpipe dev` read it)."""
    return not database or (":" in database and not Path(database).is_absolute())


def _relative_to(database: str, folder: Path) -> str:
    if _is_special(database):
        return database
    return os.path.relpath(database, folder)


def _pipeline_name(folder_name: str) -> str:
    """A pipeline name ([a-z][a-z0-9_]*) from the scaffolded folder's name."""
    name = re.sub(r"[^a-z0-9_]+", "_", folder_name.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"pipeline_{name}".rstrip("_")
    return name


def _defs_yaml(type_name: str, database: str | None) -> str:
    database_line = (
        f"  database: {database}\n"
        if database
        else "  # database: warehouse.duckdb    # default: BATCHPIPE_DB when a step runs\n"
    )
    return (
        f"type: {type_name}\n"
        "\n"
        "attributes:\n"
        "  # The folder of pipeline files, relative to this file's folder.\n"
        "  pipelines: pipelines\n"
        f"{database_line}"
        "  # Every step runs in this pool; once per Dagster instance, allow one writer:\n"
        "  #   dagster instance concurrency set duckdb_writer 1\n"
        "  # pool: duckdb_writer\n"
        "  # group_prefix: enrich_\n"
        "  # owners: [team:data]\n"
        "  # tags: {domain: catalog}\n"
        "  # source_asset_keys: {products: raw/products}   # lineage from your ingestion\n"
    )


def _component_py(database: str | None) -> str:
    database_arg = f", database={database!r}" if database else ""
    return (
        "import dagster as dg\n"
        "\n"
        "from batchpipe import BatchpipeComponent\n"
        "\n"
        "\n"
        "@dg.component_instance\n"
        "def load(context: dg.ComponentLoadContext) -> BatchpipeComponent:\n"
        "    # The folder of pipeline files, relative to this file's folder. Every step runs\n"
        "    # in the pool duckdb_writer: `dagster instance concurrency set duckdb_writer 1`.\n"
        f'    return BatchpipeComponent(pipelines="pipelines"{database_arg})\n'
    )


def starter_text(name: str, today: dt.date | None = None) -> str:
    """A pipeline over three inline rows dated `today`: it validates and runs on any
    database, and shows where a real table goes. Its prompt's `{{ item }}` is written
    as it is, for batchpipe (not Dagster) to fill."""
    day = (today or dt.date.today()).isoformat()
    return (
        "# yaml-language-server: $schema=./schema.json\n"
        "# Written by `dg scaffold defs batchpipe.BatchpipeComponent`. It reads three inline\n"
        "# rows so it runs anywhere: point `source` at your own table (`table: products`),\n"
        "# then `batchpipe validate` this file (BATCHPIPE_DB naming your database).\n"
        f"name: {name}\n"
        "description: A starter pipeline; edit the source and the prompt\n"
        "source:\n"
        "  query: |\n"
        "    SELECT * FROM (VALUES\n"
        f"      (1, 'Aurora Lamp', DATE '{day}'),\n"
        f"      (2, 'Basalt Backpack', DATE '{day}'),\n"
        f"      (3, 'Cinder Kettle', DATE '{day}')\n"
        "    ) AS t(item_id, item, added_on)\n"
        "  key: item_id                    # unique per row\n"
        "  partition_column: added_on      # the rows of run date D are those falling on D\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 200\n"
        '  prompt: "Write a one-sentence product description for: {{ item }}"\n'
        "output:\n"
        f"  table: {name}\n"
        "  column: answer\n"
        "partitions:\n"
        f"  start: {day}\n"
    )
