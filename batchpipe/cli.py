"""`batchpipe ...`: run partitions through Dagster, check files, serve the emulator.

Every command turns batchpipe's own errors into `error: ...` lines and exit
status 1; an analyst never sees a traceback for a mistake in a file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from batchpipe.errors import BatchpipeError, ConfigError, scrub, scrubbed

EXAMPLES = """examples:
  batchpipe run product_descriptions --date 2026-11-03
  batchpipe run --all --date 2026-11-03
  batchpipe retry product_descriptions --date 2026-11-03
  batchpipe validate
  batchpipe show product_descriptions --date 2026-11-03
  batchpipe costs --since 2026-11-01 --by pipeline
  batchpipe warehouse init      # once, for a DuckLake BATCHPIPE_DB
  batchpipe emulator --host 127.0.0.1 --port 8765 --state-dir .batchpipe/emulator
"""


def entry() -> NoReturn:
    """The console script: `main`, then a hard exit once its output is flushed.

    Tearing the interpreter down after the work is done (the SDK's and Dagster's
    thousands of classes freed one by one) took about a second of a 10-row run's five
    and saves nothing: every connection, file and Dagster instance is closed by then,
    and a background emulator is a process of its own. mypy exits the same way."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone: nothing to flush to
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with scrubbed():  # an error that quotes the API key leaves here without it
            return args.handler(args) or 0
    except BatchpipeError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to carry on", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `batchpipe costs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchpipe",
        description="Enrich DuckDB tables with Claude through the Message Batches API.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run pipeline partitions through Dagster, in process")
    _add_selection(run)
    run.add_argument("--date", required=True, type=_date, help="the run date, YYYY-MM-DD")
    run.set_defaults(handler=_run)

    retry = sub.add_parser(
        "retry", help="send again a partition's requests that came back for lack of credit"
    )
    retry.add_argument("names", nargs=1, metavar="NAME")
    retry.add_argument("--date", required=True, type=_date, help="the run date, YYYY-MM-DD")
    retry.set_defaults(handler=_retry, all=False)

    show = sub.add_parser("show", help="print a few enriched rows and the partition's cost")
    _add_selection(show)
    show.add_argument("--date", required=True, type=_date, help="the run date, YYYY-MM-DD")
    show.add_argument("--limit", type=int, default=5, help="rows to print (default 5)")
    show.set_defaults(handler=_show)

    plan = sub.add_parser("plan", help="what a partition would send and cost; sends nothing")
    plan.add_argument("names", nargs=1, metavar="NAME")
    plan.add_argument("--date", required=True, type=_date, help="the run date, YYYY-MM-DD")
    plan.set_defaults(handler=_plan, all=False)

    status = sub.add_parser("status", help="open and recent batches: counts, age, cost so far")
    status.add_argument("names", nargs="*", metavar="NAME")
    status.add_argument(
        "--watch",
        action="store_true",
        help="show every open partition's progress, refreshed until none is open (or Ctrl-C)",
    )
    status.add_argument(
        "--every", type=float, default=5.0, metavar="SECONDS", help="--watch's refresh (5)"
    )
    status.set_defaults(handler=_status)

    costs = sub.add_parser(
        "costs", help="what was spent, estimated, and saved by batching, caching and reuse"
    )
    costs.add_argument("names", nargs="*", metavar="NAME", help="default: every pipeline")
    costs.add_argument("--since", type=_date, help="only days from this one, YYYY-MM-DD")
    costs.add_argument("--by", choices=["day", "pipeline", "model"], default="day")
    costs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    costs.set_defaults(handler=_costs)

    cancel = sub.add_parser("cancel", help="cancel a partition's open batches")
    cancel.add_argument("names", nargs=1, metavar="NAME")
    cancel.add_argument("--date", required=True, type=_date, help="the run date, YYYY-MM-DD")
    cancel.set_defaults(handler=_cancel, all=False)

    validate = sub.add_parser(
        "validate", help="check pipeline files against the warehouse; sends nothing"
    )
    validate.add_argument("names", nargs="*", metavar="FILE|NAME", help="default: every file")

    new = sub.add_parser("new", help="write a starter pipeline file from a table's columns")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--table", required=True, help="the DuckDB table to enrich")
    new.set_defaults(handler=_new)
    validate.set_defaults(handler=_validate)

    from batchpipe.emulator.__main__ import add_arguments as emulator_arguments

    emulator = sub.add_parser("emulator", help="serve the local Anthropic API emulator")
    emulator_arguments(emulator)
    emulator.set_defaults(handler=_emulator)

    demo = sub.add_parser("demo-data", help="create the demo source tables in BATCHPIPE_DB")
    demo.add_argument("--sql", type=Path, default=None, help="default: pipelines/demo_data.sql")
    demo.set_defaults(handler=_demo_data)

    dev = sub.add_parser("dev", help="start `dagster dev` on loopback, from any folder")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=_dev)

    house = sub.add_parser(
        "warehouse", help="create a DuckLake catalog (init), or tidy its files (maintain)"
    )
    house_sub = house.add_subparsers(required=True, metavar="ACTION")
    init = house_sub.add_parser(
        "init", help="create BATCHPIPE_DB's catalog (a DuckLake) and batchpipe's tables"
    )
    init.set_defaults(handler=_warehouse_init)
    maintain = house_sub.add_parser(
        "maintain", help="expire old DuckLake snapshots, merge small files, delete unused ones"
    )
    maintain.add_argument(
        "--keep-days", type=int, default=7, help="snapshots and unused files kept (default 7)"
    )
    maintain.set_defaults(handler=_warehouse_maintain)

    schema = sub.add_parser("schema", help="print the JSON Schema of a pipeline file")
    schema.set_defaults(handler=_schema)
    return parser


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="pipeline name(s)")
    parser.add_argument("--all", action="store_true", help="every pipeline in BATCHPIPE_PIPELINES")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-03") from None


def _select(args: argparse.Namespace):
    from batchpipe.loader import load_pipelines

    files = load_pipelines()
    if args.all == bool(args.names):
        raise BatchpipeError("name one or more pipelines, or pass --all")
    if args.all:
        return files
    by_name = {pf.pipeline.name: pf for pf in files}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        raise BatchpipeError(
            f"no pipeline named {', '.join(unknown)} (pipelines: {', '.join(sorted(by_name))})"
        )
    return [by_name[n] for n in args.names]


def _run(args: argparse.Namespace) -> int:
    from batchpipe.api import ensure_emulator, using_emulator
    from batchpipe.failpoints import UnknownKillPoint, check_kill_at
    from batchpipe.progress import reporting
    from batchpipe.runs import check_date, run_partition

    try:
        check_kill_at()  # a misspelt BATCHPIPE_KILL_AT fails here, not silently never
    except UnknownKillPoint as err:
        raise BatchpipeError(str(err)) from None
    files = _select(args)
    for pf in files:
        check_date(pf, args.date)  # before starting anything
    if using_emulator():
        ensure_emulator()
    failed = 0
    # While a partition waits, its progress shows at every poll: a live table on a
    # terminal, plain lines otherwise. Each display ends with its wait, before the lines
    # below print.
    with reporting(sys.stdout):
        for pf in files:
            print(f"== {pf.pipeline.name} {args.date}", flush=True)
            try:
                for line in run_partition(pf, args.date):
                    print(f"   {line}")
            except BatchpipeError as err:
                failed += 1
                print(f"error: {scrub(err.message)}", file=sys.stderr)
    return 1 if failed else 0


def _retry(args: argparse.Namespace) -> int:
    """A run of one partition, once requests of it wait for credit: the run sends what
    is pending, and after a credit stop that is those requests (and any retryable ones
    the stop kept from their follow-up round); nothing answered is sent again."""
    from batchpipe import state

    (pf,) = _select(args)
    name, date = pf.pipeline.name, args.date
    with state.connect(read_only=True) as con:
        count, _ = state.pending_unbilled(con, name, date, pf.pipeline.request.max_attempts)
    if not count:
        print(f"nothing to retry: no request of {name} {date} is waiting for credit")
        return 0
    print(f"{count} request(s) of {name} {date} came back for lack of credit: sending them again")
    return _run(args)


def _show(args: argparse.Namespace) -> int:
    from batchpipe.report import show_partition

    for pf in _select(args):
        show_partition(pf, args.date, args.limit)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from batchpipe.plan import forecast

    (pf,) = _select(args)
    print(f"plan for {pf.pipeline.name} {args.date} (a dry run)")
    shown = forecast(pf, args.date, _reachable_api())
    for note in shown.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in shown.lines():
        print(f"   {scrub(line)}")  # a count_tokens failure is quoted in it
    return 0


def _costs(args: argparse.Namespace) -> int:
    from batchpipe.spending import render, spending

    print(render(spending(args.names or None, args.since, args.by), args.by, args.format))
    return 0


def _reachable_api():
    """A client for an API that is already there; never starts an emulator to look."""
    import anthropic

    from batchpipe.api import client, running_emulator, using_emulator

    if not using_emulator() or os.environ.get("ANTHROPIC_BASE_URL"):
        return client()
    if url := running_emulator():
        return anthropic.Anthropic(api_key="batchpipe-emulator", base_url=url)
    return None


def _status(args: argparse.Namespace) -> int:
    import anthropic

    from batchpipe.api import client, running_emulator, using_emulator
    from batchpipe.report import batch_status_lines

    api = None  # never start an emulator just to look
    if not using_emulator() or os.environ.get("ANTHROPIC_BASE_URL"):
        api = client()
    elif url := running_emulator():
        api = anthropic.Anthropic(api_key="batchpipe-emulator", base_url=url)
    if args.watch:
        return _watch(args, api)
    for line in batch_status_lines(args.names or None, api):
        print(line)
    return 0


def _watch(args: argparse.Namespace, api) -> int:
    """`status --watch`: Ctrl-C is how a person stops watching, not an interruption."""
    from batchpipe.progress import display
    from batchpipe.watch import watch

    if args.every <= 0:
        raise BatchpipeError(f"--every must be more than 0 seconds, not {args.every:g}")
    try:
        with display(sys.stdout) as shown:
            anything = watch(args.names or None, api, shown, args.every)
    except KeyboardInterrupt:
        return 0
    print("every watched partition has ended" if anything else "no open partitions")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from batchpipe import steps
    from batchpipe.api import client, reaching

    (pf,) = _select(args)
    api = client()
    with reaching(api):
        steps.cancel(pf, args.date, api, print)
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Every problem of every file at once: one broken file does not hide another's."""
    from batchpipe import state
    from batchpipe.loader import folder_clashes, load_file, pipelines_dir
    from batchpipe.resolve import resolve, undated_rows_note

    paths = [Path(n) for n in args.names if n.endswith((".yaml", ".yml"))]
    names = {n for n in args.names if not n.endswith((".yaml", ".yml"))}
    if names or not paths:
        paths += sorted(pipelines_dir().glob("*.y*ml"))
    problems: list[str] = []
    files = []
    for path in dict.fromkeys(paths):
        try:
            pf = load_file(path)
        except ConfigError as err:
            problems.extend(err.problems)
        except OSError as err:
            problems.append(f"{path}: {err.strerror}")
        else:
            if not names or pf.pipeline.name in names:
                files.append(pf)
    # What `run` would refuse about the folder: another file with the same name or table.
    clashed = folder_clashes(files)
    problems.extend(message for _, message in clashed)
    with state.connect(read_only=True) as con:
        for pf in files:
            try:
                resolved = resolve(pf, con)
                if not any(other is pf for other, _ in clashed):
                    print(f"ok  {pf.pipeline.name} ({pf.path})")
                # Not an error: the file is valid, but some rows will never be sent.
                if note := undated_rows_note(con, resolved, pf.pipeline.partitions.start):
                    print(f"note: {note}", file=sys.stderr)
            except ConfigError as err:
                problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return 0


def _new(args: argparse.Namespace) -> int:
    from batchpipe.loader import pipelines_dir
    from batchpipe.starter import write_starter

    path = write_starter(args.name, args.table, pipelines_dir())
    print(f"wrote {path}; edit its prompt, then: batchpipe validate {path}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from batchpipe.emulator.__main__ import run

    run(args)
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from batchpipe import state, warehouse
    from batchpipe.loader import pipelines_dir

    path = args.sql or pipelines_dir() / "demo_data.sql"
    if not path.exists():
        raise BatchpipeError(f"{path}: no such file")
    with state.connect() as con:
        con.execute(path.read_text(encoding="utf-8"))
        tables = warehouse.table_names(con)
    print(f"demo tables ready in {warehouse.label()}: {', '.join(tables)}")
    return 0


def _warehouse_init(args: argparse.Namespace) -> int:
    from batchpipe import lake, state, warehouse

    if warehouse.is_lake():
        catalog = lake.init(warehouse.database(), warehouse.duckdb_settings())
        made = "created" if catalog.created else "found"
        print(f"DuckLake catalog {made} at {warehouse.label()}; data files in {catalog.data_path}")
    with warehouse.connect() as con:
        tables = "created or brought up to date" if state.create(con) else "already current"
    print(f"batchpipe's state tables in {warehouse.label()}: {tables}")
    return 0


def _warehouse_maintain(args: argparse.Namespace) -> int:
    from batchpipe import lake, state, warehouse

    if not warehouse.is_lake():
        print(f"{warehouse.label()} is a DuckDB file: it needs no upkeep (DuckDB's own CHECKPOINT)")
        return 0
    with state.connect() as con:
        done = lake.maintain(con, args.keep_days)
    print(
        f"expired {done.snapshots_expired} snapshot(s) older than {args.keep_days} day(s) "
        f"({done.snapshots_left} kept), merged {done.files_merged} small file(s), deleted "
        f"{done.files_deleted} file(s) no snapshot needs"
    )
    return 0


def _dev(args: argparse.Namespace) -> int:
    """`dagster dev` from any folder: nothing it loads depends on where it starts."""
    from batchpipe.api import ensure_emulator, using_emulator

    env = dev_environment(dict(os.environ), Path.cwd())
    if using_emulator():
        env["ANTHROPIC_BASE_URL"] = ensure_emulator()
    from batchpipe.runs import prepare_dagster_home

    home = Path(env["DAGSTER_HOME"])
    prepare_dagster_home(home)
    workspace = write_workspace(home)
    command = [_dagster(), "dev", "-h", "127.0.0.1", "-p", str(args.port), "-w", str(workspace)]
    print(f"starting {' '.join(command[1:])} (DAGSTER_HOME={home})", flush=True)
    # Started in the background by a script (`batchpipe dev &`), this process ignores
    # SIGINT, and so would the webserver and daemon: `dagster dev` stops them with
    # SIGINT on a SIGTERM, and would then wait for them forever.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execve(command[0], command, env)
    return 0


# Where each setting points when unset, relative to the folder `batchpipe dev` runs in.
DEV_DEFAULTS = {
    "BATCHPIPE_PIPELINES": "pipelines",
    "BATCHPIPE_DB": "batchpipe.duckdb",
    "DAGSTER_HOME": ".dagster",
}


def dev_environment(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """`env` with every path setting absolute, resolved against `cwd`.

    The webserver, the daemon and the code server they start are other processes;
    an absolute path is the only kind sure to name the same files in each of them.
    A database that is not a file path (`:memory:`, `md:...`) is passed as it is.
    """
    resolved = dict(env)
    for name, default in DEV_DEFAULTS.items():
        value = env.get(name, default)
        if name == "BATCHPIPE_DB" and (":" in value or not value):  # as warehouse reads it
            continue
        resolved[name] = str((cwd / (value or default)).resolve())
    if state := env.get("BATCHPIPE_STATE"):
        resolved["BATCHPIPE_STATE"] = str((cwd / state).resolve())
    return resolved


def write_workspace(home: Path) -> Path:
    """The workspace file `dagster dev` loads, in DAGSTER_HOME rather than the current
    folder. It names the location `batchpipe`, as the repo's workspace.yaml does:
    renaming a location resets sensor cursors and schedule state. The code server runs
    this Python, whichever `dagster` is first on PATH."""
    path = home / "workspace.yaml"
    path.write_text(
        "# Written by `batchpipe dev` on every start; edits here are lost.\n"
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: batchpipe.definitions\n"
        "      location_name: batchpipe\n"
        f"      executable_path: {json.dumps(sys.executable)}\n",
        encoding="utf-8",
    )
    return path


def _dagster() -> str:
    """The `dagster` of this environment, so the webserver imports this batchpipe."""
    beside = Path(sys.executable).with_name("dagster")
    return str(beside) if beside.exists() else shutil.which("dagster") or str(beside)


def _schema(args: argparse.Namespace) -> int:
    from batchpipe.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
