"""Functions from a pipeline file to Dagster specs and versions; the only I/O is reading
the template files a pipeline names, whose text is part of its requests' version."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from batchpipe import lake, warehouse
from batchpipe.defs.translator import STEPS, BatchpipeTranslator
from batchpipe.loader import PipelineFile

__all__ = ["POOL", "STEPS", "Placement"]

POOL = "duckdb_writer"  # DuckDB allows one writing process per file: runs queue on this pool


def pool_advice(pool: str, database: str | None = None) -> str:
    """What a host's instance needs once, said where a data engineer reads it."""
    limit = warehouse.writer_limit(database or warehouse.database())
    why = (
        "DuckDB takes one writer per file"
        if limit == 1
        else "a DuckLake takes many writers; BATCHPIPE_WRITERS"
    )
    return (
        f"Its steps run in the Dagster pool `{pool}`, which must allow {limit} run(s) at a "
        f"time ({why}): `dagster instance concurrency set {pool} {limit}` once per instance."
    )


@dataclass(frozen=True)
class Placement:
    """Where a folder of pipelines sits in a Dagster project: who names its assets, the
    resource key its steps ask for, the pool that keeps one DuckDB writer, and the
    database its steps open (None: BATCHPIPE_DB when the step runs)."""

    translator: BatchpipeTranslator = field(default_factory=BatchpipeTranslator)
    resource_key: str = "batchpipe"
    pool: str = POOL
    database: str | None = None

    def key(self, pf: PipelineFile, step: str) -> dg.AssetKey:
        return self.translator.get_asset_key(pf, step)

    def table_name(self, pf: PipelineFile) -> str:
        """database.schema.table, as DuckDB names the output table: the catalog of a
        database file is its file name without the extension."""
        database = self.database or warehouse.database()
        if warehouse.is_lake(database):
            return f"{lake.ALIAS}.main.{pf.pipeline.output.table}"
        catalog = "memory" if database in ("", ":memory:") else Path(database).stem
        return f"{catalog}.main.{pf.pipeline.output.table}"


def source_spec(pf: PipelineFile, placement: Placement | None = None) -> dg.AssetSpec:
    placement = placement or Placement()
    source = pf.pipeline.source
    description = (
        f"DuckDB table {source.table}" if source.table else f"DuckDB query:\n\n{source.query}"
    )
    return dg.AssetSpec(
        key=placement.translator.get_source_asset_key(pf),
        description=description,
        group_name="sources",  # not materializable: kept out of the pipeline's group
        kinds={"duckdb"},
    )


def partitions(pf: PipelineFile) -> dg.DailyPartitionsDefinition:
    # end_offset=1 includes today's partition: rows added today can run today. Days are
    # the pipeline's own (partitions.timezone), as its partition column is read.
    return dg.DailyPartitionsDefinition(
        start_date=pf.pipeline.partitions.start.isoformat(),
        end_offset=1,
        timezone=pf.pipeline.partitions.timezone,
    )
