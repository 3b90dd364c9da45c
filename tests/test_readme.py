"""README stays true to the code: every command is documented, the example file is real."""

from __future__ import annotations

from pathlib import Path

from batchpipe.cli import _parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_every_command_is_in_the_readme() -> None:
    commands = _parser()._subparsers._group_actions[0].choices  # argparse keeps them here
    for command in commands:
        assert f"batchpipe {command}" in README, command


def test_the_readme_example_is_the_shipped_pipeline_file() -> None:
    shipped = (REPO / "pipelines" / "product_descriptions.yaml").read_text()
    assert shipped in README


def test_every_test_the_promises_name_exists() -> None:
    """The promises section names the tests that hold each promise: they must be there."""
    import re

    section = README.split("## What batchpipe promises", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:bad_pipelines/)?[\w*]+\.(?:py|yaml))`", section))
    assert len(named) >= 8
    for name in named:
        assert list((REPO / "tests").glob(name)), name
