"""How photorealistic a result is, and how far each masked region moved toward the style's region.

Figures for Deep Photo Style Transfer results (teacher or student), computed from plain
image statistics like :mod:`distill.report.stylemetrics`, never from the loss network:

- **affine residual**: :func:`distill.core.affine.affine_residual`, the RMS error of the
  best affine colour map from the photo to the result in every 3x3 window (the premise of
  the paper: photorealistic = locally a recolouring). Reported as a ratio to plain Gatys
  with the same settings;
- **region colour moved**: for every region the two masks share, ``1 - gap(out_k, style_k) /
  gap(content_k, style_k)``, where ``gap`` is the sliced Wasserstein distance of CIELAB
  colours between the output's pixels in the content region and the style's pixels in its
  region, less :data:`COLOUR_TOLERANCE` (floored at 0; the denominator at least the
  tolerance). Without the tolerance, a region that already has the style's colours (a
  black studio background on both sides) has no way to go, and an invisible change of
  it reads as a large move away;
- **structure kept**: :func:`distill.report.stylemetrics.structure_kept`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from distill.core.affine import affine_residual
from distill.core.imageio import resize_image
from distill.core.masks import CLASS_NAMES, regions_of, resize_mask
from distill.report.stylemetrics import lab_pixels, sliced_wasserstein, structure_kept

#: A region needs this many pixels in both images to be measured.
MIN_REGION_PIXELS = 16
#: Colour distances up to this count as matched. The sliced distance of a uniform CIELAB
#: shift is about half its Delta E, so 2.0 is a shift of about Delta E 4: under two
#: just-noticeable differences (Delta E 2.3).
COLOUR_TOLERANCE = 2.0


@dataclass(frozen=True)
class PhotorealFigures:
    """Independent figures of one photorealistic result (see the module docstring)."""

    affine_residual: float  # RMS residual of the local affine fit, intensity units
    region_colour_moved: dict[str, float]  # per shared region (palette name): colour moved toward the style's region
    structure_kept: float

    @property
    def min_region_colour_moved(self) -> float:
        return min(self.region_colour_moved.values()) if self.region_colour_moved else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "min_region_colour_moved": self.min_region_colour_moved}


def photoreal_figures(
    output: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    content_mask: torch.Tensor | None = None,
    style_mask: torch.Tensor | None = None,
) -> PhotorealFigures:
    """Figures of ``output`` (3, H, W) against its ``content`` (resized to it) and ``style`` (any size).

    ``content_mask``, ``style_mask``: class maps of the content and style at any size;
    without them the whole image is one region ("all").
    """
    output = output.detach().float().cpu().clamp(0, 1)
    size = tuple(output.shape[-2:])
    content = resize_image(content.detach().float().cpu(), size=size, antialias=True)
    style = resize_image(style.detach().float().cpu(), long_side=max(size), antialias=True)
    return PhotorealFigures(
        affine_residual=affine_residual(output, content),
        region_colour_moved=region_colour_moved(output, content, style, content_mask, style_mask),
        structure_kept=structure_kept(output, content),
    )


def region_colour_moved(
    output: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    content_mask: torch.Tensor | None,
    style_mask: torch.Tensor | None,
) -> dict[str, float]:
    """Colour moved toward the style per shared region; ``output`` and ``content`` of one size."""
    if content_mask is None or style_mask is None:
        regions = {"all": (torch.ones(output.shape[-2:], dtype=torch.bool), torch.ones(style.shape[-2:], dtype=torch.bool))}
    else:
        # The regions the teacher pairs: those that cover enough of both masks.
        shared = sorted(set(regions_of(content_mask)) & set(regions_of(style_mask)))
        content_mask = resize_mask(content_mask, tuple(output.shape[-2:]))
        style_mask = resize_mask(style_mask, tuple(style.shape[-2:]))
        regions = {CLASS_NAMES[k]: (content_mask == k, style_mask == k) for k in shared}
    out_lab, content_lab, style_lab = (lab_pixels(image) for image in (output, content, style))
    moved = {}
    for name, (inside_content, inside_style) in regions.items():
        inside_content, inside_style = inside_content.flatten(), inside_style.flatten()
        if int(inside_content.sum()) < MIN_REGION_PIXELS or int(inside_style.sum()) < MIN_REGION_PIXELS:
            continue
        target = style_lab[inside_style]
        before = max(sliced_wasserstein(content_lab[inside_content], target) - COLOUR_TOLERANCE, 0.0)
        after = max(sliced_wasserstein(out_lab[inside_content], target) - COLOUR_TOLERANCE, 0.0)
        moved[name] = 1.0 - after / max(before, COLOUR_TOLERANCE)
    return moved
