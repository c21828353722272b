"""The teacher's image parameterisations: plain pixels, or a Laplacian pyramid.

L-BFGS is invariant to a linear change of variables only in the limit of a full
curvature history; with a few hundred steps from the photo, the variables it moves
along decide what it finds. On pixels, the steepest directions of a style loss are
per-pixel changes, so a result fills with fine speckle long before larger structures
form. Optimising the coefficients of a Laplacian pyramid instead, each coarser band
scaled up by ``gain`` per level (the "Laplacian pyramid gradient normalisation" of
feature-visualisation work), lets patches and strokes form at every scale at once.
The objective is unchanged: the pyramid reconstructs the image exactly.

The same argument holds for colour. On RGB variables a step of pure chroma costs as
little as one of pure luminance, so fine bands fill with per-pixel colour speckle.
With a decorrelated colour basis (Olah et al. 2017, "Feature Visualization"; Mordvintsev
et al. 2018, "Differentiable Image Parameterizations", whose style transfer through
non-VGG networks needed it) each variable moves one principal colour axis of natural
images, scaled by its standard deviation: chroma moves in proportion to how much photos
vary in it, luminance somewhat less than it would on RGB variables
(:data:`DEFAULT_LUMINANCE_STEP`), so a dark, flat photo keeps its layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PARAMETERISATIONS = ("pixels", "laplacian")
#: "rgb": the variables are red, green and blue; "decorrelated": principal colour axes of
#: natural images (:data:`IMAGENET_COLOUR_SQRT_COVARIANCE`).
COLOUR_BASES = ("rgb", "decorrelated")

#: Square root of ImageNet's RGB covariance (its principal axes times their standard
#: deviations), as published with lucid's image parameterisations. Columns: luminance,
#: then two chroma axes at about 0.28 and 0.13 of its scale.
IMAGENET_COLOUR_SQRT_COVARIANCE = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


#: Luminance step of the decorrelated basis, relative to a step along RGB. At 1, L-BFGS
#: repaints a photo's light and dark as readily as it can, and on flat dark photos (a night
#: sky, a black backdrop) the painting's light and dark wash the photo's layout away; chroma
#: steps are small beside it. At 0.6 the chroma axes keep their scale and luminance moves a
#: little less. Measured against 1 on 24 public photo x painting pairs (128 px, 200
#: iterations, random weights; benchmarks/bench_stylization.py figures): structure kept 0.67
#: -> 0.72 (least 0.43 -> 0.58), texture moved 0.51 -> 0.50 (least 0.28 -> 0.31), colour
#: moved 0.91 -> 0.91 (least 0.71 -> 0.67). At 0.4: structure 0.77, texture 0.50 (least
#: 0.26), colour least 0.62, with more colour patches over the photos under a grey print.
DEFAULT_LUMINANCE_STEP = 0.6

#: Unit vector of the grey axis in RGB: the direction a luminance step moves.
_GREY = (3.0**-0.5, 3.0**-0.5, 3.0**-0.5)


def colour_basis_matrix(kind: str, *, luminance_step: float = 1.0) -> torch.Tensor | None:
    """The 3x3 map from the variables' colour channels to RGB (None for "rgb" at step 1).

    "decorrelated": scaled to unit largest singular value, so a luminance step moves the
    image as far as it does on RGB variables and only chroma steps become smaller. Then,
    with either basis, the map's component along the grey axis is multiplied by
    ``luminance_step``: how far a unit step moves the image's luminance.
    """
    if kind not in COLOUR_BASES:
        raise ValueError(f"colour basis must be one of {COLOUR_BASES}, got {kind!r}")
    if not (math.isfinite(luminance_step) and luminance_step > 0):
        raise ValueError(f"luminance step must be a positive number, got {luminance_step}")
    if kind == "rgb" and luminance_step == 1.0:
        return None
    matrix = torch.eye(3, dtype=torch.float64)
    if kind == "decorrelated":
        matrix = torch.tensor(IMAGENET_COLOUR_SQRT_COVARIANCE, dtype=torch.float64)
        matrix = matrix / torch.linalg.matrix_norm(matrix, ord=2)
    grey = torch.tensor(_GREY, dtype=torch.float64)[:, None]
    shorten_grey = torch.eye(3, dtype=torch.float64) - (1.0 - luminance_step) * (grey @ grey.T)
    return (shorten_grey @ matrix).float()

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
    ``coarsest``: the short side below which no further band is made. ``colour_basis``:
    :data:`COLOUR_BASES`, the colour axes every band's three channels stand for;
    ``luminance_step``: how far a unit step moves luminance (see :func:`colour_basis_matrix`).
    ``decode(encode(x)) == x`` up to float rounding.
    """

    def __init__(
        self, kind: str, *, height: int, width: int, gain: float = 1.5, coarsest: int = DEFAULT_COARSEST_SIDE,
        colour_basis: str = "rgb", luminance_step: float = 1.0,
    ) -> None:
        if kind not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {kind!r}")
        self.kind = kind
        self.to_rgb = colour_basis_matrix(colour_basis, luminance_step=luminance_step)
        self.from_rgb = None if self.to_rgb is None else torch.linalg.inv(self.to_rgb)
        self.size = (height, width)
        self.levels = pyramid_levels(height, width, coarsest=coarsest) if kind == "laplacian" else 1
        self.gains = [gain**level for level in range(self.levels)]
        # Band sizes: each blur_downsample step gives ceil(side / 2).
        self.shapes: list[tuple[int, int, int]] = []
        for _ in range(self.levels):
            self.shapes.append((3, height, width))
            height, width = (height + 1) // 2, (width + 1) // 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # Colour and pyramid are both linear and act on different axes, so their order is free.
        if self.from_rgb is not None:
            images = _map_colours(self.from_rgb.to(images), images)
        return self._encode_bands(images)

    def decode(self, variables: torch.Tensor) -> torch.Tensor:
        images = self._decode_bands(variables)
        return images if self.to_rgb is None else _map_colours(self.to_rgb.to(images), images)

    def _encode_bands(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixels" or self.levels == 1:
            return images.reshape(images.shape[0], -1)
        bands, current = [], images
        for _ in range(self.levels - 1):
            coarser = blur_downsample(current)
            bands.append(current - _upsample(coarser, current.shape[-2:]))
            current = coarser
        bands.append(current)
        return torch.cat([(band / gain).reshape(images.shape[0], -1) for band, gain in zip(bands, self.gains)], dim=1)

    def _decode_bands(self, variables: torch.Tensor) -> torch.Tensor:
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


def _map_colours(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``matrix`` (3, 3) applied to every pixel's colour of ``images`` (B, 3, H, W)."""
    return torch.einsum("ij,bjhw->bihw", matrix, images)
