"""The Dagster definitions built from a folder of pipelines: keys, partitions, lineage, what a
broken file does to the others, schedules, code versions and merging into a host project."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from batchpipe.dagster import BatchpipeTranslator, build_definitions
from batchpipe.defs import specs
from batchpipe.errors import ConfigError
from batchpipe.loader import PipelineFile, load_file, load_pipelines
from batchpipe.versions import code_version

REPO = Path(__file__).resolve().parent.parent
PRODUCTS = (REPO / "pipelines" / "product_descriptions.yaml").read_text()


def _folder(tmp_path: Path, **files: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_each_pipeline_becomes_four_partitioned_assets_below_its_source() -> None:
    defs = build_definitions(REPO / "pipelines")
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


def test_both_checks_are_partitioned_like_the_enriched_table_and_described(
    tmp_path: Path,
) -> None:
    blocking = PRODUCTS.replace(
        "  column: description", "  column: description\n  block_on_error_rate: true"
    )
    defs = build_definitions(_folder(tmp_path, p=blocking))
    graph = defs.resolve_asset_graph()
    enriched = dg.AssetKey(["product_descriptions", "enriched"])
    checks = {
        key.name: graph.get_check_spec(key) for key in graph.get_check_keys_for_assets([enriched])
    }
    assert set(checks) == {"every_row_final", "error_rate"}
    for spec in checks.values():
        assert spec.partitions_def == graph.get(enriched).partitions_def
        assert spec.description
    assert checks["error_rate"].blocking
    assert not checks["every_row_final"].blocking
    plain = build_definitions(_folder(tmp_path / "plain", p=PRODUCTS)).resolve_asset_graph()
    (error_rate,) = [
        k for k in plain.get_check_keys_for_assets([enriched]) if k.name == "error_rate"
    ]
    assert not plain.get_check_spec(error_rate).blocking


def test_a_broken_file_leaves_the_others_loading_and_shows_where_it_is_broken(
    tmp_path: Path,
) -> None:
    scheduled = PRODUCTS.replace(
        "  start: 2026-11-01", '  start: 2026-11-01\n  schedule: "0 6 * * *"'
    )
    broken = PRODUCTS.replace("product_descriptions", "other").replace(
        "max_tokens: 200", "max_tokens: -1"
    )
    folder = _folder(tmp_path, good=scheduled, typo=broken)

    defs = build_definitions(folder)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "product_descriptions/enriched" in keys
    assert not any(k.startswith("other/") for k in keys)
    assert [s.name for s in repo.sensor_defs] == ["product_descriptions__batches"]
    assert [s.name for s in repo.schedule_defs] == ["product_descriptions__daily"]
    problem = repo.asset_graph.get(dg.AssetKey(["batchpipe_problems", "typo"]))
    assert f"{folder / 'typo.yaml'}:11:3: request.max_tokens: Input should be" in (
        problem.description
    )
    assert not problem.is_materializable
    # `batchpipe validate` (load_pipelines) still refuses the folder
    with pytest.raises(ConfigError, match=r"typo\.yaml:11:3: request\.max_tokens"):
        load_pipelines(folder)


def test_two_files_on_one_output_table_keep_the_first_and_show_the_clash(tmp_path: Path) -> None:
    copy = PRODUCTS.replace("name: product_descriptions", "name: copy")
    folder = _folder(tmp_path, a=PRODUCTS, b=copy)
    graph = build_definitions(folder).resolve_asset_graph()
    assert graph.has(dg.AssetKey(["product_descriptions", "enriched"]))
    assert not graph.has(dg.AssetKey(["copy", "enriched"]))
    clash = graph.get(dg.AssetKey(["batchpipe_problems", "b"])).description
    assert "is also the output table of 'product_descriptions'" in clash


def _schedule(tmp_path: Path, extra: str = "") -> tuple[dg.Definitions, dg.ScheduleDefinition]:
    text = PRODUCTS.replace(
        "  start: 2026-11-01", f'  start: 2026-11-01\n  schedule: "0 6 * * *"{extra}'
    )
    defs = build_definitions(_folder(tmp_path, p=text))
    return defs, defs.resolve_schedule_def("product_descriptions__daily")


def _tick(defs: dg.Definitions, schedule: dg.ScheduleDefinition, when: dt.datetime) -> list:
    context = dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context).run_requests


def test_a_schedule_is_stopped_and_runs_the_day_that_has_just_ended(tmp_path: Path) -> None:
    defs, schedule = _schedule(tmp_path)
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # no surprise spend
    assert schedule.job_name == "product_descriptions__job"
    (request,) = _tick(defs, schedule, dt.datetime(2026, 11, 7, 6, 0, tzinfo=dt.UTC))
    assert request.partition_key == "2026-11-06"
    # the first partition's own day has no day before it to run
    (skip,) = [
        schedule.evaluate_tick(
            dg.build_schedule_context(
                scheduled_execution_time=dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC),
                repository_def=defs.get_repository_def(),
            )
        ).skip_message
    ]
    assert "before the first partition" in skip


def test_a_schedule_runs_when_the_file_enables_it_with_its_offset(tmp_path: Path) -> None:
    defs, schedule = _schedule(tmp_path, "\n  schedule_enabled: true\n  schedule_offset_days: 0")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    (request,) = _tick(defs, schedule, dt.datetime(2026, 11, 7, 6, 0, tzinfo=dt.UTC))
    assert request.partition_key == "2026-11-07"


def test_a_bad_cron_is_a_config_error(tmp_path: Path) -> None:
    text = PRODUCTS.replace("  start: 2026-11-01", '  start: 2026-11-01\n  schedule: "at six"')
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"partitions\.schedule: 'at six' is not a cron"):
        load_pipelines(tmp_path)


def _versions(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / f"v{len(list(tmp_path.glob('v*.yaml')))}.yaml"
    path.write_text(text)
    pf = load_file(path)
    return {step: code_version(pf, step) for step in specs.STEPS}


def test_code_versions_change_only_where_an_edit_changes_the_data(tmp_path: Path) -> None:
    base = _versions(tmp_path, PRODUCTS)
    edits = {
        "description": PRODUCTS.replace("Two-sentence copy", "Copy"),
        "poll_interval": PRODUCTS.replace(
            "  max_tokens: 200", "  max_tokens: 200\n  poll_interval: 60"
        ),
        "budget": PRODUCTS + "budget:\n  max_usd_per_run: 5\n",
        "owners": PRODUCTS + "owners: [team:data]\n",
    }
    for what, text in edits.items():
        assert _versions(tmp_path, text) == base, what
    prompt = _versions(tmp_path, PRODUCTS.replace("2-sentence", "3-sentence"))
    assert prompt["requests"] != base["requests"]
    assert {s: prompt[s] for s in ("batch_status", "results", "enriched")} == {
        s: base[s] for s in ("batch_status", "results", "enriched")
    }  # they follow requests through lineage
    source = _versions(
        tmp_path, PRODUCTS.replace("  key: product_id", "  key: product_id\n  where: price > 0")
    )
    assert source["requests"] != base["requests"]
    output = _versions(tmp_path, PRODUCTS.replace("column: description", "column: blurb"))
    assert output["enriched"] != base["enriched"]
    assert {s: output[s] for s in ("requests", "batch_status", "results")} == {
        s: base[s] for s in ("requests", "batch_status", "results")
    }


def test_owners_tags_and_the_full_table_name_reach_the_assets(tmp_path: Path) -> None:
    text = PRODUCTS + "owners: [team:data-eng, ana@example.com]\ntags: {domain: catalog}\n"
    defs = build_definitions(_folder(tmp_path, p=text), database=str(tmp_path / "shop.duckdb"))
    enriched = defs.resolve_assets_def(dg.AssetKey(["product_descriptions", "enriched"]))
    spec = next(iter(enriched.specs))
    assert set(spec.owners) == {"team:data-eng", "ana@example.com"}
    assert spec.tags["domain"] == "catalog"
    assert spec.metadata["dagster/table_name"] == "shop.main.product_descriptions"


def test_a_bad_owner_is_refused_at_its_line_not_by_dagster(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PRODUCTS + "owners: [bob]\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:19:1: owners: 'bob': an owner is"):
        load_pipelines(tmp_path)


class _Prefixed(BatchpipeTranslator):
    def get_asset_key(self, pf: PipelineFile, step: str) -> dg.AssetKey:
        return dg.AssetKey(["enrich", pf.pipeline.name, step])

    def get_group_name(self, pf: PipelineFile) -> str:
        return "enrichment"

    def get_job_name(self, pf: PipelineFile) -> str:
        return f"enrich_{pf.pipeline.name}"


def test_the_definitions_merge_into_a_project_with_its_own_executor(tmp_path: Path) -> None:
    @dg.asset
    def raw_products() -> None: ...

    host = dg.Definitions(assets=[raw_products], executor=dg.multiprocess_executor)
    ours = build_definitions(_folder(tmp_path, p=PRODUCTS), translator=_Prefixed())
    merged = dg.Definitions.merge(host, ours)
    repo = merged.get_repository_def()
    key = dg.AssetKey(["enrich", "product_descriptions", "enriched"])
    assert repo.asset_graph.get(key).group_name == "enrichment"
    assert repo.asset_graph.has(dg.AssetKey("raw_products"))
    # the job, sensor and checks follow the translator's names
    job = repo.get_job("enrich_product_descriptions")
    assert key in job.asset_layer.selected_asset_keys
    assert [t.job_name for t in repo.get_sensor_def("product_descriptions__batches").targets] == [
        "enrich_product_descriptions"
    ]
    assert {k.asset_key for k in repo.asset_graph.asset_check_keys} == {key}
    assert job.executor_def.name == "multiprocess"  # the host's


def test_two_folders_merge_into_one_project(tmp_path: Path) -> None:
    other = PRODUCTS.replace("product_descriptions", "copy_two")
    first = build_definitions(_folder(tmp_path / "a", p=PRODUCTS), database="a.duckdb")
    second = build_definitions(_folder(tmp_path / "b", p=other), database="b.duckdb")
    graph = dg.Definitions.merge(first, second).resolve_asset_graph()
    assert graph.get(dg.AssetKey(["copy_two", "enriched"])).metadata["dagster/table_name"] == (
        "b.main.copy_two"
    )
    assert graph.has(dg.AssetKey(["product_descriptions", "enriched"]))


def _pool_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.all_logs(run_id)
    return [r.user_message for r in records if "has no limit on this instance" in r.user_message]


@pytest.mark.parametrize("limited", [False, True])
def test_a_run_without_a_limit_on_the_pool_warns_once(demo_db: Path, limited: bool) -> None:
    defs = build_definitions(demo_db / "pipelines")
    job = defs.resolve_job_def("product_descriptions__job")
    settings = {"concurrency": {"pools": {"default_limit": 1}}} if limited else {}
    with dg.instance_for_test(overrides=settings) as instance:
        run = job.execute_in_process(
            partition_key="2026-11-03",
            instance=instance,
            asset_selection=[dg.AssetKey(["product_descriptions", "requests"])],
        )
        assert run.success
        warnings = _pool_warnings(instance, run.run_id)
    if limited:
        assert warnings == []
    else:
        (warning,) = warnings
        assert "dagster instance concurrency set duckdb_writer 1" in warning


@pytest.mark.slow
def test_the_code_location_loads_beside_a_broken_file_and_says_what_is_wrong(
    tmp_path: Path,
) -> None:
    broken = PRODUCTS.replace("product_descriptions", "other").replace(
        "max_tokens: 200", "max_tokens: -1"
    )
    folder = _folder(tmp_path / "pipelines", good=PRODUCTS, typo=broken)
    env = {
        **os.environ,
        "BATCHPIPE_PIPELINES": str(folder),
        "BATCHPIPE_DB": str(tmp_path / "w.duckdb"),
    }
    env.pop("DAGSTER_HOME", None)
    dagster = str(Path(sys.executable).parent / "dagster")
    validated = subprocess.run(
        [dagster, "definitions", "validate", "-m", "batchpipe.definitions"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stderr
    assert f"{folder / 'typo.yaml'}:11:3: request.max_tokens" in validated.stderr
