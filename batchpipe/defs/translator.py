"""The one place where a pipeline file's Dagster names are chosen, after `DagsterDbtTranslator`.

A host project that wants other asset keys, groups or owners subclasses
`BatchpipeTranslator` and overrides a method; the assets, checks, jobs, sensor and
schedule all ask it, so a renamed key is renamed everywhere at once. Each method
gets the pipeline file and, where the answer differs per asset, the step
(`requests`, `batch_status`, `results` or `enriched`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from batchpipe.loader import PipelineFile

STEPS = ("requests", "batch_status", "results", "enriched")

_WHAT = {
    "requests": "One Messages API request per source row of the partition.",
    "batch_status": "Submits the pending requests as Message Batches and tracks them.",
    "results": "Copies each ended batch's results into DuckDB; materialized once every "
    "batch of the partition has ended.",
    "enriched": "The source rows with Claude's replies; materialized once every batch of "
    "the partition has ended and its results are written.",
}


class BatchpipeTranslator:
    """Default names: `NAME/step` keys in group NAME, the file's owners and tags."""

    def get_asset_key(self, pf: PipelineFile, step: str) -> dg.AssetKey:
        return dg.AssetKey([pf.pipeline.name, step])

    def get_source_asset_key(self, pf: PipelineFile) -> dg.AssetKey:
        """A table source is shared by every pipeline that reads it (`duckdb/TABLE`); a
        query is the pipeline's own (`NAME/source`)."""
        table = pf.pipeline.source.table
        if table:
            return dg.AssetKey(["duckdb", *table.split(".")])
        return dg.AssetKey([pf.pipeline.name, "source"])

    def get_group_name(self, pf: PipelineFile) -> str:
        return pf.pipeline.name

    def get_description(self, pf: PipelineFile, step: str) -> str:
        return f"{pf.pipeline.description or pf.pipeline.name}\n\n{_WHAT[step]}"

    def get_metadata(self, pf: PipelineFile, step: str) -> Mapping[str, object]:
        """Links each asset to its pipeline file in the UI."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)  # stable in use since Dagster 1.7
            reference = dg.CodeReferencesMetadataValue(
                code_references=[
                    dg.LocalFileCodeReference(file_path=str(pf.path.resolve()), line_number=1)
                ]
            )
        return {"dagster/code_references": reference}

    def get_tags(self, pf: PipelineFile, step: str) -> Mapping[str, str]:
        return dict(pf.pipeline.tags)

    def get_owners(self, pf: PipelineFile, step: str) -> Sequence[str]:
        return list(pf.pipeline.owners)

    def get_job_name(self, pf: PipelineFile) -> str:
        """The job of all four steps: what schedules, backfills and the sensor run."""
        return f"{pf.pipeline.name}__job"

    def get_sensor_name(self, pf: PipelineFile) -> str:
        return f"{pf.pipeline.name}__batches"

    def get_schedule_name(self, pf: PipelineFile) -> str:
        return f"{pf.pipeline.name}__daily"


@dataclass(frozen=True)
class ConfiguredTranslator(BatchpipeTranslator):
    """The Component's attributes as a translator: a group prefix, owners and tags added
    to every pipeline's own, and source tables mapped to the assets that load them (a
    dlt or Sling asset), so lineage joins upstream ingestion."""

    group_prefix: str | None = None
    owners: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    source_asset_keys: Mapping[str, dg.AssetKey] = field(default_factory=dict)

    def get_group_name(self, pf: PipelineFile) -> str:
        name = super().get_group_name(pf)
        return f"{self.group_prefix}{name}" if self.group_prefix else name

    def get_source_asset_key(self, pf: PipelineFile) -> dg.AssetKey:
        table = pf.pipeline.source.table
        if table is not None:
            for name, key in self.source_asset_keys.items():
                if name.lower() == table.lower():  # as DuckDB compares names
                    return key
        return super().get_source_asset_key(pf)

    def get_tags(self, pf: PipelineFile, step: str) -> Mapping[str, str]:
        return {**self.tags, **super().get_tags(pf, step)}

    def get_owners(self, pf: PipelineFile, step: str) -> Sequence[str]:
        return list(dict.fromkeys([*self.owners, *super().get_owners(pf, step)]))
