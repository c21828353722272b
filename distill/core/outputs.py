"""Output paths checked before any work: writable, a file where a file is meant, never an input.

Every command checks its outputs with these functions before it loads a network or reads
a photo, so a bad output path costs a second, not the whole run, and a user's file is
never overwritten: an output that is one of the inputs, or a folder that holds someone
else's files, is refused with one :class:`OutputPathError` line that names the option,
the path and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from distill.core.errors import ConfigError

#: ``(option or label, path)`` of each input a command reads, e.g. ``("--content", "photo.jpg")``.
Inputs = Iterable[tuple[str, "str | os.PathLike[str]"]]


class OutputPathError(ConfigError):
    """An output path that cannot be written, or must not be (it is an input, or holds other files)."""


def check_output_file(
    path: str | os.PathLike[str],
    *,
    option: str,
    inputs: Inputs = (),
    suffixes: Sequence[str] | None = None,
) -> Path:
    """``path`` as a :class:`Path` if a file can be written there; :class:`OutputPathError` otherwise.

    Refused: an existing folder, a suffix outside ``suffixes`` (when given; compared in
    lower case), the same file as one of ``inputs``, a path below a file, and a folder
    the process may not write in. Missing parent folders are fine (writers create them)
    when the nearest existing one is writable.
    """
    path = Path(path)
    if path.is_dir():
        example = f", e.g. {path / ('result' + suffixes[0])}" if suffixes else " inside it"
        raise OutputPathError(f"{option} {path}: is a folder; give a file name{example}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{option} {path}: unknown suffix {path.suffix or '(none)'!r}; use one of {', '.join(sorted(suffixes))}"
        )
    _refuse_inputs(path, option=option, inputs=inputs)
    _check_writable_parent(path, option=option)
    return path


def check_output_folder(
    path: str | os.PathLike[str],
    *,
    option: str,
    inputs: Inputs = (),
    ours: Callable[[Path], bool] | None = None,
    what: str = "output",
) -> Path:
    """``path`` as a :class:`Path` if a command may write its ``what`` folder there; :class:`OutputPathError` otherwise.

    Refused: an existing file, the same folder as one of ``inputs`` (a folder or a file's
    folder given as an input), a folder the process may not write in and, when ``ours``
    is given, a non-empty folder for which ``ours(path)`` is false (someone else's files
    would be overwritten or mixed in).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path}: is a file, not a folder; choose a new or empty folder")
    for label, source in inputs:
        if Path(source).is_dir() and _same(path, Path(source)):
            raise OutputPathError(
                f"{option} {path}: is the input folder ({label}); choose another folder, inputs are never overwritten"
            )
    if ours is not None and path.is_dir() and any(path.iterdir()) and not ours(path):
        raise OutputPathError(
            f"{option} {path}: folder is not empty and is not a {what} folder of this toolkit; "
            "choose an empty or new folder (nothing in it was changed)"
        )
    if path.is_dir():
        _check_can_write_in(path, option=option, shown=path)
    else:
        _check_writable_parent(path, option=option)
    return path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name the same file (links and relative paths resolved; either may not exist)."""
    return _same(Path(a), Path(b))


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _refuse_inputs(path: Path, *, option: str, inputs: Inputs) -> None:
    for label, source in inputs:
        if _same(path, Path(source)):
            raise OutputPathError(
                f"{option} {path}: is the same file as {label}; choose another output name, inputs are never overwritten"
            )


def _check_writable_parent(path: Path, *, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder this process may create files in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{option} {path}: {ancestor} is a file, not a folder; choose another path")
    _check_can_write_in(ancestor, option=option, shown=path)


def _check_can_write_in(folder: Path, *, option: str, shown: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        where = "" if folder == shown else f" in {folder}"
        raise OutputPathError(
            f"{option} {shown}: cannot write{where} (permission denied); choose a folder you can write to"
        )
