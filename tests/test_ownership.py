"""Issue 15.1: a batch is ours only when its results prove it.

Teams share API keys: a colleague's laptop, staging and production, two warehouses. Here
two installations (each its own warehouse, pipelines and state) talk to one emulator on
one key. The staging copy has the same pipeline, keys and batch size as production, and
another prompt, so a batch of either matches the other's by size and time. Whatever one
leaves unknown (a run killed while its create may be out, a create answered 5xx), the
other's batches are never loaded, never canceled, and every row gets its own answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anthropic
import duckdb
import pytest

from tests.conftest import REPO
from tests.support import ledger, request_of

pytestmark = pytest.mark.slow

DAY = "2026-11-03"
PIPELINE = "product_descriptions"
PROMPT = "Write a 2-sentence description for: "
STAGING_PROMPT = "STAGING copy, describe: "


class Installation:
    """One warehouse with its pipeline folder and state, run as a person runs it."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "BATCHPIPE_DB": str(root / "warehouse.duckdb"),
            "BATCHPIPE_PIPELINES": str(root / "pipelines"),
            "BATCHPIPE_STATE": str(root / ".batchpipe"),
            "ANTHROPIC_BASE_URL": url,
        }
        self.env.pop("DAGSTER_HOME", None)

    def run(self, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, **({"BATCHPIPE_KILL_AT": kill_at} if kill_at else {})}
        return subprocess.run(
            [sys.executable, "-m", "batchpipe", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=300,
        )

    def read(self, sql: str, params: list | None = None) -> list[tuple]:
        with duckdb.connect(self.env["BATCHPIPE_DB"], read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def batch_ids(self) -> set[str]:
        return {b for (b,) in self.read("SELECT batch_id FROM batchpipe_batches") if b}

    def rows(self, day: str = DAY) -> list[tuple]:
        return self.read(
            "SELECT product_id, result_status, description, batch_id FROM product_descriptions "
            "WHERE partition_date = ? ORDER BY 1",
            [day],
        )


def installation(root: Path, url: str, prompt: str = PROMPT, batch: int = 0) -> Installation:
    """The repo's pipelines with `prompt`, and the demo tables, in a folder of its own."""
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    path = root / "pipelines" / f"{PIPELINE}.yaml"
    text = path.read_text().replace(PROMPT, prompt)
    if batch:
        text = text.replace(
            "  max_tokens: 200\n", f"  max_tokens: 200\n  max_batch_requests: {batch}\n"
        )
    path.write_text(text)
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute((root / "pipelines" / "demo_data.sql").read_text())
    return Installation(root, url)


@pytest.fixture
def two(tmp_path: Path, private_emulator) -> tuple[Installation, Installation, str]:
    """Production and its staging copy (another prompt) on one emulator and key."""
    url = private_emulator()
    production = installation(tmp_path / "production", url)
    staging = installation(tmp_path / "staging", url, STAGING_PROMPT)
    return production, staging, url


def upstream(url: str) -> list[anthropic.types.messages.MessageBatch]:
    return list(anthropic.Anthropic(api_key="t", base_url=url).messages.batches.list())


def assert_own_answers(place: Installation, prompt: str, day: str = DAY) -> None:
    """Every row succeeded, answered to this installation's own prompt, by its own batch."""
    rows = place.rows(day)
    assert len(rows) == 30 and {status for _, status, _, _ in rows} == {"succeeded"}, rows
    assert all(prompt in text for _, _, text, _ in rows), rows[:3]
    assert {batch for *_, batch in rows} <= place.batch_ids()


def billed_once_each(url: str, place: Installation) -> None:
    """The installation's requests, as the emulator billed them: each exactly once."""
    mine = place.batch_ids()
    billed = Counter(request_of(e["custom_id"]) for e in ledger(url) if e["batch_id"] in mine)
    assert billed and max(billed.values()) == 1, billed.most_common(3)
    (requests,) = place.read("SELECT count(DISTINCT custom_id) FROM batchpipe_requests")[0]
    assert len(billed) == requests


@pytest.mark.parametrize("other_keys", [False, True], ids=["staging_copy", "other_rows"])
def test_a_batch_of_the_same_size_from_another_installation_is_not_adopted(
    two, other_keys: bool
) -> None:
    """Production dies while its create may be out (it was not: killed just before the
    call); staging then sends a batch of the same size. Production's next run must not
    take that batch: not its answers (the staging copy has the same keys, so the same
    custom_ids), and not a partition stuck on results for requests it never sent (rows
    with other keys)."""
    production, staging, url = two
    if other_keys:
        with duckdb.connect(staging.env["BATCHPIPE_DB"]) as con:
            con.execute("UPDATE products SET product_id = product_id + 1000")

    killed = production.run("run", PIPELINE, "--date", DAY, kill_at="before_create")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert upstream(url) == []  # production's create never went out
    assert staging.run("run", PIPELINE, "--date", DAY).returncode == 0
    (theirs,) = staging.batch_ids()

    again = production.run("run", PIPELINE, "--date", DAY)

    assert again.returncode == 0, again.stderr[-3000:]
    # Staging's batch was a candidate, and its results showed it foreign.
    assert production.read("SELECT batch_id, verdict FROM batchpipe_candidates") == [
        (theirs, "foreign")
    ]
    assert_own_answers(production, PROMPT)
    assert theirs not in production.batch_ids()
    # Staging's batch was left alone: not canceled, its rows untouched.
    (batch,) = [b for b in upstream(url) if b.id == theirs]
    assert batch.request_counts.canceled == 0 and batch.request_counts.succeeded == 30
    assert_own_answers(staging, STAGING_PROMPT)
    billed_once_each(url, production)
    billed_once_each(url, staging)


def test_the_batch_that_proves_ours_is_adopted_and_the_other_left_alone(two) -> None:
    """Production dies right after its create went through, before recording the id;
    staging sends a batch of the same size. Two unclaimed batches match production's
    intent: instead of asking a person to cancel one (it would be staging's), their
    results decide. Production's own is adopted, not sent again; staging's is untouched."""
    production, staging, url = two
    killed = production.run("run", PIPELINE, "--date", DAY, kill_at="after_create")
    assert killed.returncode == -signal.SIGKILL
    (ours,) = [b.id for b in upstream(url)]
    assert staging.run("run", PIPELINE, "--date", DAY).returncode == 0

    again = production.run("run", PIPELINE, "--date", DAY)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "Cancel" not in again.stdout + again.stderr
    (theirs,) = staging.batch_ids()
    verdicts = dict(production.read("SELECT batch_id, verdict FROM batchpipe_candidates"))
    # Staging's is foreign if proven first, else released once ours was found: left alone.
    assert verdicts[ours] == "ours" and verdicts[theirs] in ("foreign", "released")
    assert production.batch_ids() == {ours}
    assert len(upstream(url)) == 2  # nothing sent again
    assert all(b.request_counts.canceled == 0 for b in upstream(url))
    assert_own_answers(production, PROMPT)
    assert_own_answers(staging, STAGING_PROMPT)
    billed_once_each(url, production)


DAYS = [f"2026-11-0{d}" for d in range(1, 4)]
DRIVER = """
import datetime as dt, sys
from batchpipe.defs.resources import BatchpipeResource
from batchpipe.errors import BatchpipeError
from batchpipe.loader import load_pipelines
from batchpipe.runs import run_partition

pf = next(p for p in load_pipelines() if p.pipeline.name == "product_descriptions")
resource = BatchpipeResource(poll_seconds=0.1, wait=True)
for day in sys.argv[1:]:
    for attempt in range(12):
        try:
            run_partition(pf, dt.date.fromisoformat(day), resource)
            print(day, "ok after", attempt, "failed run(s)", flush=True)
            break
        except BatchpipeError as err:
            print(day, "failed:", err.message.splitlines()[0], flush=True)
    else:
        sys.exit(f"{day} never succeeded")
"""


def test_two_installations_on_one_key_through_a_flaky_api(tmp_path: Path, private_emulator) -> None:
    """Three partitions each, at once, from production and staging on one key, through an
    API that answers 30% of calls 429/500/529 (and half the failed creates go through
    anyway). Each failed run is simply run again, as a person would. In the end every
    partition holds its own answers, each request was paid for once, no batch of one
    installation is loaded by the other, and nobody's batch was canceled."""
    url = private_emulator("--http-error-rate", "0.3", "--seed", "15", latency=0.1)
    production = installation(tmp_path / "production", url, batch=10)
    staging = installation(tmp_path / "staging", url, STAGING_PROMPT, batch=10)
    started = time.monotonic()
    drivers = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, *DAYS],
            env=place.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for place in (production, staging)
    ]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    print(f"{time.monotonic() - started:.0f} s", *outputs, sep="\n")
    assert [d.returncode for d in drivers] == [0, 0], outputs

    for place, prompt in ((production, PROMPT), (staging, STAGING_PROMPT)):
        for day in DAYS:
            assert_own_answers(place, prompt, day)
        billed_once_each(url, place)
    assert not production.batch_ids() & staging.batch_ids()
    # The path under test was taken: a failed create whose outcome was looked up found the
    # other installation's batch among its candidates, and left it alone, whether proven
    # foreign by its results or released once its own was found (which comes first
    # depends on the interleaving of the two installations, so either counts).
    crossed = [
        verdict
        for mine, theirs in ((production, staging), (staging, production))
        for (batch_id, verdict) in mine.read(
            "SELECT batch_id, verdict FROM batchpipe_candidates WHERE verdict IS NOT NULL"
        )
        if batch_id in theirs.batch_ids()
    ]
    assert crossed and set(crossed) <= {"foreign", "released"}, crossed
    batches = upstream(url)
    assert all(b.request_counts.canceled == 0 for b in batches)
    # Every batch upstream is one installation's, and none was lost track of.
    assert {b.id for b in batches} == production.batch_ids() | staging.batch_ids()
