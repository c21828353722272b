"""How much a result looks like its style and keeps its content, measured without the loss network.

The criterion measures images through the loss network it optimises, so a result can
score well on it and still be a bad picture (colour speckle, flat blobs). These figures
come from plain image statistics instead, so they can judge a teacher, a student and a
baseline alike:

- **colour moved** toward the style: ``1 - d(out, style) / d(content, style)`` with ``d``
  the sliced Wasserstein distance between the pixel colours in CIELAB. 1 = the output's
  colour distribution is the style's, 0 = no closer than the photo, < 0 = further away.
- **texture moved beyond colour transfer**: the same ratio for a texture distance, with
  the photo recoloured to the style's colour mean and covariance as the reference
  instead of the photo. A plain recolouring scores 0 by construction, so only real
  changes of local structure count. The texture descriptor is the distribution of
  gradient magnitudes and of gradient orientations at three scales (full, 1/2, 1/4)
  and the radial power spectrum of the luminance. The coarser scales are averaged
  before the gradients are taken, so per-pixel speckle, which vanishes under 2x2 or
  4x4 averaging, cannot fake the strokes and patches of a painting there.
- **structure kept**: Pearson correlation of the gradient magnitudes of the luminance
  of the photo and of the output (same size). 1 = every edge in place.

All functions take float tensors (3, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab

from distill.core.color import luminance, match_colour_statistics
from distill.core.imageio import resize_image

#: Scales (downsampling factors) of the gradient statistics.
TEXTURE_SCALES = (1, 2, 4)
_MAGNITUDE_BINS = 32
_MAGNITUDE_RANGE = 0.25  # Sobel magnitude of a full black-white step is 0.5; painted texture lies well below
_ORIENTATION_BINS = 16
_SPECTRUM_BANDS = 12
_COLOUR_PROJECTIONS = 64
_QUANTILES = 128


@dataclass(frozen=True)
class StylisationFigures:
    """Independent stylisation figures of one result (see the module docstring)."""

    colour_moved: float  # 1 - d_colour(out, style) / d_colour(content, style)
    texture_moved: float  # 1 - d_texture(out, style) / d_texture(recoloured content, style)
    structure_kept: float  # correlation of gradient magnitudes, content vs out

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def stylisation_figures(output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> StylisationFigures:
    """Measure how far ``output`` moved from ``content`` toward ``style`` and how much structure it kept.

    ``output`` and ``content``: (3, H, W) in [0, 1], same size (``content`` is resized
    to ``output`` otherwise). ``style``: (3, h, w), any size: it is resized to the
    output's long side, so the texture scales mean the same pixels in both.
    """
    output = _as_image(output)
    content = resize_image(_as_image(content), size=tuple(output.shape[-2:]), antialias=True)
    style = resize_image(_as_image(style), long_side=max(output.shape[-2:]), antialias=True)

    style_colours = lab_pixels(style)
    colour_content = sliced_wasserstein(lab_pixels(content), style_colours)
    colour_output = sliced_wasserstein(lab_pixels(output), style_colours)

    texture_reference = recoloured_texture_distance(content, style)
    texture_output = texture_distance(texture_descriptor(output), texture_descriptor(style))
    return StylisationFigures(
        colour_moved=_moved(colour_output, colour_content),
        texture_moved=_moved(texture_output, texture_reference),
        structure_kept=structure_kept(output, content),
    )


def recoloured_texture_distance(content: torch.Tensor, style: torch.Tensor) -> float:
    """The texture distance that "texture moved" is relative to: ``content`` recoloured to ``style``, vs ``style``.

    ``style`` is resized to ``content``'s long side, as :func:`stylisation_figures` does. Small
    when the photo already has the painting's gradient and spectrum statistics (fur, foliage):
    then little texture is left to move, and any change moves the ratio a lot.
    """
    content = _as_image(content)
    style = resize_image(_as_image(style), long_side=max(content.shape[-2:]), antialias=True)
    recoloured = match_colour_statistics(content, style)
    return texture_distance(texture_descriptor(recoloured), texture_descriptor(style))


def painting_texture_spread(style: torch.Tensor, *, long_side: int) -> float:
    """How much a painting's own texture varies: the mean texture distance between its four quarters.

    Taken with the painting at ``long_side`` px (the result's scale). A yardstick for
    "texture moved": when the recoloured photo is already closer to the painting than the
    painting's quarters are to one another (fur, foliage), the photo's texture lies within
    the painting's own variation, and a further 25% gain is below what the descriptor resolves.
    """
    style = resize_image(_as_image(style), long_side=long_side, antialias=True)
    height, width = style.shape[-2:]
    quarters = [
        style[:, rows, columns]
        for rows in (slice(0, height // 2), slice(height // 2, height))
        for columns in (slice(0, width // 2), slice(width // 2, width))
    ]
    descriptors = [texture_descriptor(quarter) for quarter in quarters]
    distances = [
        texture_distance(descriptors[i], descriptors[j]) for i in range(len(descriptors)) for j in range(i + 1, len(descriptors))
    ]
    return float(np.mean(distances))


def structure_kept(output: torch.Tensor, content: torch.Tensor) -> float:
    """Pearson correlation of luminance gradient magnitudes, content vs output (same size)."""
    output = _as_image(output)
    content = resize_image(_as_image(content), size=tuple(output.shape[-2:]), antialias=True)
    a = _gradient_magnitude(luminance(output)).flatten().double()
    b = _gradient_magnitude(luminance(content)).flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def texture_descriptor(image: torch.Tensor) -> dict[str, np.ndarray]:
    """Loss-network-free texture statistics of one image (3, H, W).

    Per scale in :data:`TEXTURE_SCALES`: the histogram of luminance gradient magnitudes
    and the magnitude-weighted histogram of gradient orientations. Plus the radially
    averaged log power spectrum.
    """
    plane = luminance(_as_image(image))
    descriptor: dict[str, np.ndarray] = {}
    for scale in TEXTURE_SCALES:
        level = F.avg_pool2d(plane[None, None], scale)[0, 0] if scale > 1 else plane
        gy, gx = _gradients(level)
        magnitude = torch.sqrt(gx**2 + gy**2)
        clipped = magnitude.flatten().clamp(max=_MAGNITUDE_RANGE)
        descriptor[f"magnitude_{scale}"] = _histogram(clipped, _MAGNITUDE_BINS, 0.0, _MAGNITUDE_RANGE)
        orientation = torch.remainder(torch.atan2(gy, gx), np.pi).flatten()
        descriptor[f"orientation_{scale}"] = _histogram(orientation, _ORIENTATION_BINS, 0.0, np.pi, weights=magnitude.flatten())
    descriptor["spectrum"] = _radial_spectrum(plane)
    return descriptor


def texture_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Mean over the descriptor's parts of a distance in [0, ~1] each.

    Magnitude histograms: 1-D Wasserstein distance (bins are ordered, so a small shift
    costs little) scaled to the histogram's range. Orientation histograms: half the L1
    distance (total variation). Spectrum: mean absolute difference of the log power per
    band, in decades.
    """
    parts = []
    for key in a:
        if key.startswith("magnitude"):
            parts.append(float(np.abs(np.cumsum(a[key] - b[key])).sum()) / len(a[key]))
        elif key.startswith("orientation"):
            parts.append(0.5 * float(np.abs(a[key] - b[key]).sum()))
        else:
            parts.append(float(np.abs(a[key] - b[key]).mean()))
    return float(np.mean(parts))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, *, projections: int = _COLOUR_PROJECTIONS) -> float:
    """Sliced Wasserstein-1 distance between two point clouds (N, D) and (M, D).

    Fixed projection directions (seeded) and quantile matching, so the distance is
    deterministic and independent of the number of points.
    """
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    levels = (torch.arange(_QUANTILES, dtype=torch.float64) + 0.5) / _QUANTILES
    qa = torch.quantile(a.double() @ directions, levels, dim=0)
    qb = torch.quantile(b.double() @ directions, levels, dim=0)
    return float((qa - qb).abs().mean())


def _moved(distance_after: float, distance_before: float) -> float:
    return 1.0 - distance_after / distance_before if distance_before > 1e-12 else 0.0


def _as_image(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one image (3, H, W), got {tuple(image.shape)}")
    return image.detach().float().cpu().clamp(0, 1)


def _gradients(plane: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives (y, x) of a 2-D plane, replicate-padded so sizes are kept."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    kernels = torch.stack([sobel_x.t(), sobel_x])[:, None]
    padded = F.pad(plane[None, None], (1, 1, 1, 1), mode="replicate")
    gy, gx = F.conv2d(padded, kernels)[0]
    return gy, gx


def _gradient_magnitude(plane: torch.Tensor) -> torch.Tensor:
    gy, gx = _gradients(plane)
    return torch.sqrt(gx**2 + gy**2)


def _histogram(values: torch.Tensor, bins: int, low: float, high: float, *, weights: torch.Tensor | None = None) -> np.ndarray:
    counts, _ = np.histogram(values.numpy(), bins=bins, range=(low, high), weights=None if weights is None else weights.numpy())
    total = counts.sum()
    return counts / total if total > 0 else np.full(bins, 1.0 / bins)


def _radial_spectrum(plane: torch.Tensor) -> np.ndarray:
    """Log10 power per radial frequency band (log-spaced), of the Hann-windowed plane, mean removed."""
    height, width = plane.shape
    window = torch.hann_window(height, periodic=False)[:, None] * torch.hann_window(width, periodic=False)[None, :]
    centred = (plane - plane.mean()) * window
    power = torch.fft.rfft2(centred).abs().pow(2) / (height * width)
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    edges = torch.logspace(np.log10(2.0 / max(height, width)), np.log10(0.5), _SPECTRUM_BANDS + 1)
    bands = []
    for low, high in zip(edges[:-1], edges[1:]):
        mask = (radius >= low) & (radius < high)
        bands.append(float(power[mask].mean()) if mask.any() else 0.0)
    return np.log10(np.asarray(bands) + 1e-12)


def lab_pixels(image: torch.Tensor) -> torch.Tensor:
    """Pixels (N, 3) in CIELAB (D65), so colour distances follow perceived differences."""
    lab = rgb2lab(image.permute(1, 2, 0).numpy().astype(np.float64))
    return torch.from_numpy(lab.reshape(-1, 3))
