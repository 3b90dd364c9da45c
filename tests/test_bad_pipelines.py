"""What analysts and operators get wrong, and what batchpipe tells them.

Two lists, read as one. tests/bad_pipelines/ holds one broken file per mistake, each
starting with the report `batchpipe validate FILE` must give (checked in process through
the CLI's entry point; one file also as a process, marked slow). RUNTIME below holds the
mistakes that need data or the environment: how to make each, the command as a person
types it, and what they must be told. Every case exits 1 (0 for a no-op that says why
nothing was sent), shows no traceback, bills nothing, creates no batch, and never shows
or stores the API key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from batchpipe.cli import main
from tests.support import batchpipe, free_port, ledger, start_emulator

CORPUS = Path(__file__).parent / "bad_pipelines"
FILES = sorted(CORPUS.glob("*.yaml"))


def expected_report(case: Path) -> list[str]:
    """`# expect: LINE:COL: ...` (after the file's path), then any `# also: ...` lines."""
    lines = case.read_text().splitlines()
    found = [f"{case}:{lines[0].removeprefix('# expect: ')}"]
    for line in lines[1:]:
        if not line.startswith("# also: "):
            break
        found.append(line.removeprefix("# also: "))
    return found


@pytest.mark.parametrize("case", FILES, ids=[c.stem for c in FILES])
def test_each_broken_file_is_explained_at_its_line(
    demo_db: Path, case: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    status = main(["validate", str(case)])  # in process, through the CLI's entry point
    stdout, stderr = capfd.readouterr()
    assert status == 1
    for text in expected_report(case):
        assert text in stderr, stderr
    assert "Traceback" not in stderr + stdout


@pytest.mark.slow
def test_the_command_explains_a_broken_file(demo_db: Path) -> None:
    """One file of the corpus through `batchpipe validate` as a person runs it: a process."""
    case = CORPUS / "bad_template.yaml"
    result = batchpipe("validate", str(case))
    assert result.returncode == 1
    for text in expected_report(case):
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ---- mistakes that need data or the environment ----------------------------------------

DAY = "2026-11-03"
SECRET = "sk-ant-api03-bad-input-corpus-0123456789"  # the key every case runs with
RIGHT_KEY = "the-right-key"  # what the wrong_api_key case's own emulator accepts
# A key value that is itself what another key is sent as: 'Lamp #2' does not fit the
# custom_id rule, so it goes out as h-<md5 of its JSON list>.
HASHED = "h-" + hashlib.md5(b'["Lamp #2"]').hexdigest()
# A process that holds the warehouse open for writing, as a notebook would.
HOLD = (
    "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
    "print('held', flush=True); time.sleep(300)"
)

# Given the project and a stack for cleanups, make the mistake; return environment changes.
Setup = Callable[[Path, contextlib.ExitStack], dict[str, str]]


@dataclass(frozen=True)
class Case:
    """A mistake: how to make it, the command as typed, and what the person is told.

    `expect` texts may say <file> (the pipeline file), <db> (the warehouse) and <api>
    (ANTHROPIC_BASE_URL). They are looked for in stderr, or in stdout for a no-op.
    """

    id: str
    setup: Setup
    command: tuple[str, ...]
    expect: tuple[str, ...]
    status: int = 1


def sql(*statements: str) -> Setup:
    """Change the data in the warehouse."""

    def setup(project: Path, stack: contextlib.ExitStack) -> dict[str, str]:
        with duckdb.connect(str(project / "warehouse.duckdb")) as con:
            for statement in statements:
                con.execute(statement)
        return {}

    return setup


def edit(old: str, new: str) -> Setup:
    """Change the product_descriptions pipeline file."""

    def setup(project: Path, stack: contextlib.ExitStack) -> dict[str, str]:
        path = project / "pipelines" / "product_descriptions.yaml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new))
        return {}

    return setup


def env(**values: str) -> Setup:
    """Set environment variables; an empty value reads as unset to batchpipe."""
    return lambda project, stack: values


def locked(project: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """Another process holds a write connection to the warehouse for the whole command."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(project / "warehouse.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(holder.stdout.close)
    stack.callback(holder.wait, timeout=10)
    stack.callback(holder.kill)
    assert holder.stdout.readline().strip() == "held"
    return {"BATCHPIPE_LOCK_WAIT": "1"}


def closed_port(project: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """ANTHROPIC_BASE_URL at a loopback port nothing listens on."""
    return {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}"}


def keyed_emulator(project: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """An API that accepts only RIGHT_KEY, while the command sends SECRET."""
    process, url = start_emulator(project / "keyed-emulator", api_key=RIGHT_KEY)
    stack.callback(process.wait, timeout=10)
    stack.callback(process.terminate)
    return {"ANTHROPIC_BASE_URL": url}


RUN = ("run", "product_descriptions", "--date", DAY)
PLAN = ("plan", "product_descriptions", "--date", DAY)
NULL_KEYS = sql("UPDATE products SET product_id = NULL WHERE product_id IN (2, 12)")
OVER_CONTEXT = sql("UPDATE products SET name = repeat('lorem ipsum ', 80000) WHERE product_id = 2")
BREAKS_ON_A_ROW = edit(
    '"Write a 2-sentence description for: {{ name }} ({{ category }})"',
    "\"{% if price > 'x' %}a{% endif %}\"",
)

RUNTIME = [
    Case(
        "null_keys",
        NULL_KEYS,
        RUN,
        (
            "<file>:7:3: source.key: 2 row(s) of 2026-11-03 have a NULL key; keys must be set.",
            '"name":"Cinder Lamp Mk 1"',  # an example row, to find it by
        ),
    ),
    Case(
        "null_keys_in_a_plan",
        NULL_KEYS,
        PLAN,
        ("<file>:7:3: source.key: 2 row(s) of 2026-11-03 have a NULL key; keys must be set.",),
    ),
    Case(
        "duplicate_key_values",
        sql("UPDATE products SET product_id = 2 WHERE product_id = 12"),
        RUN,
        (
            "<file>:7:3: source.key: the key is not unique on 2026-11-03: 2 (2 rows). "
            "Choose columns unique per row",
        ),
    ),
    Case(
        "key_column_not_unique",
        edit("key: product_id ", "key: category "),
        RUN,
        (
            "<file>:7:3: source.key: the key is not unique on 2026-11-03: ",
            "kitchen (30 rows). Choose columns unique per row",
        ),
    ),
    Case(
        "custom_ids_collide",
        sql(
            "ALTER TABLE products ALTER product_id TYPE VARCHAR",
            "UPDATE products SET product_id = 'Lamp #2' WHERE product_id = '2'",
            f"UPDATE products SET product_id = '{HASHED}' WHERE product_id = '12'",
        ),
        RUN,
        (
            "<file>:7:3: source.key: different keys of 2026-11-03 would be sent with the same "
            f'custom_id: {{"product_id":"Lamp #2"}} and {{"product_id":"{HASHED}"}} would '
            f"both be {HASHED}. A key that does not fit the API's rule "
            "^[a-zA-Z0-9_-]{1,64}$ is sent as h-<md5 of the key>",
        ),
    ),
    Case(
        "prompt_over_the_context_window",
        OVER_CONTEXT,
        RUN,
        (
            "<file>:13:3: request.prompt: 1 request(s) of 2026-11-03 would not fit "
            "claude-haiku-4-5's context window of 200,000 tokens (input plus max_tokens 200): "
            'key {"product_id":2} is about 240,0',
            "(estimated at 4 characters a token). Shorten the prompt, leave such rows out "
            "with source.where, or choose a model with a larger window",
        ),
    ),
    Case(
        "prompt_over_the_context_window_in_a_plan",
        OVER_CONTEXT,
        PLAN,
        ("claude-haiku-4-5's context window of 200,000 tokens", 'key {"product_id":2} is about'),
    ),
    Case(
        "template_breaks_on_a_row",
        BREAKS_ON_A_ROW,
        RUN,
        (
            "<file>:13:3: request.prompt: rendering the requests failed: cannot render a row: "
            "TypeError: '>' not supported between instances of 'Number' and 'str' "
            '(the row\'s values: {"price":',
        ),
    ),
    Case(
        "template_breaks_on_a_row_in_a_plan",
        BREAKS_ON_A_ROW,
        PLAN,
        ("<file>:13:3: request.prompt: rendering the requests failed: cannot render a row",),
    ),
    Case(
        "unknown_column_at_run_time",
        edit("{{ category }}", "{{ colour }}"),
        RUN,
        ("<file>:13:3: request.prompt: {{ colour }} is not a column",),
    ),
    Case(
        "no_rows_on_the_date",
        lambda project, stack: {},
        ("run", "product_descriptions", "--date", "2026-11-20"),
        ("requests:     no source rows fall on 2026-11-20, so nothing was sent",),
        status=0,
    ),
    Case(
        "date_before_the_first_partition",
        env(ANTHROPIC_API_KEY="", ANTHROPIC_BASE_URL=""),  # and no emulator is started
        ("run", "product_descriptions", "--date", "2026-10-01"),
        (
            "2026-10-01 is before the first partition of product_descriptions (2026-11-01, "
            "set by partitions.start in <file>)",
        ),
    ),
    Case(
        "unknown_pipeline",
        env(ANTHROPIC_API_KEY="", ANTHROPIC_BASE_URL=""),
        ("run", "nope", "--date", DAY),
        (
            "no pipeline named nope (pipelines: invoice_fields, photo_alt_text, "
            "product_descriptions, ",
        ),
    ),
    Case(
        "database_locked_by_another_process",
        locked,
        RUN,
        (
            "the DuckDB database <db> is locked by another process (PID ",
            "Close that process's connection (a notebook, a DuckDB shell, another run)",
        ),
    ),
    Case(
        "database_locked_while_validating",
        locked,
        ("validate",),
        ("the DuckDB database <db> is locked by another process (PID ",),
    ),
    Case(
        "bad_memory_limit",
        env(BATCHPIPE_MEMORY_LIMIT="lots"),
        RUN,
        ("BATCHPIPE_MEMORY_LIMIT='lots' is not a DuckDB memory size such as 1GB",),
    ),
    Case(
        "unreachable_api",
        closed_port,
        RUN,
        (
            "cannot reach the Anthropic API at <api> (",
            "Check ANTHROPIC_BASE_URL and the network, then run the same command again",
        ),
    ),
    Case(
        "wrong_api_key",
        keyed_emulator,
        RUN,
        ("the Batches API refused the batch (401): API key is invalid.",),
    ),
]


def spending(url: str) -> tuple[int, str | None] | None:
    """What the emulator at `url` has billed and its newest batch; None when nothing
    listens there (the closed port), since nothing can be spent there either."""
    try:
        billed = len(ledger(url))
        request = urllib.request.Request(
            f"{url}/v1/messages/batches?limit=1",
            headers={"x-api-key": RIGHT_KEY, "anthropic-version": "2023-06-01"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            newest = json.loads(response.read())["data"]
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return None
        raise
    return billed, newest[0]["id"] if newest else None


@pytest.mark.slow
@pytest.mark.parametrize("case", RUNTIME, ids=[c.id for c in RUNTIME])
def test_each_runtime_mistake_is_explained_and_costs_nothing(
    demo_db: Path, emulator_url: str, case: Case
) -> None:
    with contextlib.ExitStack() as stack:
        environment = {
            "ANTHROPIC_API_KEY": SECRET,
            "ANTHROPIC_BASE_URL": emulator_url,
            **case.setup(demo_db, stack),
        }
        api = environment["ANTHROPIC_BASE_URL"] or emulator_url
        before = spending(api)
        result = batchpipe(*case.command, env=environment)
        after = spending(api)

    shown = result.stderr if case.status else result.stdout
    assert result.returncode == case.status, result.stderr[-3000:]
    places = {
        "<file>": str(demo_db / "pipelines" / "product_descriptions.yaml"),
        "<db>": str(demo_db / "warehouse.duckdb"),
        "<api>": api,
    }
    for text in case.expect:
        for token, value in places.items():
            text = text.replace(token, value)
        assert text in shown, shown
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "dagster - ERROR" not in output
    assert SECRET not in output
    stored = b"".join(p.read_bytes() for p in demo_db.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored
    assert after == before  # nothing billed, no batch created
    assert not (demo_db / ".batchpipe" / "emulator").exists()  # no emulator was started
