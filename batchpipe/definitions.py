"""The code location `workspace.yaml` loads: every file in pipelines/ as assets.

Pipeline files are read by batchpipe's own loader, not by Dagster Components,
because Components would render the `{{ column }}` placeholders of prompts as
their own templates. A bad file fails the code location with every problem
listed as file:line:col, which the UI shows as the location's error.
"""

from __future__ import annotations

import dagster as dg

from batchpipe.defs.assets import pipeline_assets
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.sensors import batch_sensor, daily_schedule, partition_job
from batchpipe.defs.specs import source_spec
from batchpipe.loader import PipelineFile, load_pipelines


def build_definitions(files: list[PipelineFile] | None = None) -> dg.Definitions:
    files = load_pipelines() if files is None else files
    sources = {spec.key: spec for spec in (source_spec(pf) for pf in files)}
    jobs = {pf.pipeline.name: partition_job(pf) for pf in files}
    schedules = [daily_schedule(pf, jobs[pf.pipeline.name]) for pf in files]
    return dg.Definitions(
        assets=[*sources.values(), *(a for pf in files for a in pipeline_assets(pf))],
        jobs=list(jobs.values()),
        sensors=[batch_sensor(pf) for pf in files],
        schedules=[s for s in schedules if s is not None],
        resources={"batchpipe": BatchpipeResource()},
        # A pipeline's steps are a chain and DuckDB takes one writer: one process per run
        # saves a process start per step and loses no parallelism.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
