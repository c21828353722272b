"""How a student is evaluated against its teacher (:class:`FidelityOptions`) and what comes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.config import check_fields
from distill.core.errors import ConfigError
from distill.targets.pairs import TargetPairs
from students.checkpoint import run_checkpoint

REPORT_FORMAT = "distill-fidelity-report"
REPORT_VERSION = 1
JSON_CONVENTIONS = (
    'non-finite floats are written as the strings "inf", "-inf" and "nan" (e.g. PSNR of identical images); '
    "null means not available (e.g. equivalent_iterations when the teacher never reached the student's objective)"
)


class FidelityInputError(ConfigError):
    """A missing run folder, checkpoint or store, an unknown config, or an empty split."""


@dataclass(frozen=True)
class FidelityOptions:
    """How to evaluate a student against its teacher (the options of ``scripts/compare.py``)."""

    split: str = "heldout"  # "heldout", "train" or "all" entries of the store
    checkpoint: str = "best"  # "best", "last" (RUN_DIR/checkpoints/<name>.safetensors) or a checkpoint path
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    weights: str | None = None  # loss-network weights override (e.g. a local file for "pretrained"); None = the teacher's
    config_hash: str | None = None  # teacher config in the store; None = the checkpoint's, else the store's only one
    heldout_fraction: float | None = None  # None = the training run's (checkpoint metadata), else 0.1
    max_images: int | None = None  # evaluate at most this many images of the split
    embedding_layers: tuple[str, ...] | None = None  # Gram layers for distances and t-SNE; None = two shallowest
    timing_runs: int = 10  # timed student forward passes (median reported)
    timing_warmup: int = 2  # untimed passes first
    retime_iterations: int = 3  # teacher iterations timed when the store's timings are from another device type
    tsne_seed: int = 0  # random_state of PCA and t-SNE
    # Run the teacher once more per image, on the photo mirrored: how well the teacher agrees
    # with itself. A random-weight teacher's texture is chaotic (float rounding alone moves
    # it), so a student near this level agrees with the teacher as well as the teacher does
    # with itself. Costs one teacher run per image.
    teacher_self_agreement: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if self.split not in TargetPairs.SPLITS:
            raise FidelityInputError(f"--split must be one of {', '.join(TargetPairs.SPLITS)}, got {self.split!r}")
        if self.max_images is not None and self.max_images < 1:
            raise FidelityInputError("--max-images must be at least 1")
        if self.heldout_fraction is not None and not 0 <= self.heldout_fraction <= 1:
            raise FidelityInputError(f"--heldout-fraction must lie in [0, 1], got {self.heldout_fraction}")


@dataclass
class FidelityResult:
    """Everything a report needs: the numbers (``report``) and the images behind them."""

    report: dict[str, Any]
    contents: list[torch.Tensor]  # (3, H, W) CPU, per image
    teachers: list[torch.Tensor]
    students: list[torch.Tensor]
    styles: list[torch.Tensor]  # the style image(s) as the criterion saw them (resized to style_size)
    names: list[str]  # short per-image labels (content file stems)
    tsne_points: np.ndarray  # (n, 2)
    tsne_groups: list[str]  # group of each point (see GROUPS)
    tsne_images: list[torch.Tensor] = field(default_factory=list)  # the image of each point, for thumbnails


def resolve_checkpoint(run_dir: str | Path | None, checkpoint: str) -> Path:
    """``best`` / ``last`` inside RUN_DIR/checkpoints, or a path; :class:`FidelityInputError` if missing."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise FidelityInputError(f"--checkpoint {checkpoint} needs --run RUN_DIR")
        run = Path(run_dir)
        if not run.is_dir():
            raise FidelityInputError(f"{run}: no such run folder")
        path = run_checkpoint(run, checkpoint)
        if not path.is_file():
            other = "last" if checkpoint == "best" else "best"
            hint = f"; {other}.safetensors exists: pass --checkpoint {other}" if run_checkpoint(run, other).is_file() else ""
            raise FidelityInputError(f"{path}: no such checkpoint (has the run saved one yet?){hint}")
        return path
    path = Path(checkpoint)
    if not path.is_file() and run_dir is not None and (Path(run_dir) / checkpoint).is_file():
        path = Path(run_dir) / checkpoint
    if not path.is_file():
        raise FidelityInputError(f"{checkpoint}: no such checkpoint file")
    return path
