"""batchpipe: YAML pipelines that enrich DuckDB tables with Claude through the Message
Batches API, run by Dagster. `batchpipe.BatchpipeComponent` is the Dagster Component
(`type: batchpipe.BatchpipeComponent` in a defs.yaml); `batchpipe.dagster` the Python API."""


def __getattr__(name: str) -> object:
    # Imported on use, so `import batchpipe` (the CLI, `batchpipe validate`) stays light.
    if name == "BatchpipeComponent":
        from batchpipe.component import BatchpipeComponent

        return BatchpipeComponent
    raise AttributeError(f"module 'batchpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    # `dg list components` finds a registry module's components through dir().
    return [*globals(), "BatchpipeComponent"]
