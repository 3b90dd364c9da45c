"""`python -m batchpipe.emulator` (and `batchpipe emulator`): start the local API emulator.

The flags are defined once here; `batchpipe emulator` adds the same ones to its own
subcommand through `add_arguments` and calls `run`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from batchpipe.emulator.server import serve

LATENCY_ENV = "BATCHPIPE_EMULATOR_LATENCY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, required=True, help="where batches persist")
    parser.add_argument(
        "--latency",
        type=float,
        default=float(os.environ.get(LATENCY_ENV, "2.0")),
        help=f"seconds before a batch ends (default ${LATENCY_ENV} or 2.0)",
    )
    parser.add_argument("--api-key", default=None, help="if set, only this key is accepted")


def run(args: argparse.Namespace) -> None:
    serve(args.host, args.port, args.state_dir, args.latency, args.api_key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m batchpipe.emulator",
        description="Local emulator of the Anthropic Messages and Message Batches API.",
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
