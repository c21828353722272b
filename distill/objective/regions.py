"""Region-by-region style statistics: the augmented style loss of Deep Photo Style Transfer.

With semantic masks (:mod:`distill.core.masks`), each region of the output is matched to
the style statistics of the same region of the style image (sky to sky, building to
building) instead of to the whole painting, so the sky does not take the colour of the
style's ground. Masks are brought to each layer's resolution by area averaging:

- Gram statistic: each region's Gram matrix weights every position by its share of the
  region (Luan et al.'s formulation);
- sliced-Wasserstein statistic: a region's distribution is taken over the positions that
  lie mostly (more than half) inside it.

The error of a layer is the mean over the regions that both the style mask and an
image's content mask hold (each region relative to its own target's size with scale-free
terms), so a small region counts as much as the sky, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.core.masks import region_weights
from distill.objective.terms import resample_quantiles, sorted_projections

#: Quantiles kept per projection of a region's style distribution.
REGION_QUANTILES = 1024
#: A region needs this many positions at a layer to have a distribution there.
MIN_POSITIONS = 4


@dataclass
class RegionTargets:
    """One layer's style statistics per region: ``classes`` (R,) palette indices; ``present`` (R,) bool."""

    classes: tuple[int, ...]
    grams: torch.Tensor  # (R, C, C); rows of absent regions are zero
    quantiles: torch.Tensor | None  # (R, K, Q) for the sliced-Wasserstein statistic
    present: torch.Tensor  # (R,) whether the style has enough of the region at this layer


def region_targets(
    features: torch.Tensor, style_mask: torch.Tensor, classes: tuple[int, ...], directions: torch.Tensor | None
) -> RegionTargets:
    """Per-region statistics of one style image's ``features`` (1, C, h, w) with its class map ``style_mask`` (H, W)."""
    channels = features.shape[1]
    weights = region_weights(style_mask, classes, tuple(features.shape[-2:]))[0]  # (R, h, w)
    flat = features[0].float().flatten(1)  # (C, P)
    grams, quantiles, present = [], [], []
    for region in weights.flatten(1):
        mass = float(region.sum())
        inside = region > 0.5
        present.append(int(inside.sum()) >= MIN_POSITIONS)
        grams.append((flat * region) @ flat.t() / mass if mass > 0 else torch.zeros(channels, channels))
        if directions is not None:
            if present[-1]:
                projected = sorted_projections(flat[:, inside][None, :, :, None], directions)
                quantiles.append(resample_quantiles(projected, REGION_QUANTILES)[0])
            else:
                quantiles.append(torch.zeros(directions.shape[1], REGION_QUANTILES))
    return RegionTargets(
        classes=classes,
        grams=torch.stack(grams),
        quantiles=torch.stack(quantiles) if directions is not None else None,
        present=torch.tensor(present),
    )


def region_style_error(
    features: torch.Tensor,
    content_masks: torch.Tensor,
    targets: RegionTargets,
    directions: torch.Tensor | None,
    *,
    relative: bool,
) -> torch.Tensor:
    """The style error (B,) of ``features`` (B, C, h, w) region by region against ``targets``.

    ``content_masks`` (B, H, W): each image's class map. ``directions`` given: the
    sliced-Wasserstein statistic, else Gram matrices. ``relative``: each region's error
    over its target's own mean square (scale-free terms). An image that shares no region
    with the style at this layer gets 0.
    """
    weights = region_weights(content_masks.to(features.device), targets.classes, tuple(features.shape[-2:]))
    errors = []
    for image, image_weights in zip(features.float().flatten(2), weights.flatten(2)):
        per_region = []
        for index, region in enumerate(image_weights):
            inside = region > 0.5
            if not bool(targets.present[index]) or int(inside.sum()) < MIN_POSITIONS:
                continue
            if directions is None:
                target = targets.grams[index]
                gram = (image * region) @ image.t() / region.sum()
                error = (gram - target).pow(2).mean()
            else:
                target = targets.quantiles[index]
                projected = sorted_projections(image[:, inside][None, :, :, None], directions)[0]
                target = resample_quantiles(target[None], projected.shape[-1])[0]
                error = (projected - target).pow(2).mean()
            if relative:
                error = error / target.pow(2).mean().clamp_min(1e-12)
            per_region.append(error)
        errors.append(torch.stack(per_region).mean() if per_region else features.new_zeros(()).float())
    return torch.stack(errors)
