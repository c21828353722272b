"""Which device computes, and waiting for it: one rule for every command and library call."""

from __future__ import annotations

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
