"""Security (issue 7): the API key is never kept, pipeline files cannot inject SQL or
write outside the configured database, row values never become SQL, and the emulator
listens on loopback only.

Nothing of batchpipe is mocked: the key test runs the CLI and Dagster's CLI as
processes against real emulators, then reads every byte they left behind.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import ipaddress
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pytest

from batchpipe import requests, resolve, state
from batchpipe.errors import ConfigError
from batchpipe.loader import load_file
from tests.support import batchpipe, free_port, ledger, resolve_problem, start_emulator

DAY = "2026-11-03"

# A pipeline over the demo tables; each test below breaks one line of it.
PIPELINE = """\
name: hostile
source:
  table: products
  key: product_id
  partition_column: added_on
request:
  model: claude-haiku-4-5
  max_tokens: 200
  prompt: "Describe {{ name }} ({{ category }})"
output:
  table: hostile_out
  column: description
partitions:
  start: 2026-11-01
"""


def write(directory: Path, text: str) -> Path:
    path = directory / "hostile.yaml"
    path.write_text(text)
    return path


def tables(project: Path) -> dict[str, int]:
    """Every table of the warehouse with its row count: what a stray statement would change."""
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        quoted = {n: '"' + n.replace('"', '""') + '"' for n in names}
        return {n: con.execute(f"SELECT count(*) FROM {quoted[n]}").fetchone()[0] for n in names}


def resolve_refusal(project: Path, text: str) -> str:
    return resolve_problem(project, write(project, text))


# --- Names from a pipeline file -------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "table: products",
            "table: 'products; DROP TABLE products'",
            "source.table: 'products; DROP TABLE products' is not a plain column or table name",
        ),
        ("key: product_id", "key: 'a\"b'", "source.key: 'a\"b' is not a plain column"),
        (
            "partition_column: added_on",
            'partition_column: "added_on) OR (true"',
            "source.partition_column: 'added_on) OR (true' is not a plain column",
        ),
        (
            "table: hostile_out",
            "table: other_db.main.t",
            "output.table: 'other_db.main.t': expected a plain table name",
        ),
        (
            "table: hostile_out",
            "table: main.hostile_out",
            "the output table is always created in the main schema of BATCHPIPE_DB",
        ),
        (
            "table: hostile_out",
            "table: Batchpipe_Results",
            "output.table: 'Batchpipe_Results': names starting with batchpipe_ are batchpipe's",
        ),
        (
            "table: hostile_out",
            "table: 'hostile_out; DROP TABLE products'",
            "output.table: 'hostile_out; DROP TABLE products' is not a plain column or table",
        ),
        (
            "column: description",
            "column: 'a\"b'",
            "output.column: 'a\"b' is not a plain column",
        ),
    ],
)
def test_hostile_names_are_refused_with_file_and_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """Refused when the file is read, at the line of the name, before any SQL exists."""
    path = write(tmp_path, PIPELINE.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    (problem,) = caught.value.problems
    line = 1 + PIPELINE.splitlines().index("  " + old)
    assert problem.startswith(f"{path}:{line}:3: "), problem
    assert expected in problem


def test_output_schema_field_names_are_plain_identifiers(tmp_path: Path) -> None:
    text = PIPELINE.replace(
        "  column: description\n", "  schema:\n    'x\"; DROP TABLE products; --': string\n"
    )
    with pytest.raises(ConfigError, match=r"hostile\.yaml:\d+:\d+: output\.schema.*not a plain"):
        load_file(write(tmp_path, text))


def test_the_output_cannot_be_the_source_table(demo_db: Path) -> None:
    before = tables(demo_db)
    for name in ("products", "main.products"):
        text = PIPELINE.replace("table: hostile_out", "table: products").replace(
            "table: products\n  key", f"table: {name}\n  key"
        )
        message = resolve_refusal(demo_db, text)
        assert "hostile.yaml:11:3: output.table: 'products' is the source table" in message
    assert tables(demo_db) == before


def test_an_attached_database_is_out_of_reach_of_the_output(demo_db: Path) -> None:
    """`other.main.t` would name a table of an ATTACHed database: refused by name, so the
    write can only ever go to the configured database's main schema."""
    other = demo_db / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    text = PIPELINE.replace("table: hostile_out", "table: other.main.t")
    with pytest.raises(ConfigError, match=r"hostile\.yaml:11:3: output\.table: 'other\.main\.t'"):
        load_file(write(demo_db, text))
    with duckdb.connect(str(other), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_batchpipe_new_quotes_the_names_it_reads_from_the_warehouse(demo_db: Path) -> None:
    """`batchpipe new --table T` reads T and its date column by name: any name a table or
    column can have is quoted, never pasted into the SQL."""
    from batchpipe.starter import write_starter

    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute(
            'CREATE TABLE "odd ""name""; DROP TABLE products" AS SELECT 1 AS id, '
            'DATE \'2026-11-02\' AS "added ""on""", \'x\' AS body'
        )
    before = tables(demo_db)
    path = write_starter("odd", 'odd "name"; DROP TABLE products', demo_db)
    assert "start: 2026-11-02" in path.read_text()
    assert tables(demo_db) == before


# --- SQL from a pipeline file: one read-only SELECT, or one expression ----------------


def _query(sql: str) -> str:
    return PIPELINE.replace("  table: products\n", f"  query: {json.dumps(sql)}\n")


def _filter(sql: str) -> str:
    return PIPELINE.replace("  partition_column", f"  where: {json.dumps(sql)}\n  partition_column")


# Each names a file it would write (relative to the project), if it wrote one.
HOSTILE_QUERIES = {
    "two statements": ("SELECT * FROM products; DROP TABLE reviews", None),
    "a parenthesis closed early": ("SELECT 1); DROP TABLE reviews; (SELECT 1", None),
    "ATTACH": ("ATTACH '{dir}/attached.duckdb' AS other", "attached.duckdb"),
    "COPY TO": ("COPY products TO '{dir}/copied.csv'", "copied.csv"),
    "SELECT then COPY": ("SELECT * FROM products; COPY products TO '{dir}/c.csv'", "c.csv"),
    "INSTALL": ("INSTALL httpfs", None),
    "LOAD": ("LOAD httpfs", None),
    "CREATE": ("CREATE TABLE made AS SELECT * FROM products", None),
    "INSERT": ("INSERT INTO reviews SELECT * FROM reviews", None),
    "SET": ("SET memory_limit = '1GB'", None),
    "PRAGMA that sets": ("PRAGMA threads = 1", None),
    "PRAGMA profiling": ("PRAGMA enable_profiling", None),
    "EXPORT DATABASE": ("EXPORT DATABASE '{dir}/exported'", "exported"),
    "CALL": ("CALL checkpoint()", None),
    "a log file from a SELECT": (
        "SELECT p.* FROM products AS p, "
        "enable_logging(storage = 'file', storage_path = '{dir}/logged')",
        "logged",
    ),
    "a profile file from a SELECT": (
        "SELECT * FROM products, enable_profiling(format = 'json', "
        "save_location = '{dir}/profile.json')",
        "profile.json",
    ),
    "SQL text it cannot check": ("SELECT * FROM query('SELECT * FROM products')", None),
    "a checkpoint in a subquery": (
        "SELECT * FROM products WHERE EXISTS (SELECT * FROM checkpoint()) OR true",
        None,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_QUERIES))
def test_a_query_that_is_not_one_read_only_select_is_refused_before_it_runs(
    demo_db: Path, case: str
) -> None:
    sql, writes = HOSTILE_QUERIES[case]
    before = tables(demo_db)
    message = resolve_refusal(demo_db, _query(sql.format(dir=demo_db)))
    assert message.startswith(f"{demo_db / 'hostile.yaml'}:3:3: source.query: "), message
    assert "Traceback" not in message
    assert tables(demo_db) == before
    if writes:
        assert not (demo_db / writes).exists()


HOSTILE_FILTERS = {
    "a second statement": ("true; DROP TABLE reviews", None),
    "a COPY after it": ("true; COPY products TO '{dir}/copied.csv'", "copied.csv"),
    "a parenthesis closed early": ("true) OR (true", None),
    "a clause after it": ("true LIMIT 1", None),
    "a comment eating the rest": ("true) --", None),
    "a log file from a subquery": (
        "EXISTS (SELECT * FROM enable_logging(storage = 'file', "
        "storage_path = '{dir}/logged')) OR true",
        "logged",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILTERS))
def test_a_filter_that_is_not_one_expression_is_refused_before_it_runs(
    demo_db: Path, case: str
) -> None:
    sql, writes = HOSTILE_FILTERS[case]
    before = tables(demo_db)
    message = resolve_refusal(demo_db, _filter(sql.format(dir=demo_db)))
    assert message.startswith(f"{demo_db / 'hostile.yaml'}:5:3: source.where: "), message
    assert tables(demo_db) == before
    if writes:
        assert not (demo_db / writes).exists()


@pytest.mark.slow
def test_a_run_with_a_hostile_filter_stops_before_anything_runs_or_is_sent(
    demo_db: Path, emulator_url: str
) -> None:
    """Through the CLI, on the writable connection of a real run: the message, and the
    warehouse and the money untouched."""
    path = demo_db / "pipelines" / "product_descriptions.yaml"
    path.write_text(
        path.read_text().replace(
            "  key: product_id", '  where: "true; DROP TABLE reviews"\n  key: product_id', 1
        )
    )
    before, billed = tables(demo_db), len(ledger(emulator_url))
    result = batchpipe(
        "run", "product_descriptions", "--date", DAY, env={"ANTHROPIC_BASE_URL": emulator_url}
    )
    assert result.returncode == 1
    assert f"{path}:7:3: source.where: the filter must be one SELECT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    after = tables(demo_db)  # batchpipe's own state tables exist now, empty
    assert {k: v for k, v in after.items() if not k.startswith("batchpipe_")} == before
    # Their bookkeeping aside (the schema version, the intents' turn: one row each), no
    # request, batch, result or owner was recorded.
    bookkeeping = {"batchpipe_schema": 1, "batchpipe_turns": 1}
    assert {k: v for k, v in after.items() if k in bookkeeping} == bookkeeping
    assert not any(after[k] for k in after if k.startswith("batchpipe_") and k not in bookkeeping)
    assert len(ledger(emulator_url)) == billed


def test_ordinary_queries_and_filters_still_resolve(demo_db: Path) -> None:
    """The checks refuse what writes, not SQL: CTEs, comments, ';' in a string, reading
    a file, {{ partition_date }}, catalog functions."""
    (demo_db / "extra.csv").write_text("product_id,tag\n1,a;b\n")
    query = (
        f"WITH tagged AS (SELECT * FROM read_csv('{demo_db}/extra.csv'))  -- a comment\n"
        "SELECT p.*, t.tag FROM products AS p LEFT JOIN tagged AS t USING (product_id)\n"
        "WHERE p.added_on <= {{ partition_date }}\n"
        "  AND p.name NOT IN (SELECT table_name FROM duckdb_tables()) /* ; */"
    )
    text = _query(query).replace(
        "  partition_column", "  where: \"coalesce(tag, ';') <> 'x); DROP'\"\n  partition_column"
    )
    pf = load_file(write(demo_db, text))
    with state.connect() as con:  # BATCHPIPE_DB: the project's warehouse
        resolved = resolve.resolve(pf, con)
        summary = requests.build_requests(con, resolved, dt.date(2026, 11, 3))
    assert summary.requests == 30


# --- Values from rows never become SQL -------------------------------------------------

HOSTILE_VALUES = [
    "'); DROP TABLE products; --",
    'Robert"); DROP TABLE reviews; --',
    "{{ category }} and {% if true %}jinja{% endif %}",
    "{{ ''.__class__.__mro__ }}",
    "back\\slash, \"quotes\", 'apostrophes', a\nnewline and ünïcode",
]


@pytest.mark.parametrize(
    "prompt",
    [
        "Describe {{ name }} ({{ category }})",  # compiled to SQL: DuckDB renders it
        "Describe {{ name }} ({% if price > 0 %}{{ category }}{% endif %})",  # Jinja's UDF
    ],
    ids=["sql", "jinja"],
)
def test_row_values_reach_the_prompt_verbatim_and_never_run(demo_db: Path, prompt: str) -> None:
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        for i, value in enumerate(HOSTILE_VALUES):
            con.execute(
                "INSERT INTO products VALUES (?, ?, ?, 9.99, DATE '2026-11-03')",
                [1000 + i, value, value],
            )
    before = tables(demo_db)
    text = PIPELINE.replace('"Describe {{ name }} ({{ category }})"', json.dumps(prompt))
    pf = load_file(write(demo_db, text))
    with state.connect() as con:
        resolved = resolve.resolve(pf, con)
        assert resolved.messages[0][1].is_sql == (prompt.count("{%") == 0)
        requests.build_requests(con, resolved, dt.date(2026, 11, 3))
        rows = dict(
            con.execute(
                "SELECT custom_id, params FROM batchpipe_requests WHERE pipeline = 'hostile'"
            ).fetchall()
        )
    for i, value in enumerate(HOSTILE_VALUES):
        params = json.loads(rows[str(1000 + i)])
        assert params["messages"][0]["content"] == f"Describe {value} ({value})"
    after = tables(demo_db)
    assert after.pop("batchpipe_requests") == 35
    assert {k: v for k, v in after.items() if not k.startswith("batchpipe_")} == {
        k: v for k, v in before.items() if not k.startswith("batchpipe_")
    }


# --- The API key -----------------------------------------------------------------------


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A command as a person runs it, from the project folder, with its output captured."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def _duckdb_text(path: Path) -> str:
    """Every row of every table of a DuckDB file as JSON text. Strings in a DuckDB file may
    be compressed (FSST, dictionaries), so its raw bytes alone could hide a key."""
    with duckdb.connect(str(path), read_only=True) as con:
        names = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        relations = [".".join('"' + p.replace('"', '""') + '"' for p in n) for n in names]
        return "\n".join(
            str(row[0])
            for relation in relations
            for row in con.execute(
                f"SELECT CAST(to_json(t) AS VARCHAR) FROM {relation} AS t"
            ).fetchall()
        )


def _dagster_text(home: Path) -> tuple[str, int]:
    """Dagster's own records of DAGSTER_HOME (runs with their config and tags, every event
    with its metadata and errors) serialized as text, and how many runs there are."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        texts = [dg.serialize_value(run) for run in runs]
        for run in runs:
            texts += [dg.serialize_value(event) for event in instance.all_logs(run.run_id)]
    return "\n".join(texts), len(runs)


def _every_byte(root: Path) -> bytes:
    """Every file under root as bytes, gzip files also unpacked, DuckDB files also as rows
    (a .wal beside one is read as bytes, and replayed into the rows when it is opened)."""
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        parts.append(data)
        if data[:2] == b"\x1f\x8b":
            parts.append(gzip.decompress(data))
        if data[8:12] == b"DUCK":  # a DuckDB database file, whatever its name
            parts.append(_duckdb_text(path).encode())
    return b"\n".join(parts)


def test_the_search_finds_a_key_wherever_it_is_stored(tmp_path: Path) -> None:
    """The searches below can fail: a key in a compressed DuckDB column or a gzip file is
    found, where a plain byte search would miss the first."""
    secret = "sk-ant-sentinel-" + uuid.uuid4().hex
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute(
            "CREATE TABLE t AS SELECT ? || i AS s FROM range(100000) AS r(i)", [secret[:-4]]
        )
        con.execute("CHECKPOINT")
    assert secret[:-4].encode() in _every_byte(tmp_path)
    (tmp_path / "w.duckdb").unlink()
    (tmp_path / "log.gz").write_bytes(gzip.compress(secret.encode()))
    assert secret.encode() not in (tmp_path / "log.gz").read_bytes()
    assert secret.encode() in _every_byte(tmp_path)


@pytest.mark.slow
def test_the_api_key_is_nowhere_after_runs_plans_and_failures(
    demo_db: Path, private_emulator
) -> None:
    """Runs, plans, a Dagster CLI materialization, a wrong key and an unreachable API, all
    with one sentinel key; then every byte they left, every Dagster record and all their
    output are searched for it and for its random part alone."""
    secret = "sk-ant-sentinel-" + uuid.uuid4().hex
    suffix = secret.removeprefix("sk-ant-sentinel-")
    url = private_emulator(latency=0)  # accepts any key; batches end at once: no polling
    home = demo_db / "dagster_home"
    (demo_db / "tmp").mkdir()
    env = {
        "ANTHROPIC_API_KEY": secret,
        "ANTHROPIC_BASE_URL": url,
        "DAGSTER_HOME": str(home),
        "TMPDIR": str(demo_db / "tmp"),  # what anything writes to temp files is searched too
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this checkout's batchpipe
    }
    hostile = "'); DROP TABLE products; -- {{ category }}"
    with duckdb.connect(str(demo_db / "warehouse.duckdb")) as con:
        con.execute("INSERT INTO products VALUES (999, ?, 'home', 1, DATE '2026-11-03')", [hostile])
    cli = [sys.executable, "-m", "batchpipe"]
    outputs: list[subprocess.CompletedProcess] = []

    def run(*args: str, **more: str) -> subprocess.CompletedProcess:
        done = _run(demo_db, {**env, **more}, *args)
        outputs.append(done)
        return done

    planned = run(*cli, "plan", "product_descriptions", "--date", DAY)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "(count_tokens on " in planned.stdout  # the key reached the API

    ran = run(*cli, "run", "product_descriptions", "--date", DAY)
    assert ran.returncode == 0, ran.stderr
    assert "31 rows (31 succeeded" in ran.stdout
    assert run(*cli, "status").returncode == 0

    dagster = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    materialized = run(
        *dagster,
        *("-m", "batchpipe.definitions", "--select", "group:product_descriptions"),
        *("--partition", "2026-11-04"),
        *("--config-json", '{"resources": {"batchpipe": {"config": {"wait": true}}}}'),
    )
    assert materialized.returncode == 0, materialized.stderr[-3000:]

    process, locked = start_emulator(demo_db / "locked-emulator", api_key="the-right-key")
    try:
        refused = run(*cli, "run", "product_descriptions", "--date", "2026-11-05",
                      ANTHROPIC_BASE_URL=locked)  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert refused.returncode == 1
    assert "the Batches API refused the batch (401): API key is invalid." in refused.stderr
    assert "Traceback" not in refused.stderr

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    unreachable_plan = run(*cli, "plan", "product_descriptions", "--date", "2026-11-06",
                           ANTHROPIC_BASE_URL=closed)  # fmt: skip
    assert unreachable_plan.returncode == 0
    assert "count_tokens failed" in unreachable_plan.stdout  # and says so
    unreachable = run(*cli, "run", "product_descriptions", "--date", "2026-11-06",
                      ANTHROPIC_BASE_URL=closed)  # fmt: skip
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr

    # The hostile name went out and came back as text, and nothing it says was run.
    with duckdb.connect(str(demo_db / "warehouse.duckdb"), read_only=True) as con:
        (reply,) = con.execute(
            "SELECT description FROM product_descriptions WHERE product_id = 999"
        ).fetchone()
        assert con.execute("SELECT count(*) FROM products").fetchone() == (301,)
    assert reply == f"Emulated reply to: Write a 2-sentence description for: {hostile} (home)"

    printed = "\n".join(done.stdout + done.stderr for done in outputs)
    stored = _every_byte(demo_db)  # warehouse (+ .wal), DAGSTER_HOME, results, emulators
    records, runs = _dagster_text(home)
    # The searches look where a key would be: prompts, batch ids, the recorded failures.
    assert b"Emulated reply to: Write a 2-sentence" in stored and b"msgbatch_" in stored
    assert runs >= 4 and "API key is invalid." in records and "product_descriptions" in records
    assert "401" in printed and "count_tokens failed" in printed
    needles = [
        secret,
        suffix,
        suffix[:12],
        suffix[-12:],
        base64.b64encode(secret.encode()).decode(),
    ]
    for needle in needles:
        assert needle not in printed, f"{needle!r} was printed"
        assert needle.encode() not in stored, f"{needle!r} was stored under {demo_db}"
        assert needle not in records, f"{needle!r} is in Dagster's records"
    assert len(ledger(url)) == 31 + 30  # the two partitions that ran, paid once each


# --- The emulator listens on loopback only ------------------------------------------------


def listening_addresses(
    pid: int,
) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The (address, port) of every TCP socket the process listens on, from /proc: the
    socket itself, not what the process says it bound."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        if with_target.startswith("socket:["):
            inodes.add(with_target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((ipaddress.ip_address(raw), int(port, 16)))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads Linux's /proc")
def test_the_emulator_listens_on_loopback_by_default(tmp_path: Path) -> None:
    process, url = start_emulator(tmp_path / "state")  # no --host
    try:
        listening = listening_addresses(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
    port = int(url.rsplit(":", 1)[1])
    assert (ipaddress.ip_address("127.0.0.1"), port) in listening
    assert listening and all(address.is_loopback for address, _ in listening), listening


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads Linux's /proc")
def test_the_emulator_batchpipe_starts_listens_on_loopback(project: Path) -> None:
    """The one a run without a key starts in the background, and leaves running."""
    from batchpipe.api import ensure_emulator

    url = ensure_emulator(announce=False)
    pid = json.loads((project / ".batchpipe" / "emulator" / "server.json").read_text())["pid"]
    try:
        listening = listening_addresses(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert url.startswith("http://127.0.0.1:")
    assert (ipaddress.ip_address("127.0.0.1"), int(url.rsplit(":", 1)[1])) in listening
    assert all(address.is_loopback for address, _ in listening), listening
