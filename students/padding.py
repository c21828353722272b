"""Reflection padding to a multiple of a network's stride, and the crop back.

Strided students only reproduce the input's exact height and width when
the input is a multiple of their total stride.  Padding with reflection
(rather than zeros) keeps the border statistics image-like, so padded
pixels do not leak dark frames into instance-norm statistics or the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reflect_pad_to_multiple(
    images: torch.Tensor, *, multiple: int, min_side: int
) -> torch.Tensor:
    """Pad the bottom and right edges of ``images`` up to a multiple of ``multiple``.

    Args:
        images: (B, C, H, W).
        multiple: the stride the padded H and W must be divisible by.
        min_side: smallest H or W the calling network can process.

    Returns:
        (B, C, H', W') with H' = ceil(H / multiple) * multiple (same for W);
        the original image is ``result[..., :H, :W]``.

    Raises:
        ValueError: if H or W is below ``min_side``.
    """
    height, width = images.shape[-2:]
    if height < min_side or width < min_side:
        raise ValueError(
            f"input of size {height}x{width} is too small: "
            f"both sides must be at least {min_side} px"
        )
    # Sizes derived from x.shape keep this traceable with dynamic H/W.
    pad_bottom = (multiple - height % multiple) % multiple
    pad_right = (multiple - width % multiple) % multiple
    return F.pad(images, (0, pad_right, 0, pad_bottom), mode="reflect")


def crop_to_size(images: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """Undo :func:`reflect_pad_to_multiple`: keep the top-left (height, width) window.

    Cropping is a pad with negative amounts rather than ``images[..., :h, :w]``:
    a slice view makes torch.export guard on whether the slice is the whole
    (contiguous) row, which fails for dynamic widths; the pad copies instead.
    """
    pad_bottom = images.shape[-2] - height
    pad_right = images.shape[-1] - width
    return F.pad(images, (0, -pad_right, 0, -pad_bottom))
