"""Functions from a pipeline file to Dagster specs and versions; the only I/O is reading
the template files a pipeline names, whose text is part of its requests' version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from batchpipe import warehouse
from batchpipe.defs.translator import STEPS, BatchpipeTranslator
from batchpipe.loader import PipelineFile

__all__ = ["POOL", "STEPS", "Placement"]

POOL = "duckdb_writer"  # DuckDB allows one writing process per file: runs queue on this pool


def pool_advice(pool: str) -> str:
    """What a host's instance needs once, said where a data engineer reads it."""
    return (
        f"Its steps run in the Dagster pool `{pool}`, which must allow one run at a time "
        f"(DuckDB takes one writer): `dagster instance concurrency set {pool} 1` once per "
        "instance."
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


# A step's own logic: bump when batchpipe changes what a step writes for the same file.
STEP_LOGIC = {"requests": "1", "batch_status": "1", "results": "1", "enriched": "1"}


def _template_files(pf: PipelineFile) -> dict[str, str | None]:
    """The text of each template file the request names (None when unreadable: the run
    reports that at file:line)."""
    request = pf.pipeline.request
    names = [request.prompt_file, request.system_file]
    if isinstance(request.system, list):
        names += [block.file for block in request.system]
    texts: dict[str, str | None] = {}
    for name in filter(None, names):
        try:
            texts[name] = (pf.path.parent / name).read_text(encoding="utf-8")
        except OSError:
            texts[name] = None
    return texts


def code_version(pf: PipelineFile, step: str) -> str:
    """What a step's output depends on in the file, hashed: the UI marks a partition stale
    after an edit that would change it, and what follows it through its lineage.

    `requests` hashes the source, the request and the partitions' time zone (which rows
    fall on a day), less how the sensor polls and whether a run waits; `enriched` the
    output settings; the two batch steps only their own logic, so they follow `requests`.
    The description, the budget, owners, tags and the schedule mark nothing stale."""
    pipeline = pf.pipeline
    if step == "requests":
        request = pipeline.request.model_dump(mode="json", exclude={"poll_interval", "wait"})
        parts = {
            "source": pipeline.source.model_dump(mode="json"),
            "request": request,
            "timezone": pipeline.partitions.timezone,
            "files": _template_files(pf),
        }
    elif step == "enriched":
        parts = {"output": pipeline.output.model_dump(mode="json", by_alias=True)}
    else:
        parts = {}
    text = json.dumps({"logic": STEP_LOGIC[step], **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
