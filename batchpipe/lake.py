"""A DuckLake warehouse: its catalog in PostgreSQL, its data in Parquet files.

`BATCHPIPE_DB=ducklake:postgres:dbname=... host=... port=... user=...` and
`BATCHPIPE_DATA_PATH` (a folder, or an object-store URL) are the whole setting. The
extensions it needs come from the locked wheels (duckdb-extension-ducklake, -postgres,
-httpfs), laid out in batchpipe's own extension directory: nothing is downloaded and
nothing is read from ~/.duckdb. Each process attaches a catalog once, to one in-memory
DuckDB instance, and every connection is a cursor of it (warehouse.connect).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from batchpipe.errors import WarehouseError
from batchpipe.sqlcheck import sql_string

PREFIX = "ducklake:"
ALIAS = "lake"  # what `current_database()` says on a DuckLake
READ_ONLY_ALIAS = "lake_read"
# The wheels' packages, and the name DuckDB looks for: the postgres extension's entry point
# is postgres_scanner's, so its file must carry that name.
EXTENSIONS = {
    "duckdb_extension_ducklake": "ducklake",
    "duckdb_extension_postgres": "postgres_scanner",
    "duckdb_extension_httpfs": "httpfs",
}

_attached: dict[tuple[str, str | None], duckdb.DuckDBPyConnection] = {}
_lock = threading.Lock()


def is_lake(db: str) -> bool:
    return db.startswith(PREFIX)


def redact(db: str) -> str:
    """A DSN as a message or a log may show it: a password=... is never printed."""
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", db, flags=re.IGNORECASE)


def alias(read_only: bool) -> str:
    return READ_ONLY_ALIAS if read_only else ALIAS


def data_path() -> str | None:
    """Where the catalog's Parquet files go: a folder (made absolute, ending in /) or a URL."""
    path = os.environ.get("BATCHPIPE_DATA_PATH")
    if not path:
        return None
    if "://" not in path:
        path = str(Path(path).expanduser().resolve())
    return path if path.endswith("/") else path + "/"


def extension_directory() -> Path:
    """batchpipe's own DuckDB extension directory, `v1.5.5/linux_amd64/NAME.duckdb_extension`
    links to the files the installed wheels hold; one per Python environment, so two
    venvs never point each other's links away."""
    configured = os.environ.get("BATCHPIPE_EXTENSIONS")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env = hashlib.md5(str(Path(duckdb.__file__).resolve()).encode()).hexdigest()[:10]
    return cache / "batchpipe" / "duckdb-extensions" / env


def lay_out_extensions() -> Path:
    """Link each wheel's extension file into the extension directory (again when a
    link points elsewhere); the directory, for DuckDB's `extension_directory`."""
    root = extension_directory()
    version = f"v{duckdb.__version__}"
    with duckdb.connect() as con:
        (platform,) = con.execute("PRAGMA platform").fetchone()
    target_dir = root / version / platform
    target_dir.mkdir(parents=True, exist_ok=True)
    for package, name in EXTENSIONS.items():
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise WarehouseError(
                f"the {package.replace('_', '-')}=={duckdb.__version__} wheel is not installed; "
                "a DuckLake warehouse needs it (run `make install`, or pip install "
                "batchpipe's locked requirements)"
            )
        found = list((Path(spec.origin).parent / "extensions" / version).glob("*.duckdb_extension"))
        if not found:
            raise WarehouseError(
                f"{package} holds no extension file for DuckDB {version}: install the wheel "
                f"of the same version as duckdb ({duckdb.__version__})"
            )
        link = target_dir / f"{name}.duckdb_extension"
        if link.is_symlink() and os.readlink(link) == str(found[0]):
            continue
        fresh = link.with_suffix(f".tmp{os.getpid()}")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(found[0])
        fresh.replace(link)  # atomic: another process never sees it missing
    return root


@dataclass(frozen=True)
class Catalog:
    """What `attach` found or made."""

    created: bool
    data_path: str


def _instance(settings: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    config = {
        **settings,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": True,
        "extension_directory": str(lay_out_extensions()),
    }
    try:
        con = duckdb.connect(config=config)
    except duckdb.ParserException as err:
        raise ValueError(str(err)) from None
    for name in ("ducklake", "postgres_scanner"):
        con.execute(f"LOAD {name}")
    return con


def _attach_sql(db: str, name: str, *, create: bool, read_only: bool) -> str:
    options = [f"CREATE_IF_NOT_EXISTS {'true' if create else 'false'}"]
    path = data_path()
    if path is not None:
        options.append(f"DATA_PATH {sql_string(path)}")
    if read_only:
        options.append("READ_ONLY")
    return f"ATTACH {sql_string(db)} AS {name} ({', '.join(options)})"


def _attach_error(db: str, err: duckdb.Error) -> WarehouseError:
    text = redact(str(err).strip().splitlines()[0])
    if "creating a new DuckLake is explicitly disabled" in text:
        return WarehouseError(
            f"there is no DuckLake catalog at {redact(db)} yet: run `batchpipe warehouse "
            "init` once (with BATCHPIPE_DATA_PATH set to where its data files go) to create it"
        )
    return WarehouseError(f"cannot open the DuckLake catalog {redact(db)}: {text}")


def attached(db: str, settings: dict[str, Any], *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """The process's DuckDB instance with the catalog attached (read-only connections get
    a READ_ONLY attachment of their own, so a dry run cannot write by mistake)."""
    key = (db, os.environ.get("BATCHPIPE_DATA_PATH"))
    with _lock:
        root = _attached.get(key)
        if root is None:
            root = _attached[key] = _instance(settings)
        attached_names = {
            r[0] for r in root.execute("SELECT database_name FROM duckdb_databases()").fetchall()
        }
        name = alias(read_only)
        if name not in attached_names:
            try:
                root.execute(_attach_sql(db, name, create=False, read_only=read_only))
            except duckdb.Error as err:
                raise _attach_error(db, err) from None
    return root


def close_all() -> None:
    """Close every attached catalog of this process (its PostgreSQL connections too): a
    test's catalog, or one a long-lived process no longer needs."""
    with _lock:
        for con in _attached.values():
            with contextlib.suppress(duckdb.Error):
                con.close()
        _attached.clear()


def init(db: str, settings: dict[str, Any]) -> Catalog:
    """Create the catalog (ATTACH with creation allowed), or find it there already."""
    path = data_path()
    with _lock, contextlib.closing(_instance(settings)) as con:
        try:
            con.execute(_attach_sql(db, "probe", create=False, read_only=True))
            existed = True
            con.execute("DETACH probe")
        except duckdb.Error as err:
            if "explicitly disabled" not in str(err):
                raise _attach_error(db, err) from None
            existed = False
        if not existed and path is None:
            raise WarehouseError(
                f"BATCHPIPE_DATA_PATH is not set: the new DuckLake catalog at {redact(db)} "
                "needs a folder (or an object-store URL) for its data files; nothing was made"
            )
        try:
            con.execute(_attach_sql(db, "made", create=True, read_only=False))
            (stored,) = con.execute(
                "SELECT value FROM __ducklake_metadata_made.ducklake_metadata "
                "WHERE key = 'data_path'"
            ).fetchone()
        except duckdb.Error as err:
            raise _attach_error(db, err) from None
    return Catalog(created=not existed, data_path=str(stored))


def catalog_dsn(db: str) -> str | None:
    """The PostgreSQL connection string of a `ducklake:postgres:...` catalog, else None
    (a DuckDB- or SQLite-file catalog has one process writing it, as a file does)."""
    rest = db[len(PREFIX) :]
    return rest[len("postgres:") :] if rest.startswith("postgres:") else None


@contextlib.contextmanager
def partition_lock(db: str, key: str, wait_seconds: float) -> Iterator[bool]:
    """Hold PostgreSQL's session advisory lock named `key` on the catalog's server: two
    processes writing one partition's run state take turns, as a file's one writer does.
    The server drops the lock when the holder's connection ends, a killed process's too,
    so a crash never leaves a partition locked. Yields False when the wait ran out."""
    dsn = catalog_dsn(db)
    if dsn is None:
        yield True
        return
    import psycopg2  # through dagster-postgres; only a PostgreSQL catalog needs it

    try:
        pg = psycopg2.connect(dsn, application_name="batchpipe partition lock")
    except psycopg2.Error as err:
        raise WarehouseError(
            f"cannot reach the DuckLake catalog's PostgreSQL {redact(db)}: "
            f"{redact(str(err).strip().splitlines()[0])}"
        ) from None
    try:
        pg.autocommit = True
        with pg.cursor() as cur:
            cur.execute("SET lock_timeout = %s", [f"{max(int(wait_seconds * 1000), 1)}ms"])
            try:
                cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
            except psycopg2.errors.LockNotAvailable:
                yield False
                return
        yield True
    finally:
        pg.close()  # releases the lock


@dataclass(frozen=True)
class Maintenance:
    """What `maintain` did: snapshots expired, files merged, old files deleted."""

    snapshots_expired: int
    files_merged: int
    files_deleted: int
    snapshots_left: int


def maintain(con: duckdb.DuckDBPyConnection, keep_days: int) -> Maintenance:
    """DuckLake's own upkeep: every commit is a snapshot and many write small Parquet
    files. Expire the snapshots older than `keep_days` (batchpipe reads none of the
    past: time travel is all they are for), merge adjacent small files, and delete the
    files no snapshot needs that were let go more than `keep_days` ago (a reader still
    scanning one would lose it)."""
    older = f"now() - INTERVAL {int(keep_days)} DAY"
    expired = con.execute(
        f"CALL ducklake_expire_snapshots({sql_string(ALIAS)}, older_than => {older})"
    ).fetchall()
    merged = con.execute(
        "SELECT coalesce(sum(files_processed), 0) FROM "
        f"ducklake_merge_adjacent_files({sql_string(ALIAS)})"
    ).fetchone()[0]
    deleted = con.execute(
        f"CALL ducklake_cleanup_old_files({sql_string(ALIAS)}, older_than => {older})"
    ).fetchall()
    (left,) = con.execute(
        f"SELECT count(*) FROM ducklake_snapshots({sql_string(ALIAS)})"
    ).fetchone()
    return Maintenance(len(expired), int(merged), len(deleted), int(left))
