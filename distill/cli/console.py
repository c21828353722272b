"""The console side of every command: one ``error:`` line and an exit code, warnings, progress bars.

This package is the only place that prints for the user, ends the process or changes
process-wide settings; the library raises typed errors (:mod:`distill.core.errors`) and
reports progress through callbacks.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from PIL import Image
from tqdm import tqdm

from distill.core.errors import DistillError, NumericalError, UnavailableError, one_line
from distill.core.imageio import DEFAULT_MAX_PIXELS
from distill.objective.lossnet import is_random_weights

#: Exit codes of every command: done, a failure while working, bad input found before any work.
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130
#: Typed errors that are failures of the machine or the numbers, not of the user's input.
FAILURES = (UnavailableError, NumericalError)
#: OSErrors that mean a path the user gave is wrong (exit 2); any other (a full disk, an I/O error) is a failure (exit 1).
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ENAMETOOLONG, errno.ELOOP}
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
#: What to do about an OSError, by errno.
_OS_ADVICE = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "give a file name, not a folder",
    errno.EEXIST: "something is in the way; choose another path",
    errno.EACCES: "choose a path you may write to, or fix its permissions",
    errno.EPERM: "choose another path",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.ENAMETOOLONG: "choose a shorter path",
}


class _Debug:
    """Whether the running command was given ``--debug`` (set while its options are parsed)."""

    enabled = False


class CommandParser(argparse.ArgumentParser):
    """The options of a command: ``--debug`` for every command, and a bad option as one ``error:`` line (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action=_DebugAction, help="on an error, show the full traceback (for reporting a bug)")

    def parse_known_args(self, args=None, namespace=None):
        _Debug.enabled = False  # each command's own options decide (tests run commands in-process)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def debugging() -> bool:
    """Whether the running command was given ``--debug``: errors then show their traceback."""
    return _Debug.enabled


class _DebugAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        _Debug.enabled = True


def fail(message: str, *, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one ``error:`` line and exit: the user-facing end of every expected failure."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """Call ``main`` and exit with its code: the one error policy of every command.

    Bad input (the library's typed errors, ``expected``, an OSError about a path the user
    gave) is one ``error:`` line and exit 2; a failure while working (no network, NaN, a
    full disk, out of memory) one line and exit 1; anything else (a bug) one line that asks
    for ``--debug``, exit 1. With ``--debug`` every error shows its traceback instead.
    Warnings print as one ``warning:`` line, without a source excerpt; Ctrl-C exits 130.
    """
    _Debug.enabled = False
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            code = main()
        except SystemExit:
            raise
        except KeyboardInterrupt:
            fail("interrupted", code=EXIT_INTERRUPTED)
        except BaseException as exc:  # noqa: BLE001 - every error ends as one line (or, with --debug, a traceback)
            if _Debug.enabled:
                raise
            message, code = describe_error(exc, expected=expected)
            fail(message, code=code)
    raise SystemExit(code or EXIT_OK)


def describe_error(exc: BaseException, *, expected: tuple[type[BaseException], ...] = ()) -> tuple[str, int]:
    """The one line and the exit code for an error that ended a command (see :func:`run_main`)."""
    if isinstance(exc, FAILURES):
        return one_line(exc), EXIT_FAILURE
    if isinstance(exc, (DistillError, *expected)):
        return one_line(exc), EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        bad_path = exc.errno in PATH_ERRNOS or isinstance(exc, PATH_ERRORS)
        return describe_os_error(exc), EXIT_BAD_INPUT if bad_path else EXIT_FAILURE
    if isinstance(exc, MemoryError) or _is_out_of_memory(exc):
        return (
            f"out of memory ({one_line(exc, first_line=True, limit=200)}); use a smaller size, batch or tile",
            EXIT_FAILURE,
        )
    return (
        f"unexpected {type(exc).__name__}: {one_line(exc, first_line=True, limit=300)}; "
        "rerun with --debug for the traceback and report it",
        EXIT_FAILURE,
    )


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line: the file(s), what went wrong and what to do."""
    names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    reason = exc.strerror or one_line(exc, limit=200)
    advice = _OS_ADVICE.get(exc.errno)
    return f"{names + ': ' if names else ''}{reason}" + (f"; {advice}" if advice else "")


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures: ``torch.OutOfMemoryError`` (CUDA), or a RuntimeError from the CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


@contextlib.contextmanager
def process_settings() -> Iterator[None]:
    """The process-wide settings every command runs under, restored on exit (tests run commands in-process).

    PIL's decompression-bomb guard is set to :data:`DEFAULT_MAX_PIXELS` and its warning
    silenced: :func:`distill.core.imageio.load_image` checks that limit itself, with a
    message that names the file.
    """
    previous_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit


def warn_if_random(weights_description: str) -> None:
    """A loud line on stderr when the loss network is not pretrained."""
    if is_random_weights(weights_description):
        print(
            "WARNING: the loss network has RANDOM weights (offline mode): a seeded texture model, not learned "
            "features. Results are stylised, but not what a pretrained VGG-19 gives; use --weights pretrained "
            "or --weights PATH for that.",
            file=sys.stderr,
        )


def write_line(line: str, *, file: Any = None) -> None:
    """A line on stderr (or ``file``) that does not tear a progress bar."""
    file = sys.stderr if file is None else file
    tqdm.write(line, file=file)
    file.flush()


class ProgressBar:
    """A tqdm bar on stderr for ``(done, total)`` progress callbacks (pass ``bar.update_to``).

    It appears on the first update, so input errors print before any bar. ``done``
    dropping or ``total`` changing starts a new round (the tiles of the next image);
    with ``leave=False`` a finished round's bar disappears.
    """

    def __init__(self, *, desc: str, unit: str, leave: bool = True, disable: bool = False) -> None:
        self.desc, self.unit, self.leave, self.disable = desc, unit, leave, disable
        self.bar: Any = None

    def update_to(self, done: int, total: int, *, postfix: str | None = None) -> None:
        """Show ``done`` of ``total``, and ``postfix`` after the counts when given."""
        if self.disable:
            return
        if self.bar is not None and (self.bar.total != total or done < self.bar.n):
            self.close()
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, leave=self.leave, dynamic_ncols=True)
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(done - self.bar.n)
        if not self.leave and done == total:
            self.close()

    def set_postfix_str(self, text: str) -> None:
        """Replace the text after the counts (shown now), e.g. while one long step runs."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
