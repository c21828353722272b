"""The teacher's image parameterisations: plain pixels, or a Laplacian pyramid.

L-BFGS is invariant to a linear change of variables only in the limit of a full
curvature history; with a few hundred steps from the photo, the variables it moves
along decide what it finds. On pixels, the steepest directions of a style loss are
per-pixel changes, so a result fills with fine speckle long before larger structures
form. Optimising the coefficients of a Laplacian pyramid instead, each coarser band
scaled up by ``gain`` per level (the "Laplacian pyramid gradient normalisation" of
feature-visualisation work), lets patches and strokes form at every scale at once.
The objective is unchanged: the pyramid reconstructs the image exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PARAMETERISATIONS = ("pixels", "laplacian")

#: The coarsest band is kept at least this many pixels on its short side. 8 rather than 16:
#: one more band, about 12 px at 128 and 256 px alike, lets whole regions (a flat dark
#: background, a sky) change colour as broad patches instead of filling with fine texture.
#: Measured on 12 photo x painting pairs at 128 px (benchmarks/bench_stylization.py figures):
#: the least structure kept rose from 0.43 to 0.61 with texture unchanged (mean 0.44 -> 0.45).
DEFAULT_COARSEST_SIDE = 8


def pyramid_levels(height: int, width: int, *, coarsest: int = DEFAULT_COARSEST_SIDE) -> int:
    """Number of bands for an image: halve until the short side would drop below ``coarsest`` px."""
    short = min(height, width)
    return max(1, int(math.floor(math.log2(short / coarsest))) + 1) if short >= coarsest else 1


def blur_downsample(images: torch.Tensor) -> torch.Tensor:
    """Binomial (1 4 6 4 1)/16 blur and stride 2: the Gaussian-pyramid step, free of aliasing grids."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=images.dtype, device=images.device) / 16
    kernel = (taps[:, None] * taps[None, :]).expand(images.shape[1], 1, 5, 5)
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel, stride=2, groups=images.shape[1])


def _upsample(images: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


class ImageParameterisation:
    """Maps images (B, 3, H, W) to the flat variables (B, N) that L-BFGS moves, and back.

    ``kind="pixels"``: the variables are the pixels. ``kind="laplacian"``: band-pass
    coefficients of ``levels`` bands, band ``l`` divided by ``gain ** l``, so a unit
    step on a variable of a coarse band moves the image ``gain ** l`` times further.
    ``coarsest``: the short side below which no further band is made.
    ``decode(encode(x)) == x`` up to float rounding.
    """

    def __init__(self, kind: str, *, height: int, width: int, gain: float = 1.5, coarsest: int = DEFAULT_COARSEST_SIDE) -> None:
        if kind not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {kind!r}")
        self.kind = kind
        self.size = (height, width)
        self.levels = pyramid_levels(height, width, coarsest=coarsest) if kind == "laplacian" else 1
        self.gains = [gain**level for level in range(self.levels)]
        # Band sizes: each blur_downsample step gives ceil(side / 2).
        self.shapes: list[tuple[int, int, int]] = []
        for _ in range(self.levels):
            self.shapes.append((3, height, width))
            height, width = (height + 1) // 2, (width + 1) // 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixels" or self.levels == 1:
            return images.reshape(images.shape[0], -1)
        bands, current = [], images
        for _ in range(self.levels - 1):
            coarser = blur_downsample(current)
            bands.append(current - _upsample(coarser, current.shape[-2:]))
            current = coarser
        bands.append(current)
        return torch.cat([(band / gain).reshape(images.shape[0], -1) for band, gain in zip(bands, self.gains)], dim=1)

    def decode(self, variables: torch.Tensor) -> torch.Tensor:
        batch = variables.shape[0]
        if self.kind == "pixels" or self.levels == 1:
            return variables.reshape(batch, 3, *self.size)
        bands, offset = [], 0
        for shape in self.shapes:
            count = math.prod(shape)
            bands.append(variables[:, offset : offset + count].reshape(batch, *shape))
            offset += count
        image = bands[-1] * self.gains[-1]
        for band, gain in zip(reversed(bands[:-1]), reversed(self.gains[:-1])):
            image = band * gain + _upsample(image, band.shape[-2:])
        return image
