"""An output table belongs to one pipeline (issue 15): a copied file on the same table, a
typo naming someone's table, or a table another pipeline owns is refused by `validate`,
`plan` and `run` at the line of output.table, before anything is sent; a table is written
into only when batchpipe created it, when an earlier batchpipe provably wrote it for this
pipeline, or when the file adopts it with `output.adopt_existing: true`.

The commands run through the CLI as a person types it, against an emulator of the test's
own: its ledger says what was paid, and the tables are compared before and after.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.support import batchpipe, ledger, query

DAY = "2026-11-03"
RUN = ("run", "product_descriptions", "--date", DAY)
PLAN = ("plan", "product_descriptions", "--date", DAY)
TABLE_LINE = "  table: product_descriptions "  # output.table of the shipped example


@pytest.fixture
def emulator(demo_db: Path, private_emulator) -> str:
    """An emulator of the test's own, so its ledger holds only this test's charges."""
    return private_emulator(latency=0.05)


def example(project: Path) -> Path:
    return project / "pipelines" / "product_descriptions.yaml"


def at(path: Path, line_start: str = TABLE_LINE) -> str:
    """`file:line:3`, where the line starting with `line_start` is (a key at indent 2)."""
    lines = path.read_text().splitlines()
    number = 1 + next(i for i, line in enumerate(lines) if line.startswith(line_start))
    return f"{path}:{number}:3"


def retarget(path: Path, table: str, *, adopt: bool = False, name: str | None = None) -> None:
    """Point a copy of the example at another output table (and name), adopting it or not."""
    text = path.read_text().replace(TABLE_LINE, f"  table: {table} ", 1)
    if adopt:
        text = text.replace("  column: ", "  adopt_existing: true\n  column: ", 1)
    if name:
        text = text.replace("name: product_descriptions ", f"name: {name} ", 1)
    path.write_text(text)


def copy_elsewhere(project: Path, name: str) -> Path:
    """The example under another name, alone in a folder of its own: what another
    team's BATCHPIPE_PIPELINES on the same warehouse would hold."""
    folder = project / f"{name}_pipelines"
    folder.mkdir()
    path = folder / f"{name}.yaml"
    path.write_text(example(project).read_text())
    retarget(path, "product_descriptions", name=name)
    return path


def sql(project: Path, *statements: str) -> None:
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        for statement in statements:
            con.execute(statement)


def snapshot(project: Path, table: str) -> tuple[list, list]:
    """A table's columns with their types, and its rows: what a stray write would change."""
    columns = query(
        project,
        f"SELECT column_name, data_type FROM duckdb_columns() "
        f"WHERE table_name = '{table}' ORDER BY column_index",
    )
    return columns, sorted(query(project, f"SELECT * FROM {table}"), key=repr)


def owners(project: Path) -> list[tuple]:
    return query(project, "SELECT table_name, pipeline, adopted FROM batchpipe_outputs ORDER BY 1")


def refused_at_no_cost(
    project: Path, emulator: str, table: str, before: tuple, commands: list, *texts: str
) -> None:
    """Each command refuses with the texts; nothing was charged, the table is as it was
    and no pipeline was recorded as its owner."""
    for command in commands:
        refused(batchpipe(*command), *texts)
    assert ledger(emulator) == []
    assert snapshot(project, table) == before
    assert owners(project) == []


def refused(result, *texts: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    for text in texts:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_copy_on_the_same_output_table_is_refused_and_costs_nothing(
    demo_db: Path, emulator: str
) -> None:
    """The v2 copy of a prompt: both files named at their output.table, by validate (all
    files, or the one file) and by run of either; the first pipeline's rows stay."""
    assert batchpipe(*RUN).returncode == 0
    before, billed = snapshot(demo_db, "product_descriptions"), len(ledger(emulator))
    assert owners(demo_db) == [("product_descriptions", "product_descriptions", False)]
    original = example(demo_db)
    copy = original.with_name("product_descriptions_v2.yaml")
    copy.write_text(original.read_text().replace("a 2-sentence", "a 3-sentence"))
    retarget(copy, "product_descriptions", name="product_descriptions_v2")

    from_copy = (
        f"{at(copy)}: output.table: 'product_descriptions' is also the output table of "
        f"'product_descriptions' ({at(original)}); an output table belongs to one pipeline, "
        "and a run of either would delete the other's rows: choose another output.table"
    )
    from_original = (
        f"{at(original)}: output.table: 'product_descriptions' is also the output table of "
        f"'product_descriptions_v2' ({at(copy)})"
    )
    result = batchpipe("validate")
    refused(result, from_copy, from_original)
    assert "ok  product_descriptions " not in result.stdout
    assert "ok  review_sentiment" in result.stdout  # the other files are still checked
    refused(batchpipe("validate", str(copy)), from_copy)
    refused(batchpipe("run", "product_descriptions_v2", "--date", DAY), from_copy)
    refused(batchpipe(*RUN), from_copy)  # the folder does not load: neither runs

    # The copy alone in another folder on the same warehouse: the table says whose it is.
    elsewhere = copy_elsewhere(demo_db, "product_descriptions_v2")
    owned = (
        f"{at(elsewhere)}: output.table: table 'product_descriptions' belongs to pipeline "
        "'product_descriptions', which created it (batchpipe_outputs); an output table "
        "belongs to one pipeline, even with output.adopt_existing"
    )
    other_folder = {"BATCHPIPE_PIPELINES": str(elsewhere.parent)}
    refused(batchpipe("validate", env=other_folder), owned)
    refused(batchpipe("run", "product_descriptions_v2", "--date", DAY, env=other_folder), owned)

    assert len(ledger(emulator)) == billed
    assert snapshot(demo_db, "product_descriptions") == before
    assert owners(demo_db) == [("product_descriptions", "product_descriptions", False)]


def test_two_files_on_one_output_table_are_refused_and_the_location_keeps_the_first(
    tmp_path: Path,
) -> None:
    """`batchpipe validate` (load_pipelines) refuses the folder, naming both files; the
    code location keeps the first pipeline and shows the clash at the second."""
    import dagster as dg

    from batchpipe.dagster import build_definitions
    from batchpipe.errors import ConfigError
    from batchpipe.loader import load_pipelines

    shipped = Path(__file__).resolve().parent.parent / "pipelines" / "product_descriptions.yaml"
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(shipped.read_text())
    second.write_text(shipped.read_text())
    retarget(second, "PRODUCT_DESCRIPTIONS", name="product_descriptions_v2")
    clash = (
        f"{at(second, '  table: PRODUCT_DESCRIPTIONS')}: output.table: 'PRODUCT_DESCRIPTIONS' "
        f"is also the output table of 'product_descriptions' ({at(first)}, as "
        "'product_descriptions': DuckDB ignores case); an output table belongs to one "
        "pipeline, and a run of either would delete the other's rows: choose another "
        "output.table"
    )
    with pytest.raises(ConfigError) as caught:
        load_pipelines(tmp_path)
    assert caught.value.problems == [clash]
    graph = build_definitions(tmp_path).resolve_asset_graph()
    assert graph.has(dg.AssetKey(["product_descriptions", "enriched"]))
    assert not graph.has(dg.AssetKey(["product_descriptions_v2", "enriched"]))
    assert clash in graph.get(dg.AssetKey(["batchpipe_problems", "b"])).description


CUSTOMERS = (
    "CREATE TABLE customers (customer_id INTEGER, name VARCHAR, email VARCHAR)",
    "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bo', 'bo@example.com')",
)


@pytest.mark.slow
def test_an_existing_table_batchpipe_did_not_create_is_refused_unchanged(
    demo_db: Path, emulator: str
) -> None:
    sql(demo_db, *CUSTOMERS)
    before = snapshot(demo_db, "customers")
    path = example(demo_db)
    retarget(path, "Customers")  # DuckDB's names ignore case: this is `customers`
    refused_at_no_cost(
        demo_db,
        emulator,
        "customers",
        before,
        [("validate",), ("validate", str(path)), PLAN, RUN],
        f"{at(path, '  table: Customers')}: output.table: table 'customers' already exists "
        f"in {demo_db / 'warehouse.duckdb'} and batchpipe did not create it (no pipeline "
        "owns it in batchpipe_outputs); a run would add columns to it and delete and "
        "insert its rows. Choose another output.table, or, to write into this table "
        "deliberately, set output.adopt_existing: true",
    )


@pytest.mark.slow
def test_adopt_existing_writes_into_a_compatible_table_which_is_then_owned(
    demo_db: Path, emulator: str
) -> None:
    sql(
        demo_db,
        "CREATE TABLE product_notes AS "
        "SELECT product_id, name, 'kept' AS note FROM products WHERE product_id <= 3",
    )
    path = example(demo_db)
    retarget(path, "product_notes", adopt=True)
    assert batchpipe("validate", str(path)).returncode == 0
    result = batchpipe(*RUN)
    assert result.returncode == 0, result.stderr

    written = query(demo_db, "SELECT count(*) FROM product_notes WHERE partition_date = ?", [DAY])[
        0
    ][0]
    assert written == len(ledger(emulator)) > 0
    kept = query(demo_db, "SELECT product_id, note FROM product_notes WHERE note = 'kept'")
    assert sorted(kept) == [(1, "kept"), (2, "kept"), (3, "kept")]  # its own rows stay
    assert owners(demo_db) == [("product_notes", "product_descriptions", True)]

    # Owned now: another pipeline naming it is refused, adopt_existing or not.
    other = copy_elsewhere(demo_db, "notes_v2")
    retarget(other, "product_notes", adopt=True)
    billed, before = len(ledger(emulator)), snapshot(demo_db, "product_notes")
    refused(
        batchpipe("run", "notes_v2", "--date", DAY, env={"BATCHPIPE_PIPELINES": str(other.parent)}),
        f"{at(other, '  table: product_notes')}: output.table: table 'product_notes' belongs "
        "to pipeline 'product_descriptions', which adopted it (batchpipe_outputs)",
        "even with output.adopt_existing",
    )
    assert len(ledger(emulator)) == billed
    assert snapshot(demo_db, "product_notes") == before


@pytest.mark.parametrize(
    ("columns", "reasons"),
    [
        (
            "product_id VARCHAR, name VARCHAR, description INTEGER",
            (
                "column product_id is VARCHAR in the table but BIGINT in the output; "
                "column description is INTEGER in the table but VARCHAR in the output",
            ),
        ),
        ("sku VARCHAR, name VARCHAR", ("key column(s) product_id are not in the table",)),
    ],
    ids=["clashing_types", "no_key_column"],
)
@pytest.mark.slow
def test_adopt_existing_refuses_a_table_whose_columns_do_not_fit(
    demo_db: Path, emulator: str, columns: str, reasons: tuple[str, ...]
) -> None:
    sql(demo_db, f"CREATE TABLE product_notes ({columns})")
    before = snapshot(demo_db, "product_notes")
    path = example(demo_db)
    retarget(path, "product_notes", adopt=True)
    refused_at_no_cost(
        demo_db,
        emulator,
        "product_notes",
        before,
        [("validate", str(path)), RUN],
        f"{at(path, '  table: product_notes')}: output.table: table 'product_notes' "
        "cannot be adopted (output.adopt_existing): ",
        *reasons,
        "Choose another output.table, or change the table's columns to match",
    )


@pytest.mark.slow
def test_a_table_an_earlier_batchpipe_wrote_is_still_this_pipelines(
    demo_db: Path, emulator: str
) -> None:
    """A warehouse of the previous batchpipe has output tables and no batchpipe_outputs:
    a table whose batch ids are all this pipeline's batches is accepted (read-only by
    validate, recorded by a run); for any other pipeline it is a table it did not create."""
    assert batchpipe(*RUN).returncode == 0
    sql(demo_db, "DROP TABLE batchpipe_outputs")  # as the previous batchpipe left it
    rows = query(demo_db, "SELECT count(*) FROM product_descriptions")

    result = batchpipe("validate", str(example(demo_db)))
    assert result.returncode == 0, result.stderr
    assert "ok  product_descriptions" in result.stdout
    assert "batchpipe_outputs" not in {t for (t,) in query(demo_db, "SHOW TABLES")}

    billed = len(ledger(emulator))
    result = batchpipe("run", "product_descriptions", "--date", "2026-11-04")
    assert result.returncode == 0, result.stderr
    assert len(ledger(emulator)) > billed  # the next date was sent and written
    assert (
        query(demo_db, "SELECT count(*) FROM product_descriptions WHERE partition_date = ?", [DAY])
        == rows
    )
    assert owners(demo_db) == [("product_descriptions", "product_descriptions", False)]

    sql(demo_db, "DELETE FROM batchpipe_outputs")
    other = copy_elsewhere(demo_db, "product_copy")
    refused(
        batchpipe("validate", env={"BATCHPIPE_PIPELINES": str(other.parent)}),
        f"{at(other)}: output.table: table 'product_descriptions' already exists in "
        f"{demo_db / 'warehouse.duckdb'} and batchpipe did not create it",
    )
