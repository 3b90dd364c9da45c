"""The Files API's files: metadata and bytes kept under the state directory, with expiry
judged on the emulator's clock, and counters a test can read.

A pipeline that uploads media once and sends file ids must not upload twice, must not
send a file that has expired or was deleted, and must clean up what it no longer needs;
the referee shows that with `GET /_emulator/files` (see `FileStore.report`). Files
outlive a restart like batches do. Layout, under `state_dir/files/`:

    <id>.bin        the uploaded bytes (written first, so metadata never lacks them)
    <id>.json       FileRecord
    counters.json   {"uploads": n, "deletes": n, "bytes_uploaded": n}

An expired file is kept on disk (so the report can show it) but is gone for every API
use: retrieve and delete answer 404, list leaves it out, a message naming it fails.
`reads` (file sources resolved in messages, per file id) and `reads_without_beta` are
counted in memory since start: how often a pipeline's requests used its uploads.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchpipe.emulator.wire import atomic_write, atomic_write_with, rfc3339

COUNTERS = ("uploads", "deletes", "bytes_uploaded")


class FileRecord(BaseModel):
    """What the emulator remembers of an upload; `metadata` is its public JSON."""

    id: str
    seq: int
    filename: str
    mime_type: str
    size_bytes: int
    created_at: dt.datetime
    expires_at: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def metadata(self) -> dict[str, Any]:
        """BetaFileMetadata, every key present."""
        return {
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
            "created_at": rfc3339(self.created_at),
            "expires_at": None if self.expires_at is None else rfc3339(self.expires_at),
            "downloadable": False,
        }


class FileStore:
    """Uploaded files in memory (metadata) and on disk (both). Reads take no lock (a
    dict lookup is atomic), so answering a batch never waits on an upload."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, FileRecord] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.reads: collections.Counter[str] = collections.Counter()
        self.reads_without_beta = 0
        self._load()

    def _load(self) -> None:
        counters = self.dir / "counters.json"
        if counters.exists():
            self.counters |= json.loads(counters.read_text(encoding="utf-8"))
        for path in self.dir.glob("file_*.json"):
            record = FileRecord.model_validate_json(path.read_text(encoding="utf-8"))
            if self._bytes_path(record.id).exists():
                self._files[record.id] = record

    def _bytes_path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.bin"

    def _save_counters(self) -> None:
        atomic_write(self.dir / "counters.json", json.dumps(self.counters))

    def add(self, record: FileRecord, data: bytes) -> FileRecord:
        with self._lock:
            record = record.model_copy(update={"seq": self._next_seq()})
            atomic_write_with(self._bytes_path(record.id), lambda out: out.write(data))
            atomic_write(self.dir / f"{record.id}.json", record.model_dump_json(indent=1))
            self._files[record.id] = record
            self.counters["uploads"] += 1
            self.counters["bytes_uploaded"] += len(data)
            self._save_counters()
            return record

    def _next_seq(self) -> int:
        return max((record.seq for record in self._files.values()), default=0) + 1

    def find(self, file_id: str) -> FileRecord | None:
        """The file, expired or not; None if never uploaded or deleted."""
        return self._files.get(file_id)

    def live(self, file_id: str, now: dt.datetime) -> FileRecord | None:
        """The file if it can be used at `now`: uploaded, not deleted, not expired."""
        record = self._files.get(file_id)
        return None if record is None or record.expired(now) else record

    def read(self, record: FileRecord) -> bytes:
        return self._bytes_path(record.id).read_bytes()

    def note_read(self, file_id: str, with_beta: bool) -> None:
        self.reads[file_id] += 1
        if not with_beta:
            self.reads_without_beta += 1

    def delete(self, file_id: str) -> None:
        with self._lock:
            (self.dir / f"{file_id}.json").unlink(missing_ok=True)
            self._bytes_path(file_id).unlink(missing_ok=True)
            if self._files.pop(file_id, None) is not None:
                self.counters["deletes"] += 1
                self._save_counters()

    def newest_first(self, now: dt.datetime) -> list[FileRecord]:
        """The live files, newest first (the order of `GET /v1/files`)."""
        records = [r for r in self._files.values() if not r.expired(now)]
        return sorted(records, key=lambda record: record.seq, reverse=True)

    def reset(self) -> None:
        with self._lock:
            for path in self.dir.iterdir():
                path.unlink(missing_ok=True)
            self._files.clear()
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.reads.clear()
            self.reads_without_beta = 0

    def report(self, now: dt.datetime) -> dict[str, Any]:
        """`GET /_emulator/files`: the counters, then every kept file with its state."""
        files = sorted(self._files.values(), key=lambda record: record.seq)
        return self.counters | {
            "live": sum(not record.expired(now) for record in files),
            "expired": sum(record.expired(now) for record in files),
            "reads": sum(self.reads.values()),
            "reads_without_beta": self.reads_without_beta,
            "data": [
                record.metadata()
                | {
                    "state": "expired" if record.expired(now) else "live",
                    "reads": self.reads[record.id],
                }
                for record in files
            ],
        }
