"""Crash-safe file writing: write to a temporary name in the same folder, then rename.

A reader (or a process restarted after ``kill -9``) therefore sees either the old file
or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, suffix: str | None = None, keep_previous: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary name keeps ``path``'s suffix (or ``suffix``) so that libraries which
    pick a format from the extension (PIL, safetensors, ONNX) still work. On success the
    file is fsynced, renamed onto ``path`` and the folder fsynced, so the new file
    survives a crash once this returns. On an exception the temporary file is removed
    and ``path`` is left untouched.

    ``keep_previous``: a path in the same folder; the file that ``path`` held (if any) is
    renamed there once the new file is complete and synced, just before the new file
    takes its place. A crash leaves the old and new files complete under these two names,
    or, between the two renames, only the old one under ``keep_previous``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path, suffix if suffix is not None else path.suffix)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of ``obj``'s canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX); a no-op where folders cannot be fsynced."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp_file(path: Path, suffix: str) -> Path:
    """Create an empty ``.<name>.tmp.<random><suffix>`` beside ``path`` and return its path."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.tmp.{secrets.token_hex(4)}{suffix}"
        try:
            # Mode 0o666 lets the kernel apply the umask: the file gets the permissions of a
            # plain open(), not mkstemp's owner-only 0600, without reading (that is, setting)
            # the process-wide umask.
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")
