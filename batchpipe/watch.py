"""`batchpipe status --watch`: every open partition's progress, until none is open.

A watcher runs beside the runs it watches, so it must never stand in their way: each
refresh opens the warehouse read-only, reads what it needs, and closes it before asking
the API; and it does not wait on a writer's lock (a waiting run records each poll). A
refresh that finds the file locked shows the last figures, says so, and tries again at
the next. The counts come live from the API when it answers (one list call per refresh
for several batches), else from the last poll a run recorded.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import anthropic

from batchpipe import batches, progress, state
from batchpipe.errors import BatchpipeError, WarehouseLocked

REFRESH_SECONDS = 5.0

Key = tuple[str, dt.date]


@dataclass(frozen=True)
class Seen:
    """A partition as one refresh read it from the warehouse."""

    watch: list[batches.Watch]  # the batches it waits on now
    recorded: progress.Recorded


def watch(
    names: list[str] | None,
    api: anthropic.Anthropic | None,
    shown: progress.Reporter,
    every: float = REFRESH_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Show every open partition of `names` (None: all) every `every` seconds until none
    is open; False when none was open to begin with. A partition that ends stays shown,
    with its final figures, until the watch ends."""
    waited_on: dict[Key, list[str]] = {}  # each partition shown: the batch ids it waited on
    last: dict[Key, progress.Snapshot] = {}
    while True:
        try:
            read = _read(names, list(waited_on))
        except WarehouseLocked:
            shown.note(_busy(last))
            for snap in last.values():
                shown.show(snap)
            sleep(every)
            continue
        shown.note("")
        if not read and not last:
            return False
        live = _poll(api, [w for seen in read.values() for w in seen.watch], shown)
        for key, seen in read.items():
            ids = [w.batch_id for w in seen.watch]
            ids += [i for i in waited_on.get(key, []) if i not in ids]
            waited_on[key] = ids
            counts = [c for i in ids if (c := live.get(i) or seen.recorded.counts_of(i))]
            last[key] = progress.snapshot(*key, counts, seen.recorded)
            shown.show(last[key])
        if not any(s.waiting for s in last.values()):
            return True
        sleep(every)


def _read(names: list[str] | None, shown: list[Key]) -> dict[Key, Seen]:
    """The open partitions, and those already shown (to show how they ended), as the
    warehouse has them; in one short read-only connection that never waits on a lock."""
    with state.connect(read_only=True, lock_wait=0) as con:
        keys = dict.fromkeys([*shown, *state.open_partitions(con, names)])
        return {
            key: Seen(batches.watching(con, *key), progress.recorded(con, *key)) for key in keys
        }


def _poll(
    api: anthropic.Anthropic | None, watch: list[batches.Watch], shown: progress.Reporter
) -> dict[str, progress.Counts]:
    """The watched batches as the API has them now, by id; none when there is no API to
    ask or it does not answer (the recorded counts stand in)."""
    if api is None or not watch:
        return {}
    try:
        seen = batches.retrieve_all(api, watch)
    except (anthropic.APIError, BatchpipeError) as err:
        shown.note(
            f"the Batches API did not answer ({type(err).__name__}): counts as last recorded"
        )
        return {}
    return {b.id: progress.polled(b) for b in seen if b is not None}


def _busy(last: dict[Key, progress.Snapshot]) -> str:
    taken = max((s.taken_at for s in last.values()), default=None)
    when = f"; figures as of {taken:%H:%M:%S} UTC" if taken else ""
    return f"the warehouse is being written (a run recording its poll){when}; trying again"
