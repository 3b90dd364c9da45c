"""A folder of pipeline files as Dagster `Definitions` that merge into any project.

Nothing project-wide is set here (no executor, no instance settings): a host
project's own `Definitions.merge` takes these as they are. A broken file does not
take the others down: its problems become an asset of their own in the group
`batchpipe_problems`, where the UI shows them, and the valid pipelines keep their
assets, sensors and schedules (so batches already paid for are still loaded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from batchpipe.defs import metadata as md
from batchpipe.defs.assets import pipeline_assets
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.sensors import batch_sensor, daily_schedule, partition_job
from batchpipe.defs.specs import Placement, source_spec
from batchpipe.defs.translator import BatchpipeTranslator
from batchpipe.loader import load_folder

PROBLEMS_GROUP = "batchpipe_problems"
log = logging.getLogger("batchpipe")


def build_definitions(
    pipelines_dir: str | Path,
    *,
    database: str | None = None,
    translator: BatchpipeTranslator | None = None,
    resource_key: str = "batchpipe",
    pool: str | None = None,
) -> dg.Definitions:
    """Assets, checks, a job, a sensor and a schedule per pipeline file in `pipelines_dir`,
    and the resource their steps use under `resource_key`.

    `database` is the DuckDB file the steps open (default: BATCHPIPE_DB when a step runs);
    `translator` chooses every Dagster name (see `BatchpipeTranslator`); `pool` is the
    concurrency pool that keeps one writer on that database (default `duckdb_writer`)."""
    placement = Placement(
        translator=translator or BatchpipeTranslator(),
        resource_key=resource_key,
        pool=pool or Placement().pool,
        database=database,
    )
    folder = load_folder(Path(pipelines_dir))
    files = folder.files
    sources = {spec.key: spec for spec in (source_spec(pf, placement) for pf in files)}
    jobs = {pf.pipeline.name: partition_job(pf, placement) for pf in files}
    schedules = [daily_schedule(pf, jobs[pf.pipeline.name], placement) for pf in files]
    for path, problems in folder.broken.items():
        log.warning("%s cannot be loaded; its pipeline is left out:\n%s", path, "\n".join(problems))
    return dg.Definitions(
        assets=[
            *sources.values(),
            *(a for pf in files for a in pipeline_assets(pf, placement)),
            *(problem_spec(path, problems) for path, problems in folder.broken.items()),
        ],
        jobs=list(jobs.values()),
        sensors=[batch_sensor(pf, jobs[pf.pipeline.name], placement) for pf in files],
        schedules=[s for s in schedules if s is not None],
        resources={placement.resource_key: shared_resource(placement.resource_key)},
    )


_SHARED: dict[str, BatchpipeResource] = {}


def shared_resource(resource_key: str) -> BatchpipeResource:
    """One resource object per key: `Definitions.merge` accepts a key twice only for the
    very same object, so two folders (or Components) on one key merge. The database is
    each folder's own, carried by its assets (`Placement.database`), not the resource."""
    return _SHARED.setdefault(resource_key, BatchpipeResource())


def problem_spec(path: Path, problems: list[str]) -> dg.AssetSpec:
    """A broken pipeline file, shown in the asset graph with what to fix (file:line:col,
    as `batchpipe validate` prints it); nothing can be materialized from it."""
    listed = "\n".join(f"- `{problem}`" for problem in problems)
    return dg.AssetSpec(
        key=dg.AssetKey([PROBLEMS_GROUP, _key_part(path.stem)]),
        group_name=PROBLEMS_GROUP,
        description=f"**{path.name} cannot be loaded**: its pipeline is left out of this "
        f"code location until it is fixed (`batchpipe validate {path}`).\n\n{listed}",
        metadata={
            md.FILE: str(path),
            md.PROBLEMS: dg.MetadataValue.md(listed),
        },
        kinds={"yaml"},
        tags={md.BROKEN_TAG: "true"},
    )


def _key_part(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    return cleaned or "file"
