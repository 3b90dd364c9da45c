"""batchpipe inside a Dagster project that builds its `Definitions` in Python:

    import dagster as dg
    from batchpipe.dagster import build_definitions

    defs = dg.Definitions.merge(my_defs, build_definitions("pipelines"))

`build_definitions` sets nothing project-wide (no executor), so the merge keeps the
project's own. Subclass `BatchpipeTranslator` to choose other asset keys, groups,
owners or tags. Projects made of `defs.yaml` files use `BatchpipeComponent` instead.
"""

from __future__ import annotations

from batchpipe.defs.build import build_definitions
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.defs.translator import BatchpipeTranslator

__all__ = ["BatchpipeResource", "BatchpipeTranslator", "build_definitions"]


def __getattr__(name: str) -> object:
    # `BatchpipeComponent` too, imported on use: it pulls in dagster.components
    if name == "BatchpipeComponent":
        from batchpipe.component import BatchpipeComponent

        return BatchpipeComponent
    raise AttributeError(name)
