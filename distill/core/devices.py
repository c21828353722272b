"""Which device computes, waiting for it, and random state that stays local: one rule for every command and library call."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

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


#: cgroup (v2, then v1) files that hold a container's memory limit.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_capacity(device: torch.device | str) -> int | None:
    """Bytes of memory ``device`` has in all: the GPU's, or the machine's RAM (a container's limit if lower).

    ``None`` when unknown. The total, not what is free now: a request above it can never
    succeed, so commands refuse it before any work.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for limit_file in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


def format_bytes(count: float) -> str:
    """``1.2 GB``-style text for a byte count (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


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
