"""The console side of every command: one ``error:`` line and an exit code, warnings, progress bars.

This package is the only place that prints for the user, ends the process or changes
process-wide settings; the library raises typed errors (:mod:`distill.core.errors`) and
reports progress through callbacks.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from PIL import Image
from tqdm import tqdm

from distill.core.errors import DistillError
from distill.core.imageio import DEFAULT_MAX_PIXELS
from distill.objective.lossnet import is_random_weights


def fail(message: str, *, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit: the user-facing end of every expected failure."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """Call ``main`` and exit with its code; the library's errors (and ``expected``) become one ``error:`` line (exit 2).

    Warnings print as one ``warning:`` line, without a source excerpt; Ctrl-C exits 130.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            code = main()
        except (DistillError, FileNotFoundError, *expected) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", code=130)
    raise SystemExit(code or 0)


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
