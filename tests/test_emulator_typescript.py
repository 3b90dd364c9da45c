"""The official TypeScript SDK, unmodified, against the emulator: create, poll, results, list.

`npm ci` installs the pinned SDK from tests/ts/package-lock.json the first time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TS = Path(__file__).resolve().parent / "ts"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not installed here, so the TypeScript SDK cannot run")
    if not (TS / "node_modules" / "@anthropic-ai" / "sdk").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TS,
            check=True,
            timeout=300,
        )
    return node


def test_typescript_sdk_round_trip(node: str, emulator_url: str) -> None:
    run = subprocess.run(
        [node, "batch_roundtrip.mjs", emulator_url],
        cwd=TS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == "ended"
    assert summary["counts"]["succeeded"] == 3
    assert summary["results"] == {
        "ts-a": {"type": "succeeded", "text": "Emulated reply to: Say alpha"},
        "ts-b": {"type": "succeeded", "text": "Emulated reply to: Say bravo"},
        "ts-c": {"type": "succeeded", "text": "Emulated reply to: Say charlie"},
    }
    assert summary["listed"][0] == summary["id"]
