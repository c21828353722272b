"""Advisory locks, one file per target, that keep overlapping writers off the same target.

A lock file exists only while its target is being computed: the holder deletes it before
letting go, so a finished run leaves no lock files (nor their empty folders) in the store.
Deleting a lock file that another process may be opening is safe because a lock counts
only when, once held, its file is still the one at the path; a process that locked a file
just deleted by the previous holder sees that and tries again on a new file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: locking is a no-op there
    fcntl = None

#: Tries to lock a lock file that keeps being replaced under us (each replacement means
#: another writer held and released the target meanwhile) before reporting it busy.
_ATTEMPTS = 10


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
        path = self.folder / f"{name}.lock"
        for _ in range(_ATTEMPTS):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # another writer removed the (empty) folder just now
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            if _is_current(fd, path):
                self._held[name] = fd
                return True
            os.close(fd)  # the previous holder deleted this file after we opened it: lock the new one
        return False

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{name}.lock").unlink()  # while still holding the lock
            os.close(fd)  # closing drops the flock

    def release_all(self) -> None:
        """Release every lock held, then remove the lock folder if no other writer holds a lock in it."""
        for name in list(self._held):
            self.release(name)
        with contextlib.suppress(OSError):  # not empty: another writer holds a lock there
            self.folder.rmdir()


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not deleted or replaced since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
