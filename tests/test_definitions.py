"""The Dagster code location built from pipelines/: keys, partitions, lineage."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import dagster as dg
import pytest

from batchpipe.definitions import build_definitions
from batchpipe.errors import ConfigError
from batchpipe.loader import load_pipelines

REPO = Path(__file__).resolve().parent.parent


def test_each_pipeline_becomes_four_partitioned_assets_below_its_source() -> None:
    defs = build_definitions(load_pipelines(REPO / "pipelines"))
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    for name in ("product_descriptions", "review_replies"):
        steps = [f"{name}/{s}" for s in ("requests", "batch_status", "results", "enriched")]
        assert set(steps) <= keys
        for upstream, downstream in itertools.pairwise(steps):
            parents = graph.get(dg.AssetKey.from_user_string(downstream)).parent_keys
            assert dg.AssetKey.from_user_string(upstream) in parents
        partitions = graph.get(dg.AssetKey([name, "enriched"])).partitions_def
        assert partitions.get_first_partition_key() == "2026-11-01"
    assert (
        dg.AssetKey(["duckdb", "products"])
        in graph.get(dg.AssetKey(["product_descriptions", "requests"])).parent_keys
    )
    assert (
        dg.AssetKey(["review_replies", "source"])
        in graph.get(dg.AssetKey(["review_replies", "requests"])).parent_keys
    )


def test_a_broken_file_fails_the_code_location_with_its_position(tmp_path: Path) -> None:
    text = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    (tmp_path / "p.yaml").write_text(text.replace("max_tokens: 200", "max_tokens: -1"))
    with pytest.raises(ConfigError, match=r"p\.yaml:11:3: request\.max_tokens: Input should be"):
        build_definitions(load_pipelines(tmp_path))


def test_a_schedule_runs_the_day_of_its_tick(tmp_path: Path) -> None:
    text = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    (tmp_path / "p.yaml").write_text(
        text.replace("  start: 2026-11-01", '  start: 2026-11-01\n  schedule: "0 6 * * *"')
    )
    defs = build_definitions(load_pipelines(tmp_path))
    schedule = defs.resolve_schedule_def("product_descriptions__daily")
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    tick = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 7, 6, 0, tzinfo=dt.UTC),
        repository_def=defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(tick).run_requests
    assert request.partition_key == "2026-11-07"
    assert defs.resolve_job_def("product_descriptions__job") is not None


def test_a_bad_cron_is_a_config_error(tmp_path: Path) -> None:
    text = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    (tmp_path / "p.yaml").write_text(
        text.replace("  start: 2026-11-01", '  start: 2026-11-01\n  schedule: "at six"')
    )
    with pytest.raises(ConfigError, match=r"partitions\.schedule: 'at six' is not a cron"):
        load_pipelines(tmp_path)
