"""`BatchpipeComponent` in a Dagster project that is not batchpipe's: a host project in a
temp folder with its own asset and executor, loaded by the Dagster CLI and by `dg`, a
partition materialized through the host's instance, and the Component's attributes on
the assets it builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from batchpipe.component import BatchpipeComponent
from batchpipe.errors import ConfigError
from batchpipe.loader import load_file
from batchpipe.versions import code_version

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STEPS = ("requests", "batch_status", "results", "enriched")
DAY = "2026-11-03"


def make_host(root: Path) -> Path:
    """A Dagster project of its own: package `host` with one asset and the multiprocess
    executor, whose defs folder holds `enrich/defs.yaml` (the Component, reading a copy
    of product_descriptions.yaml that waits for its batches) and names as its database
    `warehouse.duckdb` at the project root (the test fills it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "host"
            version = "0.0.1"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "host"
            """
        )
    )
    package = root / "host"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg


            @dg.asset
            def own_asset() -> int:
                return 1


            defs = dg.Definitions.merge(
                dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
                dg.Definitions(assets=[own_asset], executor=dg.multiprocess_executor),
            )
            """
        )
    )
    enrich = package / "defs" / "enrich"
    (enrich / "pipelines").mkdir(parents=True)
    # The database relative to the defs folder: host/defs/enrich -> the project root.
    (enrich / "defs.yaml").write_text(
        "type: batchpipe.BatchpipeComponent\n"
        "attributes:\n"
        "  pipelines: pipelines\n"
        "  database: ../../../warehouse.duckdb\n"
    )
    text = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    assert "{{ name }}" in text
    (enrich / "pipelines" / "product_descriptions.yaml").write_text(
        text.replace("  max_tokens: 200\n", "  max_tokens: 200\n  wait: true\n", 1)
    )
    return root


def run_all(*commands: tuple[list, dict[str, str]], project: Path) -> list:
    """Commands that do not depend on each other, at once (each starts a Python that
    imports Dagster: seconds saved); their results in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = [pool.submit(run, command, project, **env) for command, env in commands]
        return [future.result() for future in futures]


def run(command: list, project: Path, **env: str) -> subprocess.CompletedProcess:
    """A command as a data engineer runs it in the host project: its own folder, none of
    batchpipe's settings in the environment (the Component's attributes are what count)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATCHPIPE_", "DAGSTER_", "ANTHROPIC_"))
    }
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [str(part) for part in command],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_host_project_validates_lists_and_materializes_a_partition(
    tmp_path: Path, emulator_url: str
) -> None:
    project = make_host(tmp_path / "project")
    module = ("-m", "host.definitions")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    demo, validated, listed, limited = run_all(
        (
            [BIN / "batchpipe", "demo-data", "--sql", REPO / "pipelines" / "demo_data.sql"],
            {"BATCHPIPE_DB": str(project / "warehouse.duckdb")},
        ),
        ([BIN / "dagster", "definitions", "validate", *module], {}),
        ([BIN / "dagster", "asset", "list", *module], {}),
        # What the Component's docstring tells the host to do once per instance.
        (
            [BIN / "dagster", "instance", "concurrency", "set", "duckdb_writer", "1"],
            {"DAGSTER_HOME": str(home)},
        ),
        project=project,
    )
    assert demo.returncode == 0, demo.stderr
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "Validation successful" in validated.stdout + validated.stderr
    assert listed.returncode == 0, listed.stderr[-3000:]
    keys = set(listed.stdout.split())
    assert {"own_asset", *(f"product_descriptions/{s}" for s in STEPS)} <= keys
    assert limited.returncode == 0, limited.stderr

    selection = ("--select", ",".join(f"product_descriptions/{s}" for s in STEPS))
    # The host's multiprocess executor, each step forked from a server that has imported
    # the project once (the same executor, seconds faster than a fresh Python per step).
    forked = {"start_method": {"forkserver": {"preload_modules": ["host.definitions"]}}}
    config = ("--config-json", json.dumps({"execution": {"config": forked}}))
    materialize = (BIN / "dagster", "asset", "materialize", *module, *selection, *config)
    materialized = run(
        [*materialize, "--partition", DAY],
        project,
        DAGSTER_HOME=str(home),
        ANTHROPIC_BASE_URL=emulator_url,
        # Not the database: `database` in defs.yaml is. A step that read this would fail.
        BATCHPIPE_DB=str(tmp_path / "missing" / "elsewhere.duckdb"),
    )
    log = materialized.stdout + materialized.stderr
    assert materialized.returncode == 0, log[-4000:]
    assert "RUN_SUCCESS" in log
    assert "has no limit" not in log  # the pool limit set above is the one the steps use
    for check in ("error_rate", "every_row_final"):
        assert f"Asset check '{check}' on 'product_descriptions/enriched' passed" in log

    # The host's instance records the partition of every step.
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        for step in STEPS:
            key = dg.AssetKey(["product_descriptions", step])
            assert DAY in instance.get_materialized_partitions(key), step
    finally:
        instance.dispose()

    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT result_status, count(*), count(description) FROM product_descriptions "
            "WHERE CAST(partition_date AS VARCHAR) = ? GROUP BY ALL",
            [DAY],
        ).fetchall()
        # The prompt's {{ name }} and {{ category }} reached batchpipe's own renderer
        # (Dagster's template engine never saw them): each request names its product.
        sent = con.execute(
            "SELECT p.name, p.category, r.params->'messages'->0->>'content' "
            "FROM batchpipe_requests r JOIN products p "
            "ON p.product_id = CAST(r.key_values->>'product_id' AS INTEGER) "
            "WHERE r.pipeline = 'product_descriptions'"
        ).fetchall()
    assert rows == [("succeeded", 30, 30)]
    assert len(sent) == 30
    for name, category, prompt in sent:
        assert prompt == f"Write a 2-sentence description for: {name} ({category})"
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_dg_scaffolds_a_starter_beside_an_existing_component_and_lists_both(
    tmp_path: Path,
) -> None:
    project = make_host(tmp_path / "project")
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute((REPO / "pipelines" / "demo_data.sql").read_text())
    scaffolded = run(
        [BIN / "dg", "scaffold", "defs", "batchpipe.BatchpipeComponent", "starter"], project
    )
    assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    target = project / "host" / "defs" / "starter"
    defs_yaml = (target / "defs.yaml").read_text()
    assert defs_yaml.startswith("type: batchpipe.BatchpipeComponent\n")
    assert "  pipelines: pipelines\n" in defs_yaml
    assert "dagster instance concurrency set duckdb_writer 1" in defs_yaml
    starter = target / "pipelines" / "starter.yaml"
    assert "{{ item }}" in starter.read_text()  # written as it is, for batchpipe to fill
    assert (target / "pipelines" / "schema.json").is_file()  # what its $schema line names

    validated, listed = run_all(
        (
            [BIN / "batchpipe", "validate", starter],
            {"BATCHPIPE_DB": str(project / "warehouse.duckdb")},
        ),
        ([BIN / "dg", "list", "defs", "--json"], {}),
        project=project,
    )
    assert validated.returncode == 0, validated.stderr
    assert "ok  starter" in validated.stdout
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    keys = {a["asset_key"] for a in found["assets"]}
    assert {
        "own_asset",
        *(f"product_descriptions/{s}" for s in STEPS),
        *(f"starter/{s}" for s in STEPS),
    } <= keys
    # Two Components, one resource key: they share the resource (merge would refuse two).
    assert [r["name"] for r in found["resources"]] == ["batchpipe"]
    assert {s["name"] for s in found["sensors"]} >= {
        "product_descriptions__batches",
        "starter__batches",
    }


@pytest.mark.slow
def test_importing_batchpipe_outside_a_pipelines_folder_raises_nothing(tmp_path: Path) -> None:
    imported = run(
        [
            sys.executable,
            "-c",
            "import batchpipe, batchpipe.component, batchpipe.dagster\n"
            "from batchpipe import BatchpipeComponent\n"
            "from batchpipe.dagster import build_definitions\n"
            "assert BatchpipeComponent is batchpipe.dagster.BatchpipeComponent\n"
            "import sys\n"
            "assert 'batchpipe.definitions' not in sys.modules  # the code location's own\n"
            "print('imported')",
        ],
        tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "imported"
    assert not imported.stderr.strip()


def _pipelines(folder: Path) -> Path:
    folder.mkdir(parents=True)
    products = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    (folder / "product_descriptions.yaml").write_text(
        products.replace(
            "description: Two-sentence copy for the products added that day",
            "description: Copy for {{ name }}\nowners: [copy@example.com]\ntags: {tier: gold}",
        )
    )
    shutil.copy(REPO / "pipelines" / "review_sentiment.yaml", folder)
    return folder


def test_attributes_name_groups_owners_tags_and_upstream_keys(tmp_path: Path) -> None:
    pipelines = _pipelines(tmp_path / "defs" / "enrich" / "pipelines")
    component = BatchpipeComponent.from_attributes_dict(
        attributes={
            "pipelines": "pipelines",
            "database": "data/warehouse.duckdb",
            "group_prefix": "enrich_",
            "owners": ["team:data"],
            "tags": {"domain": "catalog", "tier": "silver", "level": 2},
            "source_asset_keys": {"products": ["raw", "products"], "Reviews": "raw/reviews"},
        }
    )
    defs_dir = pipelines.parent
    defs = _build(component, defs_dir)
    graph = defs.resolve_asset_graph()
    for name, upstream in (
        ("product_descriptions", dg.AssetKey(["raw", "products"])),
        ("review_sentiment", dg.AssetKey(["raw", "reviews"])),
    ):
        for step in STEPS:
            spec = graph.get(dg.AssetKey([name, step]))
            assert spec.group_name == f"enrich_{name}"
            assert "team:data" in spec.owners
            assert spec.tags["domain"] == "catalog"
            assert spec.tags["level"] == "2"
        requests = graph.get(dg.AssetKey([name, "requests"]))
        assert upstream in requests.parent_keys
        assert dg.AssetKey(["duckdb", name.split("_")[0] + "s"]) not in graph.get_all_asset_keys()
    enriched = graph.get(dg.AssetKey(["product_descriptions", "enriched"]))
    assert enriched.owners == ["team:data", "copy@example.com"]
    assert enriched.tags["tier"] == "gold"  # a file's own tag wins over the Component's
    assert graph.get(dg.AssetKey(["review_sentiment", "enriched"])).tags["tier"] == "silver"

    # The pipeline file never went through Dagster's templates: its {{ }} are intact.
    assert enriched.description.startswith("Copy for {{ name }}\n")
    pf = load_file(pipelines / "product_descriptions.yaml")
    assert "{{ name }}" in pf.pipeline.request.prompt
    requests = graph.get(dg.AssetKey(["product_descriptions", "requests"]))
    assert requests.code_version == code_version(pf, "requests")

    # Paths relative to the defs folder, wherever the process runs.
    assert component.pipelines_path(defs_dir) == pipelines.resolve()
    assert component.database_path(defs_dir) == str((defs_dir / "data/warehouse.duckdb").resolve())
    assert enriched.metadata["dagster/table_name"] == "warehouse.main.product_descriptions"
    assert BatchpipeComponent(database=":memory:").database_path(defs_dir) == ":memory:"
    assert BatchpipeComponent(database="md:lake").database_path(defs_dir) == "md:lake"
    assert BatchpipeComponent().database_path(defs_dir) is None


def _build(component: BatchpipeComponent, defs_dir: Path) -> dg.Definitions:
    from dagster.components.core.component_tree import ComponentTree

    context = ComponentTree.for_test().load_context.for_path(defs_dir)
    assert context.path == defs_dir
    return component.build_defs(context)


def test_a_defs_folder_with_the_component_loads_and_renders_only_its_attributes(
    tmp_path: Path,
) -> None:
    """Loaded as Dagster loads a project (defs.yaml through the Components machinery):
    `{{ }}` in attributes is Dagster's to render; the pipelines' own are left alone."""
    from dagster.components.testing import create_defs_folder_sandbox

    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=BatchpipeComponent,
            defs_path="enrich",
            defs_yaml_contents={
                "type": "batchpipe.component.BatchpipeComponent",
                "attributes": {
                    "pipelines": "pipelines",
                    "group_prefix": "{{ 'enr' + 'ich_' }}",
                    "tags": {"domain": "catalog"},
                },
            },
        )
        assert (defs_path / "pipelines" / "enrich.yaml").is_file()  # the scaffolded starter
        _pipelines(defs_path / "more")
        for path in (defs_path / "more").iterdir():
            shutil.move(path, defs_path / "pipelines")
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
            assert isinstance(component, BatchpipeComponent)
            graph = defs.resolve_asset_graph()
            enriched = graph.get(dg.AssetKey(["product_descriptions", "enriched"]))
            assert enriched.group_name == "enrich_product_descriptions"
            assert enriched.description.startswith("Copy for {{ name }}\n")
            assert graph.get(dg.AssetKey(["enrich", "requests"])).group_name == "enrich_enrich"


def test_the_python_scaffold_loads_too() -> None:
    """`dg scaffold defs batchpipe.BatchpipeComponent NAME --format python`."""
    from dagster.components.testing import create_defs_folder_sandbox

    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=BatchpipeComponent, defs_path="starter", scaffold_format="python"
        )
        assert (defs_path / "component.py").is_file()
        assert (defs_path / "pipelines" / "starter.yaml").is_file()
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
            keys = set(defs.resolve_asset_graph().get_all_asset_keys())
            assert {dg.AssetKey(["starter", step]) for step in STEPS} <= keys


def test_scaffolding_from_a_table_writes_its_columns_and_database(tmp_path: Path) -> None:
    """`dg scaffold defs batchpipe.BatchpipeComponent NAME --table T --database D`: the
    starter `batchpipe new` would write, and D relative to the defs folder."""
    from dagster.components.testing import create_defs_folder_sandbox

    database = tmp_path / "shop.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute((REPO / "pipelines" / "demo_data.sql").read_text())
    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=BatchpipeComponent,
            defs_path="reviews",
            scaffold_params={"table": "reviews", "database": str(database)},
        )
        starter = (defs_path / "pipelines" / "reviews.yaml").read_text()
        assert "  table: reviews\n" in starter and "{{ body }}" in starter
        written = (defs_path / "defs.yaml").read_text()
        assert f"  database: {os.path.relpath(database, defs_path.resolve())}\n" in written
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
            assert component.database_path(defs_path) == str(database.resolve())
            enriched = defs.resolve_asset_graph().get(dg.AssetKey(["reviews", "enriched"]))
            assert enriched.metadata["dagster/table_name"] == "shop.main.reviews"


def test_a_missing_pipelines_folder_names_the_defs_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(BatchpipeComponent(pipelines="nope"), tmp_path)
    assert f"{tmp_path / 'defs.yaml'}: attributes.pipelines: 'nope'" in str(caught.value)


def test_the_component_says_how_to_limit_its_pool() -> None:
    description = BatchpipeComponent.get_description() or ""
    assert "dagster instance concurrency set duckdb_writer 1" in description
    schema = BatchpipeComponent.get_model_cls().model_json_schema()["properties"]
    assert "dagster instance concurrency set duckdb_writer 1" in schema["pool"]["description"]
    assert "relative to the folder of this defs.yaml" in schema["pipelines"]["description"]


def test_dg_finds_the_component_in_the_batchpipe_registry_module() -> None:
    """`dg list components` and `dg check defs` look a registry module's objects up
    through dir(), where a lazily imported component must still be listed."""
    from dagster.components.core.package_entry import get_package_objects_in_module

    import batchpipe

    assert dict(get_package_objects_in_module(batchpipe)) == {
        "BatchpipeComponent": BatchpipeComponent
    }
