"""`python -m batchpipe.emulator`: start the local Anthropic API emulator."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from batchpipe.emulator.server import serve

LATENCY_ENV = "BATCHPIPE_EMULATOR_LATENCY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m batchpipe.emulator",
        description="Local emulator of the Anthropic Messages and Message Batches API.",
    )
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serve(args.host, args.port, args.state_dir, args.latency, args.api_key)


if __name__ == "__main__":
    main()
