"""Shared fixtures: a real emulator process, a fresh warehouse per test, and a real
PostgreSQL server for DuckLake catalogs (a fresh database per test).

Nothing here mocks batchpipe: the SDK talks HTTP to the emulator, DuckDB writes
real files under tmp_path, and Dagster runs the real assets.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from batchpipe import lake
from scripts import localpg
from tests.support import dagster_dev, start_emulator

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_emulator(tmp_path_factory.mktemp("emulator"))
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def private_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Start an emulator of the test's own (so its ledger holds only this test's charges)
    with the given flags, and point ANTHROPIC_BASE_URL at it; stopped after the test."""
    started = []

    def start(*flags: str, latency: float = 0.2) -> str:
        process, url = start_emulator(
            tmp_path / f"emulator-{len(started)}", latency=latency, extra_args=flags
        )
        started.append(process)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    """Which warehouse `project` makes: "file" unless a module parametrizes it (indirect)
    to run its tests against "ducklake" as well."""
    return getattr(request, "param", "file")


@pytest.fixture
def project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    warehouse_kind: str,
) -> Iterator[Path]:
    """A copy of the example pipelines and an empty warehouse, wired through the environment:
    a DuckDB file, or (warehouse_kind "ducklake") a fresh DuckLake catalog in the run's
    PostgreSQL, created as `batchpipe warehouse init` does."""
    pipelines = tmp_path / "pipelines"
    shutil.copytree(REPO / "pipelines", pipelines)
    monkeypatch.setenv("BATCHPIPE_DB", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("BATCHPIPE_PIPELINES", str(pipelines))
    monkeypatch.setenv("BATCHPIPE_STATE", str(tmp_path / ".batchpipe"))
    monkeypatch.setenv("BATCHPIPE_LOCK_WAIT", "5")
    monkeypatch.delenv("BATCHPIPE_DATA_PATH", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    if warehouse_kind == "ducklake":
        _make_lake(tmp_path, monkeypatch, request.getfixturevalue("lake_dsn"))
    yield tmp_path
    lake.close_all()  # each test's catalog holds PostgreSQL connections until closed


def _make_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    from batchpipe import state, warehouse

    monkeypatch.setenv("BATCHPIPE_DB", f"ducklake:postgres:{dsn}")
    monkeypatch.setenv("BATCHPIPE_DATA_PATH", str(tmp_path / "lake"))
    lake.init(warehouse.database(), warehouse.duckdb_settings())
    with state.connect():
        pass


@pytest.fixture
def demo_db(project: Path) -> Path:
    """The project with the demo tables loaded."""
    import duckdb

    from batchpipe import warehouse

    sql = (project / "pipelines" / "demo_data.sql").read_text()
    if warehouse.is_lake():
        with warehouse.connect() as con:
            con.execute(sql)
        return project
    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute(sql)
    con.close()
    return project


@pytest.fixture
def lake_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lake_dsn: str, demo_db: Path
) -> Path:
    """The demo project on a DuckLake (for tests only of DuckLake): its catalog made, its
    state tables and demo tables in it."""
    _make_lake(tmp_path, monkeypatch, lake_dsn)
    from batchpipe import warehouse

    with warehouse.connect() as con:
        con.execute((demo_db / "pipelines" / "demo_data.sql").read_text())
    return demo_db


@pytest.fixture
def webserver(demo_db: Path, emulator_url: str) -> Iterator[str]:
    """`batchpipe dev` (webserver and daemon) against the demo project: its URL.
    Shared by the GraphQL tests and the browser test, which drive the same server."""
    with dagster_dev(demo_db, emulator_url) as url:
        yield url


# One PostgreSQL server for the whole run, shared by the xdist workers: each worker's basetemp
# is a directory of the controller's, so that directory is where they meet. The first worker
# to need the server starts it under the lock and writes server.json; the others read it.
#
# The server is stopped in the controller's pytest_sessionfinish, not by the workers: it runs
# after every worker is done, whether a worker finished, crashed or was interrupted, so the
# server never outlives the run and is never stopped under a worker still using it. (A
# count of workers, the last one out stopping it, would leak the server when a worker dies.)


def _shared_dir(config: pytest.Config, basetemp: Path) -> Path:
    """Where the workers' server lives: the controller's basetemp (a worker's parent)."""
    return basetemp.parent if hasattr(config, "workerinput") else basetemp


@pytest.fixture(scope="session")
def postgres_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> localpg.Server:
    """The run's PostgreSQL server (scripts/localpg.py); skipped where PostgreSQL is missing."""
    reason = localpg.unavailable()
    if reason:
        pytest.skip(reason)
    shared = _shared_dir(request.config, tmp_path_factory.getbasetemp())
    root = shared / "localpg"
    with FileLock(shared / "localpg.lock"):
        if (root / localpg.SERVER_JSON).exists():
            return localpg.load(root)
        return localpg.start(root)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests (real processes, some waiting minutes on limits) first: xdist hands
    tests out in this order, so the last minutes of a run are the quick ones spread over
    every worker, not one long test holding the run open while the others sit idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True)  # before any plugin's cleanup of the basetemp
def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # a worker: the controller stops the server once every worker is done
    # The same basetemp xdist hands each worker a directory of (xdist reads it the same way).
    root = session.config._tmp_path_factory.getbasetemp() / "localpg"
    if (root / localpg.SERVER_JSON).exists():
        localpg.stop(root)


@pytest.fixture
def lake_dsn(postgres_server: localpg.Server) -> str:
    """A fresh, empty database for this test: the libpq string a DuckLake catalog takes."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    localpg.create_database(postgres_server, name)
    return postgres_server.dsn(name)
