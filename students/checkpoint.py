"""Single-file student checkpoints: a safetensors state_dict plus metadata.

Layout of the safetensors metadata (which is dict[str, str]):

* ``"distill.format"``: ``"1"``
* ``"distill.student"``: JSON of ``model.student_spec`` ({"name", "kwargs"})
* ``"distill.extra"``: JSON of caller-supplied extra metadata

The architecture is rebuilt from the metadata through
:func:`students.create_student`, so loading never unpickles anything.
Keyword arguments ``pretrained`` / ``pretrained_file`` only choose initial
weights, so they are switched off on rebuild: the file already holds every
weight and loading must not need the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from distill.core.errors import ModelFileError, one_line
from distill.core.files import write_bytes_atomic

from .registry import create_student, rebuild_kwargs

FORMAT_VERSION = "1"
FORMAT_KEY = "distill.format"
STUDENT_KEY = "distill.student"
EXTRA_KEY = "distill.extra"
#: The folder of a training run that holds its checkpoints (``best``, ``last``).
RUN_CHECKPOINTS = "checkpoints"


class StudentCheckpointError(ModelFileError):
    """A file is not a loadable student checkpoint; the message names the file."""


def save_student(
    model: nn.Module, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s weights and architecture spec to one safetensors file.

    The write is atomic (temporary file in the same folder, fsynced, then
    renamed into place) so an interrupted save never leaves a truncated
    checkpoint in place of a good one.  Parent folders are created.

    Args:
        model: a model built by :func:`students.create_student` (it must carry
            ``student_spec``).
        path: destination file, conventionally ``*.safetensors``.
        extra: JSON-serialisable metadata (str / number / dict values), e.g.
            the style name or training step.

    Returns:
        The destination path.

    Raises:
        ValueError: ``model`` has no ``student_spec`` or ``extra`` is not
            JSON-serialisable.
    """
    path = Path(path)
    spec = getattr(model, "student_spec", None)
    if spec is None:
        raise ValueError(
            "model has no student_spec; build it with students.create_student() so it can be rebuilt"
        )
    try:
        metadata = {
            FORMAT_KEY: FORMAT_VERSION,
            STUDENT_KEY: json.dumps(spec, sort_keys=True),
            EXTRA_KEY: json.dumps(extra or {}, sort_keys=True),
        }
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint metadata for {path} is not JSON-serialisable: {error}") from error
    # safetensors refuses non-contiguous or device tensors; copies are cheap next to a save.
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}

    # Serialised in memory and written by the one atomic writer (fsynced, renamed, ordinary
    # permissions): safetensors' own save_file creates owner-only (0600) files.
    write_bytes_atomic(path, save_safetensors(state, metadata=metadata))
    return path


def run_checkpoint(run_dir: str | os.PathLike[str], name: str) -> Path:
    """The checkpoint ``name`` (``"best"`` or ``"last"``) of a training run: RUN_DIR/checkpoints/NAME.safetensors.

    One layout for the trainer that writes these files and the tools that read them.
    """
    return Path(run_dir) / RUN_CHECKPOINTS / f"{name}.safetensors"


def read_student_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint's metadata without loading its weights.

    Returns:
        ``{"format": str, "student": {"name": str, "kwargs": dict}, "extra": dict}``.

    Raises:
        StudentCheckpointError: missing file, not a safetensors file, no
            distill metadata, or malformed metadata.
    """
    path = Path(path)
    if not path.exists():
        raise StudentCheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise StudentCheckpointError(f"{path}: is not a file")
    try:
        with safe_open(path, framework="pt") as checkpoint:
            raw = checkpoint.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise StudentCheckpointError(
            f"{path}: not a safetensors file ({one_line(error)}); "
            "student checkpoints are written by students.save_student"
        ) from error

    if FORMAT_KEY not in raw or STUDENT_KEY not in raw:
        raise StudentCheckpointError(
            f"{path}: safetensors file has no distill metadata; it was not written by this toolkit"
        )
    if raw[FORMAT_KEY] != FORMAT_VERSION:
        raise StudentCheckpointError(
            f"{path}: unsupported checkpoint format {raw[FORMAT_KEY]!r} (expected {FORMAT_VERSION!r})"
        )
    try:
        student = json.loads(raw[STUDENT_KEY])
        extra = json.loads(raw.get(EXTRA_KEY, "{}"))
    except json.JSONDecodeError as error:
        raise StudentCheckpointError(f"{path}: corrupt distill metadata ({error})") from error
    if not (
        isinstance(student, dict)
        and isinstance(student.get("name"), str)
        and isinstance(student.get("kwargs"), dict)
    ):
        raise StudentCheckpointError(f"{path}: corrupt student spec {raw[STUDENT_KEY]!r}")
    return {"format": raw[FORMAT_KEY], "student": student, "extra": extra}


def load_student(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student from its checkpoint and load its weights (strictly).

    Args:
        path: a file written by :func:`save_student`.
        device: where to put the model.

    Returns:
        ``(model, metadata)``: the model in eval mode on ``device``, and the
        metadata as returned by :func:`read_student_metadata`.

    Raises:
        StudentCheckpointError: any reason the file cannot be loaded (see
            :func:`read_student_metadata`), an unknown student name, or
            weights that do not match the architecture.
    """
    path = Path(path)
    metadata = read_student_metadata(path)
    name = metadata["student"]["name"]
    kwargs = rebuild_kwargs(metadata["student"]["kwargs"])
    try:
        model = create_student(name, **kwargs)
    except (ValueError, TypeError, RuntimeError) as error:
        # RuntimeError: e.g. timm's 'Unknown model' for a backbone name this install lacks.
        raise StudentCheckpointError(f"{path}: cannot rebuild student: {one_line(error)}") from error

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise StudentCheckpointError(f"{path}: unreadable weights ({one_line(error)})") from error
    mismatch = _describe_state_mismatch(model.state_dict(), state)
    if mismatch:
        raise StudentCheckpointError(
            f"{path}: weights do not match student {name!r} {kwargs}: {mismatch}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), metadata


def _describe_state_mismatch(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], *, shown: int = 3
) -> str:
    """One line summarising missing, unexpected and mis-shaped tensors ('' if none)."""

    def sample(keys: list[str]) -> str:
        more = f", ... ({len(keys)} total)" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = sorted(
        f"{key} {tuple(found[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected.keys() & found.keys()
        if found[key].shape != expected[key].shape
    )
    parts = []
    if missing:
        parts.append(f"missing {sample(missing)}")
    if unexpected:
        parts.append(f"unexpected {sample(unexpected)}")
    if misshaped:
        parts.append(f"shape mismatch {sample(misshaped)}")
    return "; ".join(parts)
