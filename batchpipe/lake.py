"""A DuckLake warehouse: its catalog in PostgreSQL, its data in Parquet files.

`BATCHPIPE_DB=ducklake:postgres:dbname=... host=... port=... user=...` and
`BATCHPIPE_DATA_PATH` (a folder, or an object-store URL) are the whole setting. The
extensions it needs come from the locked wheels (duckdb-extension-ducklake, -postgres,
-httpfs), laid out in batchpipe's own extension directory: nothing is downloaded and
nothing is read from ~/.duckdb. Each process attaches a catalog once, to one in-memory
DuckDB instance, and every connection is a cursor of it (warehouse.connect).

A data path on an object store (s3://bucket/prefix/) is reached through httpfs with a
TEMPORARY secret made from the standard AWS_* variables: it lives in that in-memory
instance only, so it is never written to ~/.duckdb, the catalog or a file, and any DuckDB
text that could quote it is scrubbed (errors.scrub) before it is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from batchpipe.errors import WarehouseError, scrub
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

# The schemes a TYPE s3 secret covers (DuckDB's own scope for it): one secret, the AWS_*
# variables. r2:// and gcs:// look up secrets of other types (R2's needs an ACCOUNT_ID, GCS
# its own HMAC keys), so they are refused with the way to reach those stores as s3://.
S3_SCHEMES = ("s3://", "s3a://", "s3n://")
OTHER_STORES = ("r2://", "gcs://", "gs://")
SECRET_NAME = "batchpipe_data_path"
KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
# AWS's SDKs read the service's own variable before the general one.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

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
class ObjectStore:
    """How DuckDB reaches an s3:// data path: the options of its S3 secret."""

    scope: str  # s3://bucket/: the secret serves the data path's bucket, nothing else
    key_id: str
    secret: str = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    region: str | None = None
    endpoint: str | None = None  # host[:port] of an S3-compatible store
    use_ssl: bool = True

    def secret_sql(self) -> str:
        """CREATE TEMPORARY SECRET, said outright: in-memory only, whatever DuckDB's default
        for a plain CREATE SECRET is (today temporary too in an in-memory instance)."""
        values = {
            "SCOPE": self.scope,
            "KEY_ID": self.key_id,
            "SECRET": self.secret,
            "SESSION_TOKEN": self.session_token,
            "REGION": self.region,
            "ENDPOINT": self.endpoint,
            "URL_STYLE": "path" if self.endpoint else None,  # MinIO, R2: no bucket host names
        }
        options = ["TYPE s3", "PROVIDER config"]
        options += [f"{key} {sql_string(value)}" for key, value in values.items() if value]
        options.append(f"USE_SSL {'true' if self.use_ssl else 'false'}")
        return f"CREATE OR REPLACE TEMPORARY SECRET {SECRET_NAME} ({', '.join(options)})"


def object_store(path: str | None) -> ObjectStore | None:
    """The S3 secret an object-store data path needs, from the standard AWS variables
    (None for a folder). Checked before anything opens: a missing key fails here, naming
    the variables, instead of as an HTTP 403 from the store halfway through a run."""
    if path is None or "://" not in path:
        return None
    lowered = path.lower()
    if lowered.startswith(OTHER_STORES):
        raise WarehouseError(
            f"BATCHPIPE_DATA_PATH={path} is not supported: batchpipe reaches an object store "
            "through its S3 API only. Write it as s3://bucket/prefix/ and set "
            "AWS_ENDPOINT_URL to the store's S3 endpoint (R2: "
            "https://ACCOUNT_ID.r2.cloudflarestorage.com, GCS: https://storage.googleapis.com "
            "with HMAC keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if not lowered.startswith(S3_SCHEMES):
        return None  # another URL: DuckDB says what it makes of it
    env = {name: os.environ.get(name, "").strip() for name in (*KEY_VARIABLES,
           "AWS_SESSION_TOKEN", *REGION_VARIABLES, *ENDPOINT_VARIABLES)}  # fmt: skip
    missing = [name for name in KEY_VARIABLES if not env[name]]
    if missing:
        raise WarehouseError(
            f"BATCHPIPE_DATA_PATH={path} is on an object store, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Its credentials come from the "
            "standard AWS variables: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN for temporary credentials, AWS_REGION (or AWS_DEFAULT_REGION), "
            "and AWS_ENDPOINT_URL for an S3-compatible store such as MinIO or R2; "
            "nothing was opened"
        )
    endpoint, use_ssl = None, True
    url = next((env[name] for name in ENDPOINT_VARIABLES if env[name]), None)
    if url is not None:
        endpoint, use_ssl = _endpoint(url)
    scheme, rest = path.split("://", 1)
    return ObjectStore(
        scope=f"{scheme}://{rest.split('/', 1)[0]}/",
        key_id=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        session_token=env["AWS_SESSION_TOKEN"] or None,
        region=next((env[name] for name in REGION_VARIABLES if env[name]), None),
        endpoint=endpoint,
        use_ssl=use_ssl,
    )


def _endpoint(url: str) -> tuple[str, bool]:
    """AWS_ENDPOINT_URL (http://127.0.0.1:9000) as DuckDB's ENDPOINT takes it: host:port,
    with USE_SSL from the scheme; DuckDB would read a scheme or a path as part of the host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise WarehouseError(
            f"AWS_ENDPOINT_URL={url!r} is not an endpoint such as http://127.0.0.1:9000 or "
            "https://s3.example.com (a scheme, a host, an optional port, no path)"
        )
    return parts.netloc.rsplit("@", 1)[-1], parts.scheme == "https"


def _reach_object_store(con: duckdb.DuckDBPyConnection, store: ObjectStore) -> None:
    """Load httpfs (from the laid-out wheel, as the others) and make the store's secret."""
    con.execute("LOAD httpfs")
    try:
        con.execute(store.secret_sql())
    except duckdb.Error as err:
        # DuckDB's parser quotes the statement, the secret inside it: only scrubbed text.
        text = scrub(str(err).strip().splitlines()[0])
        raise WarehouseError(f"cannot set up the credentials for {store.scope}: {text}") from None


@dataclass(frozen=True)
class Catalog:
    """What `attach` found or made."""

    created: bool
    data_path: str


def _instance(settings: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with the catalog's extensions loaded, and the object store's
    secret when the data path is on one (its credentials checked before anything else)."""
    store = object_store(data_path())
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
    if store is not None:
        try:
            _reach_object_store(con, store)
        except BaseException:
            con.close()
            raise
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
    text = scrub(redact(str(err).strip().splitlines()[0]))
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
    so a crash never leaves a partition locked. Yields False when the wait ran out.
    A run takes it before it opens the warehouse, so an object store's missing
    credentials are said here first, before PostgreSQL is reached."""
    object_store(data_path())
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
