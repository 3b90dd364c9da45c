"""`batchpipe dev` from any folder: the settings and the workspace file it hands Dagster.

Cheap checks of what `dev` prepares before it execs `dagster dev`; test_dagster_dev.py
starts the real thing from a project folder that is not the repo."""

from __future__ import annotations

from pathlib import Path

import yaml

from batchpipe.cli import dev_environment, write_workspace

REPO = Path(__file__).resolve().parent.parent


def test_unset_settings_point_into_the_folder_dev_ran_in(tmp_path: Path) -> None:
    env = dev_environment({"PATH": "/bin"}, tmp_path)
    assert env["BATCHPIPE_PIPELINES"] == str(tmp_path / "pipelines")
    assert env["BATCHPIPE_DB"] == str(tmp_path / "batchpipe.duckdb")
    assert env["DAGSTER_HOME"] == str(tmp_path / ".dagster")
    assert env["PATH"] == "/bin" and "BATCHPIPE_STATE" not in env  # beside the database


def test_relative_settings_become_absolute_and_absolute_ones_stay(tmp_path: Path) -> None:
    given = {
        "BATCHPIPE_PIPELINES": "conf/pipes",
        "BATCHPIPE_DB": "/data/w.duckdb",
        "DAGSTER_HOME": "home",
        "BATCHPIPE_STATE": "state",
    }
    env = dev_environment(given, tmp_path)
    assert env["BATCHPIPE_PIPELINES"] == str(tmp_path / "conf" / "pipes")
    assert env["BATCHPIPE_DB"] == "/data/w.duckdb"
    assert env["DAGSTER_HOME"] == str(tmp_path / "home")
    assert env["BATCHPIPE_STATE"] == str(tmp_path / "state")


def test_a_database_that_is_not_a_file_is_passed_as_it_is(tmp_path: Path) -> None:
    for db in (":memory:", "md:warehouse", ""):
        assert dev_environment({"BATCHPIPE_DB": db}, tmp_path)["BATCHPIPE_DB"] == db


def test_the_workspace_loads_the_location_the_repo_names(tmp_path: Path) -> None:
    """The same location name as the repo's workspace.yaml: a new name would reset the
    sensors' cursors and the schedules' state in an existing DAGSTER_HOME."""
    path = write_workspace(tmp_path)
    assert path.parent == tmp_path
    written = yaml.safe_load(path.read_text())["load_from"][0]["python_module"]
    shipped = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]
    assert {k: written[k] for k in ("module_name", "location_name")} == shipped["python_module"]
    assert Path(written["executable_path"]).exists()
