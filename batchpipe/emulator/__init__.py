"""A local, deterministic emulator of the Anthropic Messages and Message Batches API.

It lets the pipeline and its tests run end to end through the official SDK (pointed at
it with `base_url`) without network, cost or nondeterminism: batches persist in a state
directory, time can be advanced to reach expiry, and every billed request is logged.
"""

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> object:
    # Imported on use: `batchpipe validate` builds the CLI's parser, which takes the
    # emulator's flags from __main__.py, and should not load the server to do so.
    if name == "create_app":
        from batchpipe.emulator.app import create_app

        return create_app
    if name == "serve":
        from batchpipe.emulator.server import serve

        return serve
    raise AttributeError(f"module 'batchpipe.emulator' has no attribute {name!r}")
