"""The files of a training run folder, and the resumable state in it.

Run directory layout::

    RUN_DIR/config.yaml                 resolved TrainConfig
    RUN_DIR/metrics.jsonl               one JSON record per logged step / evaluation
    RUN_DIR/tensorboard/                TensorBoard event files
    RUN_DIR/samples/step_XXXXXXX.png    content | teacher | student rows
    RUN_DIR/checkpoints/last.safetensors    latest student (students.checkpoint format)
    RUN_DIR/checkpoints/best.safetensors    best student by held-out SSIM to the teacher
    RUN_DIR/checkpoints/last_state.pt       optimiser / scaler / RNG / step state for --resume
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from distill.core.config import to_dict
from distill.core.files import atomic_path, write_text_atomic
from distill.core.imageio import save_image
from students.checkpoint import RUN_CHECKPOINTS, run_checkpoint

if TYPE_CHECKING:
    from distill.train.config import TrainConfig

#: Version of last_state.pt's layout.
STATE_FORMAT = 1


def checkpoint_paths(run_dir: Path) -> dict[str, Path]:
    """``last`` and ``best`` student checkpoints and the resumable ``state`` of the run in ``run_dir``."""
    return {
        "last": run_checkpoint(run_dir, "last"),
        "best": run_checkpoint(run_dir, "best"),
        "state": Path(run_dir) / RUN_CHECKPOINTS / "last_state.pt",
    }


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
               config: TrainConfig, step: int, best: dict | None, lr: float, latest_eval: dict | None) -> None:
    """Write last_state.pt atomically: everything ``--resume`` needs to continue exactly."""
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
    with atomic_path(path) as tmp:
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
