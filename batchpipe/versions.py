"""What each step's output depends on in a pipeline file, hashed: Dagster's code versions,
and the request side's version that a canary batch proves (canary.py). Free of Dagster,
so the steps can read the version they send under."""

from __future__ import annotations

import hashlib
import json

from batchpipe.loader import PipelineFile

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
    fall on a day), less how the sensor polls, whether a run waits and its canary; `enriched` the
    output settings; the two batch steps only their own logic, so they follow `requests`.
    The description, the budget, owners, tags and the schedule mark nothing stale."""
    pipeline = pf.pipeline
    if step == "requests":
        request = pipeline.request.model_dump(
            mode="json", exclude={"poll_interval", "wait", "canary"}
        )
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


def request_version(pf: PipelineFile) -> str:
    """The version of what the requests are made of: the one a canary proves."""
    return code_version(pf, "requests")
