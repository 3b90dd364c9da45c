"""Work split across both cores: a forked child does the second half, this process the first.

Answering a big batch is pure Python work that one core cannot do fast enough for a
pipeline benchmark (a million requests), and threads would share one GIL. A fork shares
the parent's memory as it is (parsed requests included) with nothing to send, and the
child only sends its results back through a pipe. It must touch nothing shared: no
files, no locks (another thread may have held one when it was forked), no prompt cache.

If the child fails for any reason, the parent does the child's half itself, so forking
can only change how fast the answer comes, never what it is.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Callable, Sequence
from typing import TypeVar

AVAILABLE = hasattr(os, "fork")  # not on Windows: there everything runs in one process
T = TypeVar("T")
S = TypeVar("S", bound=Sequence)  # type: ignore[type-arg]


def _child(work: Callable[[S], T], part: S, write_fd: int) -> None:
    """Run in the forked child: do `part`, send the pickled result, and exit without
    running any of the parent's cleanup (atexit, open files, the server's sockets)."""
    status = 1
    try:
        gc.freeze()  # a collection would touch, and so copy, every page of the parent
        os.closerange(3, write_fd)  # e.g. the listening socket, so a restart can bind
        data = pickle.dumps(work(part), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        os._exit(status)


def in_two(
    work: Callable[[S], T],
    items: S,
    *,
    child_share: float = 0.5,
    meanwhile: Callable[[T], object] = lambda first: None,
) -> tuple[T, T]:
    """(work(first part), work(second part)), the second part done in a forked child,
    and `meanwhile(first result)` run here while the child still works. `child_share`
    of the items go to the child, more than half when the parent has more to do after."""
    middle = len(items) - round(len(items) * child_share)
    first_part, second_part = items[:middle], items[middle:]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(work, second_part, write_fd)
    os.close(write_fd)
    try:
        first = work(first_part)
        meanwhile(first)
    finally:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    if status == 0 and data:
        return first, pickle.loads(data)
    return first, work(second_part)
