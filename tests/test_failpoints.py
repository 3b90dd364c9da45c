"""BATCHPIPE_KILL_AT set to a name that no kill point has fails loudly, never silently."""

from __future__ import annotations

import pytest

from batchpipe.failpoints import POINTS, UnknownKillPoint, check_kill_at, kill_point

MESSAGE = (
    "BATCHPIPE_KILL_AT='after_craete' is not a kill point; known points: before_create, "
    "after_create, mid_download, mid_results_load, mid_enriched_write, after_conflict, "
    "after_upload"
)


def test_a_misspelt_point_raises_naming_the_variable_value_and_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCHPIPE_KILL_AT", "after_craete")
    with pytest.raises(UnknownKillPoint) as raised:
        check_kill_at()
    assert str(raised.value) == MESSAGE
    with pytest.raises(UnknownKillPoint, match="known points"):
        kill_point("before_create")


@pytest.mark.parametrize("value", [None, "", *POINTS])
def test_unset_empty_or_known_values_pass_the_check(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("BATCHPIPE_KILL_AT", raising=False)
    else:
        monkeypatch.setenv("BATCHPIPE_KILL_AT", value)
    check_kill_at()
    other = next(point for point in POINTS if point != value)
    kill_point(other)  # another point's name: no kill, no error
