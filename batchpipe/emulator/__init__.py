"""A local, deterministic emulator of the Anthropic Messages and Message Batches API.

It lets the pipeline and its tests run end to end through the official SDK (pointed at
it with `base_url`) without network, cost or nondeterminism: batches persist in a state
directory, time can be advanced to reach expiry, and every billed request is logged.
"""

from batchpipe.emulator.app import create_app
from batchpipe.emulator.server import serve

__all__ = ["create_app", "serve"]
