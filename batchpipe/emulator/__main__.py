"""`python -m batchpipe.emulator` (and `batchpipe emulator`): start the local API emulator.

The flags are defined once here; `batchpipe emulator` adds the same ones to its own
subcommand through `add_arguments` and calls `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

LATENCY_ENV = "BATCHPIPE_EMULATOR_LATENCY"


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
    return value


def _amount(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The real service's account limits (emulator/limits.py), all off by default."""
    limits = parser.add_argument_group(
        "limits",
        "the real API's account limits, all off by default; "
        "change at run time with POST /_emulator/faults",
    )
    limits.add_argument(
        "--queue-limit",
        metavar="N",
        type=_count,
        default=None,
        help="429 a create that would queue more than N unprocessed batch requests",
    )
    limits.add_argument(
        "--batch-rpm",
        metavar="N",
        type=_count,
        default=None,
        help="429 calls to /v1/messages/batches beyond N in any 60 s",
    )
    limits.add_argument(
        "--spend-limit-usd",
        metavar="X",
        type=_amount,
        default=None,
        help="429 enforced_spend_limit_reached on create once X USD is billed",
    )
    limits.add_argument(
        "--workspace-limit-usd",
        metavar="X",
        type=_amount,
        default=None,
        help="400 workspace usage limit on create once X USD is billed",
    )
    limits.add_argument(
        "--credit-usd",
        metavar="X",
        type=_amount,
        default=None,
        help="once X USD is billed, unprocessed batch lines end errored, unbilled",
    )
    limits.add_argument(
        "--max-batch-bytes",
        metavar="N",
        type=_count,
        default=None,
        help="413 request_too_large for a batch create body over N bytes (default 256 MB)",
    )
    limits.add_argument(
        "--max-messages-bytes",
        metavar="N",
        type=_count,
        default=None,
        help="413 for a /v1/messages or count_tokens body over N bytes (default 32 MB)",
    )
    limits.add_argument(
        "--not-found-after-create",
        type=_amount,
        default=None,
        metavar="S",
        help="retrieve answers 404 for S seconds after a batch's create",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, required=True, help="where batches persist")
    parser.add_argument(
        "--latency",
        type=float,
        default=float(os.environ.get(LATENCY_ENV, "2.0")),
        help=f"seconds before a batch starts completing (default ${LATENCY_ENV} or 2.0)",
    )
    parser.add_argument("--api-key", default=None, help="if set, only this key is accepted")
    parser.add_argument("--public", action="store_true", help="allow a --host that is not loopback")
    faults = parser.add_argument_group(
        "faults", "all off by default; change at run time with POST /_emulator/faults"
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of every fault decision")
    faults.add_argument(
        "--http-error-rate",
        type=_rate,
        default=0.0,
        help="fraction of /v1 calls answered 429/500/529",
    )
    faults.add_argument(
        "--stream-cut-rate", type=_rate, default=0.0, help="fraction of results downloads cut"
    )
    faults.add_argument(
        "--errored-rate", type=_rate, default=0.0, help="fraction of batch lines errored"
    )
    faults.add_argument(
        "--expired-rate", type=_rate, default=0.0, help="fraction of batch lines expired"
    )
    faults.add_argument(
        "--requests-per-second",
        type=_positive,
        default=None,
        help="batch processing speed once the latency has passed (default: unlimited)",
    )
    add_limit_arguments(parser)


def _flags(args: argparse.Namespace, settings: type) -> dict:
    """The command-line flags named as the fields of a settings dataclass."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)}


def run(args: argparse.Namespace) -> None:
    from batchpipe.emulator.faults import FaultSettings
    from batchpipe.emulator.limits import LimitSettings
    from batchpipe.emulator.server import serve

    faults = FaultSettings(**_flags(args, FaultSettings))
    serve(
        args.host,
        args.port,
        args.state_dir,
        args.latency,
        args.api_key,
        faults=faults,
        seed=args.seed,
        public=args.public,
        limits=LimitSettings(**_flags(args, LimitSettings)),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m batchpipe.emulator",
        description="Local emulator of the Anthropic Messages and Message Batches API.",
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
