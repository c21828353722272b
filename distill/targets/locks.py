"""Advisory locks, one file per target, that keep overlapping writers off the same target."""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: locking is a no-op there
    fcntl = None


class KeyLocks:
    """Non-blocking advisory locks, one file per target (``fcntl.flock``; released by the OS if we die).

    Without ``fcntl`` (Windows) locking is a no-op: run disjoint shards there.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: dict[str, int] = {}

    def acquire(self, name: str) -> bool:
        if fcntl is None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[name] = fd
        return True

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)
