"""The manifests of a target store: one JSON line per finished target, one file per writer process.

Each writer appends to its own file (``manifest/<config_hash>/<writer>.jsonl``) and never
reopens another's, so concurrent writers cannot clobber each other, and a line torn by
``kill -9`` can only be a file's last one; :class:`ManifestReader` ignores it (that target
counts as unfinished and is recomputed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.core.files import fsync_dir

#: Manifest record schema version (the ``"v"`` field of every line).
RECORD_VERSION = 1


class ManifestReader:
    """Reads the JSON-lines manifests of one config, incrementally.

    Only complete lines (ending in a newline) are consumed, so a line a live writer is
    still appending is picked up by a later :meth:`read_new`. A complete line that does not
    parse, and a final line without its newline in the file of a dead writer, are counted
    in ``torn_lines`` (and per file in ``torn_files``) and ignored.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}
        self.torn_lines = 0
        self.torn_files: dict[Path, int] = {}

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call (all records on the first call)."""
        records: list[dict[str, Any]] = []
        if not self.folder.is_dir():
            return records
        self.torn_lines = 0
        self.torn_files = {}
        for path in sorted(self.folder.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            before = self.torn_lines
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # An unterminated tail: a live writer mid-line, or a writer killed mid-line.
                self.torn_lines += 1
            for raw in data[:end].splitlines():
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    self.torn_lines += 1
                    continue
                if isinstance(record, dict) and "key" in record:
                    records.append(record)
                else:
                    self.torn_lines += 1
            self._offsets[path] = offset + end
            if self.torn_lines > before:
                self.torn_files[path] = self.torn_lines - before
        return records


class ManifestWriter:
    """Appends records to this process's own manifest file (created on the first append).

    Each line is written, flushed and fsynced before :meth:`append` returns.
    """

    def __init__(self, folder: Path, *, writer_name: str) -> None:
        self.path = folder / f"{writer_name}.jsonl"
        self._handle = None

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # "x": a fresh name per process; never append to another writer's file.
            self._handle = open(self.path, "x", encoding="utf-8")
            fsync_dir(self.path.parent)
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
