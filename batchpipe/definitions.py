"""batchpipe's own code location (`workspace.yaml`, `batchpipe dev`): the folder named by
BATCHPIPE_PIPELINES (default `pipelines/`), and the executor this location runs with.

Only this module reads BATCHPIPE_PIPELINES at import; a host project builds its own
with `batchpipe.dagster.build_definitions` or the `BatchpipeComponent`. Pipeline files
are read by batchpipe's own loader, not by Dagster Components' YAML, because
Components would render the `{{ column }}` placeholders of prompts as their own
templates. A broken file is shown in the UI as an asset of `batchpipe_problems`
while the other pipelines keep loading.
"""

from __future__ import annotations

import dagster as dg

from batchpipe.defs.build import build_definitions
from batchpipe.loader import pipelines_dir

defs = dg.Definitions.merge(
    build_definitions(pipelines_dir()),
    # A pipeline's steps are a chain and DuckDB takes one writer: one process per run
    # saves a process start per step and loses no parallelism. Set here, in batchpipe's
    # own location only: a host project keeps the executor it has.
    dg.Definitions(executor=dg.in_process_executor),
)
