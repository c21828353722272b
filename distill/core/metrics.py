"""Image agreement metrics (PSNR, SSIM) of (3, H, W) images in [0, 1].

They live in core because both the trainer (which keeps the checkpoint that agrees best
with the teacher) and the fidelity report use them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two (3, H, W) images in [0, 1] (``data_range=1``); ``inf`` when identical."""
    x, y = _hwc(a), _hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"PSNR of images of different shapes {x.shape} and {y.shape}")
    if np.array_equal(x, y):
        return math.inf
    return float(peak_signal_noise_ratio(x, y, data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (3, H, W) images in [0, 1] (skimage, ``channel_axis``, ``data_range=1``).

    The window shrinks (odd, >= 3) for images smaller than skimage's default 7 px.
    """
    x, y = _hwc(a), _hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM of images of different shapes {x.shape} and {y.shape}")
    side = min(x.shape[:2])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {x.shape[:2]}")
    win_size = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(x, y, channel_axis=2, data_range=1.0, win_size=win_size))


def _hwc(image: torch.Tensor) -> np.ndarray:
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    return image.detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
