"""Work split across both cores by forked children.

Answering a big batch is pure Python work that one core cannot do fast enough for a
pipeline benchmark (a million requests), and threads would share one GIL. A fork shares
the parent's memory as it is (parsed requests included) with nothing to send, and a
child only sends its results back through a pipe. It must touch nothing shared: no
files but its own, no locks (another thread may have held one when it was forked), no
prompt cache.

If a child fails for any reason, the parent does the child's part itself, so forking
can only change how fast the answer comes, never what it is. Children die with the
emulator: each asks the kernel for SIGKILL when the thread that forked it ends, and
`kill_all` (the server's exit) ends any still running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import pickle
import signal
import sys
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

AVAILABLE = hasattr(os, "fork")  # not on Windows: there everything runs in one process
PROCESSES = max(1, min(8, os.cpu_count() or 1))  # children run_all forks: one a core
MAX_TASKS = 16_000  # task numbers all fit in a pipe's buffer (4 bytes each, 64 KiB)
PR_SET_PDEATHSIG = 1
T = TypeVar("T")
S = TypeVar("S", bound=Sequence)  # type: ignore[type-arg]

_LIVE: set[int] = set()  # children forked and not yet waited for
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _become_child(keep: Collection[int]) -> None:
    """What every child does first: die with its parent (the parent's SIGTERM handler,
    inherited, would keep it alive), close every inherited descriptor but `keep` (the
    listening socket among them, so a restarted emulator can bind it again), and stop
    the collector, which would touch, and so copy, every page of the parent."""
    parent = os.getppid()
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to act on
    gc.freeze()
    gc.disable()
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    with contextlib.suppress(OSError, ValueError):
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    return os.sysconf("SC_OPEN_MAX")


def _fork(keep: Collection[int]) -> int:
    """fork(), the child made a clean one (see _become_child); 0 in the child."""
    pid = os.fork()
    if pid == 0:
        try:
            _become_child(keep)
        except BaseException:
            os._exit(1)
    else:
        _LIVE.add(pid)
    return pid


def _reap(pid: int) -> int:
    """The child's exit status, once it has exited."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by kill_all meanwhile
        status = 1
    _LIVE.discard(pid)
    return status


def kill_all() -> None:
    """End every child still working: the emulator is exiting and nobody will read them."""
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
        _LIVE.discard(pid)


atexit.register(kill_all)  # an emulator used in process (tests) exits this way


def _child(work: Callable[[S], T], part: S, write_fd: int) -> None:
    """Run in the forked child: do `part`, send the pickled result, and exit without
    running any of the parent's cleanup (atexit, open files, the server's sockets)."""
    status = 1
    try:
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
    pid = _fork(keep=(write_fd,))
    if pid == 0:
        _child(work, second_part, write_fd)
    os.close(write_fd)
    try:
        first = work(first_part)
        meanwhile(first)
    finally:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        status = _reap(pid)
    if status == 0 and data:
        return first, pickle.loads(data)
    return first, work(second_part)


def _worker(work: Callable[[int], T], tasks_fd: int, write_fd: int) -> None:
    """Run in a forked child of `run_all`: take task numbers off the shared pipe until
    it is empty, then send back {task: result} for the tasks done."""
    status = 1
    try:
        done: dict[int, T] = {}
        while len(token := os.read(tasks_fd, 4)) == 4:  # 4-byte reads of a pipe are atomic
            task = int.from_bytes(token, "little")
            with contextlib.suppress(Exception):  # left to the parent, which will raise it
                done[task] = work(task)
        data = pickle.dumps(done, protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        os._exit(status)


def run_all(work: Callable[[int], T], count: int, processes: int = PROCESSES) -> list[T]:
    """[work(0), ..., work(count - 1)], done by `processes` forked children that each
    take the next task when done with one (a core that others are using just does
    fewer), so `work` must be safe to run in a child (see the module docstring) and to
    run again: a task a child did not report is done here, in the parent."""
    if count > MAX_TASKS:
        raise ValueError(f"at most {MAX_TASKS} tasks, not {count}")
    tasks_fd, fill_fd = os.pipe()
    os.write(fill_fd, b"".join(task.to_bytes(4, "little") for task in range(count)))
    os.close(fill_fd)  # so a child that empties the pipe reads its end
    children = []
    for _ in range(processes):
        read_fd, write_fd = os.pipe()
        try:
            pid = _fork(keep=(tasks_fd, write_fd))
        except OSError:  # no more processes to be had: fewer children, or none
            os.close(read_fd)
            os.close(write_fd)
            break
        if pid == 0:
            _worker(work, tasks_fd, write_fd)
        os.close(write_fd)
        children.append((pid, read_fd))
    os.close(tasks_fd)
    results: dict[int, T] = {}
    for pid, read_fd in children:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        if _reap(pid) == 0 and data:
            results.update(pickle.loads(data))
    return [results[task] if task in results else work(task) for task in range(count)]
