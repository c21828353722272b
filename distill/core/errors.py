"""The library's error types: one small hierarchy that the command line turns into exit codes.

Every class keeps the built-in base its errors had before the hierarchy existed
(``ValueError`` for bad input, ``RuntimeError`` for failures of the machine or the
numbers), so ``except ValueError`` in callers keeps working. The library raises these;
only the command-line layer prints them and exits.
"""

from __future__ import annotations

import re


class DistillError(Exception):
    """Base of every error this toolkit raises on purpose; its message is one line for a user."""


class BadImageError(DistillError, ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


class ConfigError(DistillError, ValueError):
    """A setting is wrong: an unknown key, a value of the wrong type or out of range."""


class DeviceError(ConfigError):
    """The requested device does not exist on this machine (e.g. CUDA without a GPU)."""


class StoreError(DistillError, ValueError):
    """The path is not a target store, a config is unknown or ambiguous, or the store is inconsistent."""


class ModelFileError(DistillError, ValueError):
    """A file is not a loadable model (student checkpoint or export); the message names the file."""


class UnavailableError(DistillError, RuntimeError):
    """Something the run needs cannot be fetched on this machine (typically: no internet)."""


class NumericalError(DistillError, RuntimeError):
    """A computation produced NaN or Inf."""


def one_line(error: BaseException, *, limit: int | None = None, first_line: bool = False) -> str:
    """``error``'s message on one line, for messages that quote a lower library's error.

    ``first_line``: keep only the first non-blank line (tracebacks and hub errors put
    the useful part first); otherwise every run of white space becomes one space.
    ``limit``: at most this many characters, then " ...".
    """
    text = str(error)
    if first_line:
        lines = text.strip().splitlines()
        text = lines[0] if lines else ""
    else:
        text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + " ..."
    return text


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use `torch\.serialization|$)", re.S)


def load_error_reason(error: BaseException, *, limit: int = 300, first_line: bool = False) -> str:
    """Why ``torch.load`` (or a loader built on it) refused a file, on one line, without torch's advice.

    A ``weights_only`` refusal says the file "can still be loaded" by re-running with
    ``weights_only=False``: advice to run code from a model file, which this toolkit
    never gives. Only the refusal's reason is kept (e.g. "Unsupported global: GLOBAL
    builtins.print ..."), as "pickled Python objects, not only tensors (...)". Any other
    error is :func:`one_line` of it (``first_line`` and ``limit`` as there).
    """
    text = _ANSI_ESCAPE.sub("", str(error))
    if "weights_only" in text or "WeightsUnpickler" in text:
        match = _WEIGHTS_ONLY_REASON.search(text)
        detail = " ".join(match.group(1).split()) if match else ""
        detail = detail[:limit] + " ..." if len(detail) > limit else detail
        return "pickled Python objects, not only tensors" + (f" ({detail})" if detail else "")
    return one_line(Exception(text), first_line=first_line, limit=limit)
