"""Disk used under a few directories, at the end of a run and at its peak.

A partition's state (batchpipe's results files, the emulator's stored batches) can
grow while a run goes and shrink before it ends, so the end alone could hide the
high-water mark. A thread in the benchmark's process samples every `interval`
seconds while the measured process runs; the sizes are blocks allocated (what `du`
counts), not apparent sizes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType


def used_bytes(root: Path) -> int:
    """Bytes allocated to the files under `root`, or to `root` if it is a file (0 when
    it does not exist)."""
    if root.is_file():
        return root.stat().st_blocks * 512
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed since the listing
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


class Sampler:
    """`with Sampler({"state": path, ...}) as disk:` then `disk.peak` and `disk.end`
    (bytes by name) once the block has run."""

    def __init__(self, roots: dict[str, Path], interval: float = 1.0) -> None:
        self.roots = roots
        self.interval = interval
        self.peak = {name: 0 for name in roots}
        self.end: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict[str, int]:
        sizes = {name: used_bytes(root) for name, root in self.roots.items()}
        for name, size in sizes.items():
            self.peak[name] = max(self.peak[name], size)
        return sizes

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.end = self._sample()
