"""A batch's lines answered by forked children, which also write its results file.

One core answers some 150,000 usual lines a second, and writing them out costs more; a
pipeline benchmark needs both cores. The children share nothing with each other or
with the parent but files, so the work is cut in two rounds of tasks that each child
takes while there are any left (forked.run_all): first chunks of lines, each answered
into a part file of its own, its result lines grouped by the first hex digit of the
sha1 the results file is sorted by (their digests kept aside), plus a file of its
ledger lines; then those groups, each sorted and written at its known place in the
results file, while the parent copies the ledger parts into the ledger. The parent
only adds the sizes up and ends the batch, so it keeps serving HTTP meanwhile.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Protocol

from batchpipe.emulator import forked

BUCKETS = 16  # by the first hex digit of a line's sort key
KEY = 20  # bytes of a sort key: a sha1 digest
CHUNK = 4_000  # lines a child answers as one task
PWRITEV = hasattr(os, "pwritev")
try:
    IOV_MAX = os.sysconf("SC_IOV_MAX")  # pieces one pwritev takes
except (AttributeError, ValueError, OSError):
    IOV_MAX = 16  # the least POSIX allows


class Answers(Protocol):
    """Answered lines, as lifecycle._Answers holds them."""

    custom_ids: list[str]
    kinds: list[str]
    texts: list[str]
    bills: list[str]


@dataclass(frozen=True)
class Part:
    """One part file: where each group of lines starts in it (BUCKETS + 1 offsets) and
    the sort keys of each group's lines, in their order; the kinds of its lines; its
    ledger lines' file, if any."""

    path: Path
    offsets: list[int]
    keys: list[bytes]  # a group's sort keys (KEY bytes each) one after the other
    kinds: dict[str, int]
    bills: Path | None

    def size(self, bucket: int) -> int:
        return self.offsets[bucket + 1] - self.offsets[bucket]


def _write_part(path: Path, custom_ids: Sequence[str], texts: Sequence[str]) -> Part:
    groups: list[list[str]] = [[] for _ in range(BUCKETS)]
    keys: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    sha1 = hashlib.sha1  # the results file's order (lifecycle._result_order)
    for custom_id, text in zip(custom_ids, texts, strict=True):
        key = sha1(custom_id.encode()).digest()
        bucket = key[0] >> 4
        groups[bucket].append(text)
        keys[bucket].append(key)
    offsets = [0]
    with path.open("wb") as out:
        for group in groups:
            size = 0
            if group:
                size += out.write("\n".join(group).encode("utf-8"))
                size += out.write(b"\n")
            offsets.append(offsets[-1] + size)
    return Part(path, offsets, [b"".join(group) for group in keys], {}, None)


def _answer_part(
    answer: Callable[[range], Answers], chunk: range, task: int, work_dir: Path
) -> Part:
    """A child's first-round task: answer `chunk`, write its lines and ledger lines."""
    answers = answer(chunk)
    part = _write_part(work_dir / f"lines-{task}", answers.custom_ids, answers.texts)
    bills = None
    if answers.bills:
        bills = work_dir / f"bills-{task}"
        with bills.open("wb") as out:
            out.write("\n".join(answers.bills).encode("utf-8"))
            out.write(b"\n")
    return Part(part.path, part.offsets, part.keys, dict(Counter(answers.kinds)), bills)


def _merge_bucket(parts: Sequence[Part], bucket: int, offset: int, results: Path) -> int:
    """A child's second-round task: one group of every part, sorted, written in place.
    The part files are mapped, not read, and the lines written straight from them, so
    no byte is copied in this process (a copy is a page fault every 4 KiB)."""
    lines: list[tuple[bytes, memoryview]] = []
    maps: list[mmap.mmap] = []
    try:
        for part in parts:
            start, end = part.offsets[bucket], part.offsets[bucket + 1]
            if end == start:
                continue
            with part.path.open("rb") as handle:
                maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
            view, find, keys = memoryview(maps[-1]), maps[-1].find, part.keys[bucket]
            for at in range(0, len(keys), KEY):  # each key has its line, in the same order
                stop = find(b"\n", start) + 1
                lines.append((keys[at : at + KEY], view[start:stop]))
                start = stop
            view.release()  # (its slices keep the map exported until dropped)
        lines.sort(key=itemgetter(0))  # no two lines share a key
        return _write_at(results, [line for _, line in lines], offset)
    finally:
        lines.clear()  # the slices first, or the maps cannot close
        for mapped in maps:
            mapped.close()


def _write_at(path: Path, pieces: list[memoryview], offset: int) -> int:
    """Write `pieces` one after the other into `path` from `offset`; the bytes written."""
    fd = os.open(path, os.O_WRONLY)
    try:
        written = 0
        for start in range(0, len(pieces), IOV_MAX):
            batch = pieces[start : start + IOV_MAX]
            size = sum(map(len, batch))
            done = os.pwritev(fd, batch, offset + written) if PWRITEV else 0
            if done < size:  # rare (or no pwritev): the rest in one piece
                rest = b"".join(batch)[done:]
                while rest:
                    count = os.pwrite(fd, rest, offset + written + done)
                    rest, done = rest[count:], done + count
            written += size
        return written
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Outcome:
    """What the children did: the kinds of the lines they answered."""

    kinds: dict[str, int]


def answer(
    answer: Callable[[range], Answers],
    positions: range,
    extra: Sequence[tuple[str, str]],
    work_dir: Path,
    results: Path,
    bill: Callable[[list[Path]], object],
) -> Outcome:
    """Answer `positions` with `answer` in forked children and write the results file
    at `results` (atomically): those lines and the `extra` ones, (custom_id, text) the
    parent made, all in the results order. `bill` is given the ledger lines' files, in
    processing order, and runs in a thread while the second round writes the results.
    `work_dir` is for the part files."""
    work_dir.mkdir(parents=True, exist_ok=True)
    chunks = [positions[start : start + CHUNK] for start in range(0, len(positions), CHUNK)]
    parts = forked.run_all(
        lambda task: _answer_part(answer, chunks[task], task, work_dir), len(chunks)
    )
    if extra:
        ids, texts = zip(*extra, strict=True)
        parts.append(_write_part(work_dir / "lines-extra", ids, texts))
    starts = [0]
    for bucket in range(BUCKETS):
        starts.append(starts[-1] + sum(part.size(bucket) for part in parts))
    temporary = work_dir / "results"
    with temporary.open("wb") as handle:
        handle.truncate(starts[-1])
    billing = _Billing(bill, [part.bills for part in parts if part.bills is not None])
    try:
        written = forked.run_all(
            lambda bucket: _merge_bucket(parts, bucket, starts[bucket], temporary), BUCKETS
        )
    finally:
        billing.join()
    if sum(written) != starts[-1]:
        raise OSError(f"results of {len(positions)} lines written short")
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temporary, 0o644)
    os.replace(temporary, results)
    kinds: Counter[str] = Counter()
    for part in parts:
        kinds.update(part.kinds)
    return Outcome(dict(kinds))


class _Billing(threading.Thread):
    """bill(paths) in a thread of its own; join() raises what it raised."""

    def __init__(self, bill: Callable[[list[Path]], object], paths: list[Path]) -> None:
        super().__init__(name="emulator billing", daemon=True)
        self.bill, self.paths, self.error = bill, paths, None
        self.start()

    def run(self) -> None:
        try:
            self.bill(self.paths)
        except BaseException as error:  # handed to the thread that joins
            self.error = error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error
