"""Which device computes, waiting for it, and random state that stays local: one rule for every command and library call."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from distill.core.errors import DeviceError


def resolve_device(name: str | torch.device, *, local_rank: int | None = None) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; an unavailable CUDA request is a :class:`DeviceError`.

    ``local_rank``: under ``torchrun``, the process's GPU for a bare ``"cuda"``. Never
    changes the current CUDA device (that is process-wide state).
    """
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), so wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block on its own random state, restored on exit: Python's, numpy's and torch's (CPU and every CUDA device).

    With ``seed``, all three generators are seeded inside (as ``random.seed``,
    ``np.random.seed`` and ``torch.manual_seed`` would), so code that draws from the global
    generators (model initialisation, libraries that take no generator) is reproducible
    without changing the caller's random state.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
