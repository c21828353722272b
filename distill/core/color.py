"""Colour-space helpers for luminance-only transfer (Gatys et al., "Preserving color in
neural artistic style transfer", 2016): stylise the luminance, keep the content's chroma."""

from __future__ import annotations

import torch

# NTSC YIQ: Y carries luminance, I and Q the chroma.
_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) YIQ (Y in [0, 1], I and Q signed)."""
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(images), images)


def yiq_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_yiq`; the result is not clamped."""
    return torch.einsum("ij,bjhw->bihw", _YIQ_TO_RGB.to(images), images)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Y, the luminance, of RGB images (..., 3, H, W) in [0, 1] -> (..., H, W) in [0, 1] (row Y of :func:`rgb_to_yiq`)."""
    red, green, blue = images.unbind(-3)
    return 0.299 * red + 0.587 * green + 0.114 * blue


def luminance_as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> its luminance repeated on three channels (a grey RGB image)."""
    luminance = rgb_to_yiq(images)[:, :1]
    return luminance.expand(-1, 3, -1, -1)


def transfer_luminance(stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance of ``stylised`` with the chroma (I, Q) of ``content``; both (B, 3, H, W) in [0, 1].

    Returns RGB clamped to [0, 1]; clamping only bites where the combination leaves the
    RGB gamut, so the chroma is kept exactly everywhere else.
    """
    stylised_yiq = rgb_to_yiq(stylised)
    content_yiq = rgb_to_yiq(content)
    combined = torch.cat([stylised_yiq[:, :1], content_yiq[:, 1:]], dim=1)
    return yiq_to_rgb(combined).clamp(0, 1)
