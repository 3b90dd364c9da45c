"""Pure functions from a pipeline file to Dagster names and specs: no I/O, easy to test."""

from __future__ import annotations

import hashlib
import warnings

import dagster as dg

from batchpipe.loader import PipelineFile

STEPS = ("requests", "batch_status", "results", "enriched")
# Metadata key of the batch ids still open after a step; the sensor watches these.
OPEN_BATCHES = "batchpipe/open_batch_ids"
POOL = "duckdb_writer"  # DuckDB allows one writing process per file: runs queue on this pool


def asset_key(pf: PipelineFile, step: str) -> dg.AssetKey:
    return dg.AssetKey([pf.pipeline.name, step])


def source_key(pf: PipelineFile) -> dg.AssetKey:
    """A table source is shared by every pipeline that reads it; a query is the pipeline's own."""
    table = pf.pipeline.source.table
    return (
        dg.AssetKey(["duckdb", *table.split(".")])
        if table
        else dg.AssetKey([pf.pipeline.name, "source"])
    )


def source_spec(pf: PipelineFile) -> dg.AssetSpec:
    source = pf.pipeline.source
    description = (
        f"DuckDB table {source.table}" if source.table else f"DuckDB query:\n\n{source.query}"
    )
    return dg.AssetSpec(
        key=source_key(pf),
        description=description,
        group_name="sources",  # not materializable: kept out of the pipeline's group
        kinds={"duckdb"},
    )


def partitions(pf: PipelineFile) -> dg.DailyPartitionsDefinition:
    # end_offset=1 includes today's partition: rows added today can run today.
    return dg.DailyPartitionsDefinition(
        start_date=pf.pipeline.partitions.start.isoformat(), end_offset=1
    )


def code_version(pf: PipelineFile) -> str:
    """A hash of the normalized file: the UI marks partitions stale after an edit."""
    normalized = pf.pipeline.model_dump_json()
    return hashlib.sha256(normalized.encode()).hexdigest()[:12]


def code_reference(pf: PipelineFile) -> dg.CodeReferencesMetadataValue:
    """Links each asset to its pipeline file in the UI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # stable in use since Dagster 1.7
        return dg.CodeReferencesMetadataValue(
            code_references=[
                dg.LocalFileCodeReference(file_path=str(pf.path.resolve()), line_number=1)
            ]
        )


def description(pf: PipelineFile, step: str) -> str:
    what = {
        "requests": "One Messages API request per source row of the partition.",
        "batch_status": "Submits the pending requests as Message Batches and waits for them.",
        "results": "Copies each ended batch's results into DuckDB.",
        "enriched": f"The source rows with Claude's replies, in {pf.pipeline.output.table}.",
    }[step]
    return f"{pf.pipeline.description or pf.pipeline.name}\n\n{what}"
