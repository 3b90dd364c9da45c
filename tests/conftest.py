"""Shared fixtures: a real emulator process, and a fresh warehouse per test.

Nothing here mocks batchpipe: the SDK talks HTTP to the emulator, DuckDB writes
real files under tmp_path, and Dagster runs the real assets.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example pipelines and an empty warehouse, wired through the environment."""
    pipelines = tmp_path / "pipelines"
    shutil.copytree(REPO / "pipelines", pipelines)
    monkeypatch.setenv("BATCHPIPE_DB", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("BATCHPIPE_PIPELINES", str(pipelines))
    monkeypatch.setenv("BATCHPIPE_STATE", str(tmp_path / ".batchpipe"))
    monkeypatch.setenv("BATCHPIPE_LOCK_WAIT", "5")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return tmp_path


@pytest.fixture
def demo_db(project: Path) -> Path:
    """The project with the demo tables loaded."""
    import duckdb

    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute((project / "pipelines" / "demo_data.sql").read_text())
    con.close()
    return project


@pytest.fixture
def webserver(demo_db: Path, emulator_url: str) -> Iterator[str]:
    """`batchpipe dev` (webserver and daemon) against the demo project: its URL.
    Shared by the GraphQL tests and the browser test, which drive the same server."""
    with dagster_dev(demo_db, emulator_url) as url:
        yield url
