"""The files of a training run folder, and the resumable state in it.

Run directory layout::

    RUN_DIR/config.yaml                 resolved TrainConfig
    RUN_DIR/metrics.jsonl               one JSON record per logged step / evaluation
    RUN_DIR/tensorboard/                TensorBoard event files
    RUN_DIR/samples/step_XXXXXXX.png    content | teacher | student rows
    RUN_DIR/checkpoints/last.safetensors    latest student (students.checkpoint format)
    RUN_DIR/checkpoints/best.safetensors    best student by held-out SSIM to the teacher
    RUN_DIR/checkpoints/last_state.pt       optimiser / scaler / RNG / step state for --resume
    RUN_DIR/checkpoints/previous_state.pt   the state saved before it: --resume falls back to it
                                            when last_state.pt is missing or unreadable

Training states are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so a state file can never run code (:func:`load_resume_state`). A new
run refuses a folder that is not empty and not a run of this toolkit
(:func:`check_run_folder`), and a run that fails before its first step removes what it
created (:class:`RunFolderClaim`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from distill.core.config import to_dict
from distill.core.errors import ConfigError, DistillError, ModelFileError, load_error_reason, one_line
from distill.core.files import atomic_path, write_text_atomic
from distill.core.imageio import save_image
from students.checkpoint import RUN_CHECKPOINTS, run_checkpoint

if TYPE_CHECKING:
    from distill.train.config import TrainConfig

#: Version of last_state.pt's layout.
STATE_FORMAT = 1


#: ``check(saved config mapping)``: raises :class:`ConfigError` when a state's config cannot be used.
ConfigCheck = Callable[[Mapping[str, Any]], Any]
#: Keys every last_state.pt holds.
STATE_KEYS = ("format", "step", "model", "optimizer", "scheduler", "scaler", "rng", "best", "config")
#: What a run folder holds (besides temporary files, ``.<name>.tmp.*``).
RUN_ENTRIES = frozenset({"config.yaml", "metrics.jsonl", "tensorboard", "samples", RUN_CHECKPOINTS})
CHECKPOINT_ENTRIES = frozenset({"last.safetensors", "best.safetensors", "last_state.pt", "previous_state.pt"})


def checkpoint_paths(run_dir: Path) -> dict[str, Path]:
    """``last`` and ``best`` student checkpoints, the resumable ``state`` of the run in ``run_dir`` and the one before it."""
    return {
        "last": run_checkpoint(run_dir, "last"),
        "best": run_checkpoint(run_dir, "best"),
        "state": Path(run_dir) / RUN_CHECKPOINTS / "last_state.pt",
        "previous_state": Path(run_dir) / RUN_CHECKPOINTS / "previous_state.pt",
    }


class RunStateError(ModelFileError):
    """A run's saved training state cannot be used; the message names the file(s) and why."""


class MissingRunError(DistillError, FileNotFoundError):
    """Resuming was asked for, but the run folder holds no resumable state."""


class RunExistsError(DistillError, FileExistsError):
    """The run folder already holds a run, and resuming it was not asked for."""


class RunFolderError(ConfigError):
    """The run folder is a file, or a folder with someone else's files in it; nothing in it was changed."""


@dataclass
class ResumeState:
    """The state a run resumes from: its contents, its file, and a warning when an older state had to be used."""

    state: dict[str, Any]
    path: Path
    warning: str | None = None


def read_state(path: Path, *, check_config: ConfigCheck | None = None) -> dict[str, Any]:
    """A training state file's contents, checked; :class:`RunStateError` naming ``path`` when it cannot be used.

    Only a torch zip file is opened, and with ``weights_only=True``: a file that holds
    pickled Python objects (which could run code when unpickled) is refused without
    unpickling them. ``check_config(state["config"])`` must accept the saved config (a
    :class:`ConfigError` makes the state unusable).
    """
    if path.is_dir():
        raise RunStateError(f"{path}: is a folder, not a training state")
    try:
        _check_torch_zip(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RunStateError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read the file makes it unusable; say why
        raise RunStateError(f"{path}: {_load_failure(error)}") from None
    if not isinstance(state, Mapping):
        raise RunStateError(f"{path}: not a training state of this toolkit (holds a {type(state).__name__})")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise RunStateError(f"{path}: not a training state of this toolkit (no {', '.join(missing)})")
    if state["format"] != STATE_FORMAT:
        raise RunStateError(f"{path}: training state format {state['format']!r}; this code reads format {STATE_FORMAT}")
    if not isinstance(state["step"], int) or state["step"] < 0 or not isinstance(state["model"], Mapping):
        raise RunStateError(f"{path}: not a training state of this toolkit (bad step or model entries)")
    if check_config is not None:
        try:
            check_config(state["config"])
        except ConfigError as error:
            raise RunStateError(f"{path}: its saved config is unusable ({one_line(error, limit=300)})") from None
    return dict(state)


def _check_torch_zip(path: Path) -> None:
    """:class:`RunStateError` unless ``path`` is a complete zip file, the format ``torch.save`` writes.

    Anything else (an empty or cut-off file, a bare pickle) never reaches an unpickler.
    """
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise RunStateError(f"{path}: empty file (a run killed while saving it, or a copy that failed)")
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: a bare pickle, or torch's legacy format
        raise RunStateError(f"{path}: a bare pickle, not a torch zip file; refused without unpickling it")
    if head != b"PK\x03\x04" or not zipfile.is_zipfile(path):
        raise RunStateError(f"{path}: truncated or corrupt (not a complete torch file)")


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` could not read a state file, in a few words (never torch's advice to unpickle it)."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return f"holds {load_error_reason(error, limit=200)}; refused without loading them"
    if isinstance(error, EOFError) or "central directory" in text or "zip archive" in text:
        return "truncated or corrupt (not a complete torch file)"
    if isinstance(error, OSError):
        return error.strerror or one_line(error, limit=200)
    return f"not a readable torch file ({type(error).__name__}: {one_line(error, first_line=True, limit=200)})"


def load_resume_state(run_dir: Path, *, check_config: ConfigCheck | None = None) -> ResumeState:
    """The newest usable training state of the run in ``run_dir``: last_state.pt, else previous_state.pt.

    ``check_config``: see :func:`read_state`. Falling back to the older state sets :attr:`ResumeState.warning` (naming the newer
    file and why it was not used). :class:`MissingRunError` when neither file exists,
    :class:`RunStateError` naming every file tried when none can be used.
    """
    paths = checkpoint_paths(run_dir)
    newest, older = paths["state"], paths["previous_state"]
    problems: list[str] = []
    for path in (newest, older):
        if not path.exists():
            continue
        try:
            state = read_state(path, check_config=check_config)
        except RunStateError as error:
            problems.append(str(error))
            continue
        warning = None
        if path == older:
            why = problems[0] if problems else f"{newest}: missing (a run killed while saving it)"
            warning = f"WARNING: {why}; resuming from the older state {older} (step {state['step']})"
        return ResumeState(state, path, warning)
    if not problems:
        raise MissingRunError(f"--resume: {newest} does not exist; nothing to resume")
    if len(problems) == 1:
        raise RunStateError(f"cannot resume: {problems[0]}; there is no older state ({older.name}) to fall back to")
    raise RunStateError(f"cannot resume: both saved training states are unusable: {problems[0]}; {problems[1]}")


def check_run_folder(run_dir: Path, *, resume: bool, is_run_config: Callable[[Mapping[str, Any]], bool]) -> None:
    """Refuse, before any work, a ``run_dir`` that this run must not write into.

    A new run needs a new or empty folder, or a run folder of this toolkit that never
    saved a state (a run that died before its first checkpoint); a folder that holds a
    state needs ``resume`` (:class:`RunExistsError`). Anything else (a file, a folder with
    other files, a config.yaml whose mapping ``is_run_config`` rejects) is :class:`RunFolderError`.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: is a file, not a run folder; choose a new or empty folder")
    paths = checkpoint_paths(run_dir)
    has_state = paths["state"].exists() or paths["previous_state"].exists()
    if resume or not run_dir.is_dir():
        return  # resuming needs a saved state (load_resume_state), and never runs into a foreign folder without one
    if has_state:
        raise RunExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another folder")
    foreign = _foreign_entries(run_dir, is_run_config)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(
            f"{run_dir}: folder is not empty and is not a training run (it holds {shown}); choose an empty or new folder "
            "(nothing in it was changed)"
        )


def _foreign_entries(run_dir: Path, is_run_config: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    """What in ``run_dir`` a run of this toolkit does not write (sorted names; empty for one of our runs)."""
    foreign = [name for name in sorted(os.listdir(run_dir)) if name not in RUN_ENTRIES and not _is_temp(name)]
    checkpoints = run_dir / RUN_CHECKPOINTS
    if checkpoints.is_dir():
        foreign += [f"{RUN_CHECKPOINTS}/{name}" for name in sorted(os.listdir(checkpoints))
                    if name not in CHECKPOINT_ENTRIES and not _is_temp(name)]
    elif checkpoints.exists():
        foreign.append(RUN_CHECKPOINTS)
    config_file = run_dir / "config.yaml"
    if config_file.exists() and not is_run_config(_yaml_mapping(config_file)):
        foreign.append("a config.yaml that no training run wrote")
    return foreign


def _is_temp(name: str) -> bool:
    return name.startswith(".") and ".tmp." in name


def _yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping a YAML file holds; ``{}`` for anything else (unreadable, not YAML, not a mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


class RunFolderClaim:
    """What of a run folder existed before this run, so that a run that fails early removes only what it created.

    Records the missing folders up to ``run_dir`` and every path inside it; :meth:`undo`
    removes the paths that were not there (and the folders this run made). Files that
    were there are left in place.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.created: list[Path] = []  # folders this run will create, run_dir first
        folder = run_dir
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            self.created.append(folder)
            folder = folder.parent
        self.before: set[Path] = set()
        if run_dir.is_dir():
            for root, dirs, files in os.walk(run_dir):
                self.before.update(Path(root, name) for name in (*dirs, *files))

    def undo(self) -> None:
        """Remove what appeared since the claim (best effort: never raises)."""
        if self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for folder in self.created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only while empty: another process may have put something there
            return
        if not self.run_dir.is_dir():
            return
        for root, dirs, files in os.walk(self.run_dir, topdown=False):
            for name in files:
                path = Path(root, name)
                if path not in self.before:
                    with contextlib.suppress(OSError):
                        path.unlink()
            for name in dirs:
                path = Path(root, name)
                if path not in self.before:
                    with contextlib.suppress(OSError):
                        path.rmdir()


class RunFiles:
    """Rank 0's writers: metrics.jsonl, TensorBoard, samples."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        if self.metrics_path.exists():
            # Records past the resumed step belong to a run that died before its next checkpoint.
            kept = [
                line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if _record_step(line) <= start_step
            ]
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def describe(self, config: TrainConfig, weights: str, step: int) -> None:
        """The run's config and loss-network weights as TensorBoard text."""
        self.writer.add_text("config", "```\n" + yaml_text(to_dict(config)) + "\n```", step)
        self.writer.add_text("loss_network_weights", weights, step)

    def record(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(name if name in ("lr", "images_per_sec") else f"{kind}/{name}", value, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        self.writer.add_image("samples/content_teacher_student", grid, step)
        save_image(grid, self.run_dir / "samples" / f"step_{step:07d}.png")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a blank or torn line (dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def save_state(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
               config: TrainConfig, step: int, best: dict | None, lr: float, latest_eval: dict | None,
               *, keep_previous: Path | None = None) -> None:
    """Write last_state.pt atomically: everything ``--resume`` needs to continue exactly.

    ``keep_previous``: where the state that ``path`` held moves (previous_state.pt), once
    the new one is complete. Every value is a tensor or a plain container, as
    ``torch.load(weights_only=True)`` needs.
    """
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": config.schedule, "step": step, "last_lr": lr},
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "best": best or {},
        "latest_eval": latest_eval or {},
        "config": to_dict(config),
    }
    with atomic_path(path, keep_previous=keep_previous) as tmp:
        torch.save(state, tmp)


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's (CPU and CUDA) random states, as tensors and lists that ``weights_only`` loads."""
    numpy_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; call it inside :func:`distill.core.devices.isolated_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def yaml_text(data: Mapping[str, Any]) -> str:
    """``data`` as YAML in field order, as written to RUN_DIR/config.yaml."""
    return yaml.safe_dump(dict(data), sort_keys=False)
