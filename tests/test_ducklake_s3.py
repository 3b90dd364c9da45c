"""A DuckLake whose data files live on an object store: BATCHPIPE_DATA_PATH=s3://bucket/lake/,
the credentials from the standard AWS_* variables, made into a TEMPORARY DuckDB secret.

The store is moto's S3 server on a loopback port (a real S3 API over HTTP, no AWS), the
catalog a fresh database in the run's PostgreSQL; DuckDB's httpfs writes and reads the
Parquet files there. The secret key and session token must never reach output, files
or the catalog; a missing credential is said before anything opens.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from batchpipe import lake, warehouse
from batchpipe.errors import WarehouseError
from scripts import localpg
from tests.support import batchpipe, ledger, query

DAY = "2026-11-03"
KEY_ID = "AKIABATCHPIPETEST01"
# Dummy values, long and distinctive, so a leak anywhere is found by a plain search.
SECRET = "s3cr3t-Batchpipe-Test-Key-7f1c9a0e"
TOKEN = "sess10n-Batchpipe-Test-Token-2b8d4e6f"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@dataclass
class Store:
    client: object  # boto3's S3 client, against the moto server
    bucket: str
    endpoint: str

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the developer's own AWS settings (or a profile) leak into a test."""
    for name in (*AWS_VARIABLES, "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """moto's S3 server on a free loopback port with one empty bucket, and the AWS_*
    variables (dummy keys, a session token) pointing at it, as a deployment sets them."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"  # moto's backends are the process's: unique
    client.create_bucket(Bucket=bucket)
    try:
        yield Store(client, bucket, endpoint)
    finally:
        lake.close_all()  # before the server goes: no instance keeps talking to it
        server.stop()


def _files_holding(root: Path, *needles: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle.encode() in data for needle in needles):
                found.append(path)
    return found


def _catalog_dump(dsn: str) -> str:
    """pg_dump of the test's catalog database: the DuckLake metadata and Dagster's runs and
    event log, all that a deployment keeps in PostgreSQL."""
    options = dict(part.split("=", 1) for part in dsn.split())
    pg_dump = localpg.find_bin("pg_dump")
    assert pg_dump is not None
    where = ["-h", options["host"], "-p", options["port"], "-U", options["user"]]
    done = subprocess.run(
        [str(pg_dump), *where, options["dbname"]], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.slow
def test_a_partition_end_to_end_with_its_data_files_on_s3(
    project: Path,
    lake_dsn: str,
    s3: Store,
    private_emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = private_emulator()
    data_path = f"s3://{s3.bucket}/lake/"
    monkeypatch.setenv("BATCHPIPE_DB", f"ducklake:postgres:{lake_dsn}")
    monkeypatch.setenv("BATCHPIPE_DATA_PATH", data_path)

    init = batchpipe("warehouse", "init")
    assert init.returncode == 0, init.stderr[-3000:]
    assert f"data files in {data_path}" in init.stdout
    demo = batchpipe("demo-data")
    assert demo.returncode == 0, demo.stderr[-3000:]
    ran = batchpipe("run", "product_descriptions", "--date", DAY)
    assert ran.returncode == 0, ran.stderr[-3000:]

    rows = query(
        project,
        "SELECT count(*), count(*) FILTER (result_status = 'succeeded') "
        "FROM product_descriptions WHERE partition_date = ?",
        [DAY],
    )
    assert rows == [(30, 30)]
    assert len(ledger(url)) == 30
    # The rows were read from Parquet on the store: every data file DuckLake lists is there.
    (stored,) = query(
        project, "SELECT value FROM __ducklake_metadata_lake_read.ducklake_metadata "
        "WHERE key = 'data_path'",
    )[0]  # fmt: skip
    assert stored == data_path
    keys = s3.keys("lake/")
    parquet = [key for key in keys if key.endswith(".parquet")]
    assert any("/product_descriptions/" in key for key in parquet), keys
    assert any("/products/" in key for key in parquet), keys
    listed = query(project, "SELECT data_file FROM ducklake_list_files('lake_read', 'products')")
    files = {path for (path,) in listed}
    assert files and files <= {f"s3://{s3.bucket}/{key}" for key in keys}

    for out in (init, demo, ran):
        for secret in (SECRET, TOKEN):
            assert secret not in out.stdout + out.stderr
    assert _files_holding(project, SECRET, TOKEN) == []  # BATCHPIPE_STATE, Dagster's, all
    dump = _catalog_dump(lake_dsn)
    assert "ducklake_metadata" in dump
    assert SECRET not in dump and TOKEN not in dump


def test_an_s3_path_without_credentials_says_which_and_opens_nothing(
    project: Path, no_aws: None, private_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Said before anything is opened: the catalog's server here does not even exist."""
    url = private_emulator()
    monkeypatch.setenv("BATCHPIPE_DB", "ducklake:postgres:dbname=none host=127.0.0.1 port=1")
    monkeypatch.setenv("BATCHPIPE_DATA_PATH", "s3://bucket/lake/")

    for command in (("warehouse", "init"), ("run", "product_descriptions", "--date", DAY)):
        done = batchpipe(*command)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert "BATCHPIPE_DATA_PATH=s3://bucket/lake/ is on an object store" in done.stderr
        assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set" in done.stderr
        assert "cannot open" not in done.stderr  # no attempt at PostgreSQL first
    assert ledger(url) == []

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    one = batchpipe("warehouse", "init")
    assert one.returncode == 1
    assert "and AWS_SECRET_ACCESS_KEY is not set" in one.stderr
    assert "AWS_ACCESS_KEY_ID and" not in one.stderr.split("is not set")[0]


# --- The secret's options, its lifetime and its scrubbing: in process, no server -----------


def test_the_aws_variables_become_the_secrets_options(
    no_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f" {SECRET}\n")  # stripped, as a key file's
    assert lake.object_store(None) is None
    assert lake.object_store("/srv/lake/") is None

    aws = lake.object_store("s3://bucket/lake/")
    assert aws == lake.ObjectStore(scope="s3://bucket/", key_id=KEY_ID, secret=SECRET)
    assert SECRET not in repr(aws)
    assert "ENDPOINT" not in aws.secret_sql() and "USE_SSL true" in aws.secret_sql()

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example.com:9443/")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    minio = lake.object_store("s3://bucket/lake/")
    assert (minio.endpoint, minio.use_ssl, minio.region) == (
        "minio.example.com:9443",
        True,
        "eu-west-1",
    )
    assert minio.session_token == TOKEN
    assert "URL_STYLE 'path'" in minio.secret_sql()

    monkeypatch.setenv("AWS_REGION", "auto")  # before AWS_DEFAULT_REGION, as the SDKs read them
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    local = lake.object_store("s3a://bucket/lake/")
    assert (local.scope, local.endpoint, local.use_ssl, local.region) == (
        "s3a://bucket/", "127.0.0.1:9000", False, "auto",
    )  # fmt: skip

    for bad in ("127.0.0.1:9000", "ftp://host", "http://host/prefix"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", bad)
        with pytest.raises(WarehouseError, match="is not an endpoint such as"):
            lake.object_store("s3://bucket/lake/")


@pytest.mark.parametrize("path", ["r2://bucket/lake/", "gcs://bucket/lake/", "gs://b/l/"])
def test_r2_and_gcs_urls_are_refused_with_the_way_to_reach_them(no_aws: None, path: str) -> None:
    """httpfs looks up r2:// and gcs:// with secrets of other types, not the S3 one."""
    with pytest.raises(WarehouseError, match=r"Write it as s3://bucket/prefix/ and set "):
        lake.object_store(path)


def test_the_secret_is_temporary_and_shown_redacted(
    tmp_path: Path, no_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where a persistent one would go
    monkeypatch.setenv("BATCHPIPE_EXTENSIONS", str(tmp_path / "extensions"))
    monkeypatch.setenv("BATCHPIPE_DATA_PATH", "s3://bucket/lake/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)

    con = lake._instance(warehouse.duckdb_settings())
    try:
        secrets = con.execute(
            "SELECT name, type, persistent, storage, scope, secret_string FROM duckdb_secrets()"
        ).fetchall()
        found = con.execute("SELECT name FROM which_secret('s3://bucket/lake/x', 's3')").fetchone()
        elsewhere = con.execute("FROM which_secret('s3://other/x', 's3')").fetchall()
    finally:
        con.close()
    ((name, kind, persistent, storage, scope, text),) = secrets
    assert (name, kind, persistent, storage, scope) == (
        lake.SECRET_NAME, "s3", False, "memory", ["s3://bucket/"],
    )  # fmt: skip
    assert found == (lake.SECRET_NAME,)
    assert elsewhere == []  # the credentials serve the data path's bucket only
    assert SECRET not in text and TOKEN not in text
    assert not (tmp_path / "home" / ".duckdb").exists()


def test_a_refused_secret_is_reported_without_the_key(
    tmp_path: Path, no_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's errors quote what they were given (here a cast of the secret itself, as
    its parser quotes a whole statement): the message must not."""
    monkeypatch.setenv("BATCHPIPE_EXTENSIONS", str(tmp_path / "extensions"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    store = lake.ObjectStore(scope="s3://bucket/", key_id=KEY_ID, secret=SECRET)
    broken = f"CREATE TEMPORARY SECRET x (TYPE s3, USE_SSL '{SECRET} {TOKEN}')"
    monkeypatch.setattr(lake.ObjectStore, "secret_sql", lambda self: broken)
    extensions = str(lake.lay_out_extensions())
    with (
        duckdb.connect(config={"extension_directory": extensions}) as con,
        pytest.raises(WarehouseError) as refused,
    ):
        lake._reach_object_store(con, store)
    message = str(refused.value)
    assert message.startswith("cannot set up the credentials for s3://bucket/: ")
    assert SECRET not in message and TOKEN not in message
    assert "'[AWS_SECRET_ACCESS_KEY] [AWS_SESSION_TOKEN]' to BOOL" in message
