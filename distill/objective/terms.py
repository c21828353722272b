"""The terms of the style-transfer objective, each reduced to one value per image.

Every function returns a tensor of shape (B,), so one batched call serves a batch of
independent optimisation problems (the batched teacher) as well as a training batch
(which takes the mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from distill.objective.criterion import StyleCriterion


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of feature maps, normalised by the number of positions.

    ``features``: (B, C, H, W). Returns (B, C, C) float32 with
    ``G[b, i, j] = sum_p F[b, i, p] * F[b, j, p] / (H * W)``, i.e. the mean over spatial
    positions p of the outer product of the feature vectors. Dividing by H*W makes the
    statistic independent of image size, so style targets from a style image of one size
    apply to content of another. It is computed in float32 even under autocast because
    fp16 Gram sums overflow.

    Relation to Gatys et al. (2016): their unnormalised ``G`` with
    ``E_l = 1 / (4 N^2 M^2) * sum (G - A)^2`` (N = C channels, M = H*W positions) equals
    ``mean((G/M - A/M)^2) / 4``, so :func:`style_layer_loss` is ``4 * E_l``.
    """
    batch, channels, height, width = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(batch, channels, height * width)
        return torch.bmm(flat, flat.transpose(1, 2)) / (height * width)


def gram_embedding(gram: torch.Tensor) -> torch.Tensor:
    """The upper-triangular entries of Gram matrices (B, C, C) -> (B, C * (C + 1) / 2): a style "fingerprint".

    A Gram matrix is symmetric, so these entries hold all of it; embeddings of several
    layers are concatenated for Gram-embedding distances and t-SNE plots.
    """
    rows, cols = torch.triu_indices(gram.shape[-1], gram.shape[-1], device=gram.device)
    return gram[:, rows, cols]


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps (B, C, H, W) -> (B,)."""
    diff = features.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def style_layer_loss(gram: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of Gram matrices (B, C, C) vs (B or 1, C, C) -> (B,)."""
    return (gram - target_gram).pow(2).flatten(1).mean(dim=1)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (B, C, H, W) -> (B,).

    ``mean((x[:, :, 1:, :] - x[:, :, :-1, :])^2) + mean((x[:, :, :, 1:] - x[:, :, :, :-1])^2)``
    per image; it penalises high-frequency noise without depending on the image size.
    """
    images = images.float()
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).flatten(1).mean(dim=1)
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).flatten(1).mean(dim=1)
    return vertical + horizontal


def layer_weights_for(
    layers: Sequence[str], channels: Mapping[str, int], scheme: str | Mapping[str, float]
) -> dict[str, float]:
    """Per-layer style weights.

    ``scheme``: ``"inverse_square_channels"`` gives ``1 / C_l^2`` (the lecture's recipe,
    which evens out layers of different widths), ``"equal"`` gives 1 per layer, or an
    explicit mapping ``{layer: weight}`` that must cover every layer.
    """
    if isinstance(scheme, Mapping):
        absent = [layer for layer in layers if layer not in scheme]
        if absent:
            raise ValueError(f"explicit style layer weights lack {absent}")
        return {layer: float(scheme[layer]) for layer in layers}
    if scheme == "equal":
        return {layer: 1.0 for layer in layers}
    if scheme == "inverse_square_channels":
        return {layer: 1.0 / channels[layer] ** 2 for layer in layers}
    raise ValueError(f"unknown layer weighting {scheme!r}; use 'inverse_square_channels', 'equal' or a mapping")


def relative_content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||F - P||^2 / ||P||^2`` per image, (B, C, H, W) -> (B,).

    Scale-free: the same value whatever the layer's width, its activation scale (random
    or pretrained weights) or the image size, so one alpha means the same everywhere.
    """
    diff = features.float() - target.float()
    return diff.pow(2).flatten(1).sum(dim=1) / target.float().pow(2).flatten(1).sum(dim=1).clamp_min(1e-12)


#: How sharply :func:`flat_area_loss` tells flat from textured: a position whose response energy
#: is the photo's mean weighs exp(-4) = 2% of a flat one. At a sharpness of 1 (measured, 128 px)
#: the term also held busy photos (fur, facades), and their texture stayed the photo's own.
FLAT_AREA_SHARPNESS = 4.0


def flat_area_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A content error (B,) counted where the photo is flat: (B, C, H, W) -> (B,).

    ``target``: the photo's responses of a texture filter bank (ReLU, zero-mean filters),
    which are near 0 where the photo is flat. Each position weighs
    ``exp(-FLAT_AREA_SHARPNESS * E / mean(E))``, ``E`` the photo's response energy there, so
    strokes that fill a sky or a wall cost, and the photo's textured areas stay free to take
    the painting's texture. Relative to the photo's mean squared response, like
    :func:`relative_content_loss`, so one weight means the same at any size.
    """
    target = target.float()
    energy = target.pow(2).sum(dim=1, keepdim=True)
    flatness = torch.exp(-FLAT_AREA_SHARPNESS * energy / energy.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12))
    error = (flatness * (features.float() - target).pow(2)).flatten(1).mean(dim=1)
    return error / target.pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)


def sorted_projections(features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Feature vectors (B, C, H, W) projected on unit ``directions`` (C, K), sorted over positions: (B, K, H*W)."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().flatten(2)
        projected = torch.einsum("bcn,ck->bkn", flat, directions.float())
        return projected.sort(dim=-1).values


def resample_quantiles(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted samples (B, K, M) -> their quantile function at ``count`` evenly spaced levels (B, K, count)."""
    if sorted_values.shape[-1] == count:
        return sorted_values
    return torch.nn.functional.interpolate(sorted_values, size=count, mode="linear", align_corners=False)


def sliced_wasserstein_layer_loss(features: torch.Tensor, directions: torch.Tensor, target_quantiles: torch.Tensor) -> torch.Tensor:
    """Squared sliced Wasserstein-2 distance between the feature vectors of each image and the style's.

    ``features`` (B, C, H, W); ``directions`` (C, K) unit vectors; ``target_quantiles``
    (1, K, Q) the style's sorted projections. Returns (B,): the mean over directions and
    positions of the squared difference between the image's sorted projections and the
    style's quantile function at the same levels. Unlike a Gram matrix, which keeps only
    second moments, this matches the whole distribution of responses (Heitz et al.
    2021), so flat areas with sharp edges and Gaussian speckle, which can share a
    Gram matrix, are told apart.
    """
    projected = sorted_projections(features, directions)
    target = resample_quantiles(target_quantiles.float(), projected.shape[-1])
    return (projected - target).pow(2).mean(dim=(1, 2))


def structural_dissimilarity(images: torch.Tensor, targets: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` per image, (B, C, H, W) in [0, 1] -> (B,), differentiable.

    SSIM of Wang et al. (2004) with their Gaussian window (11 px, sigma 1.5) and constants
    (K1 0.01, K2 0.03, data range 1), averaged over channels and positions (valid
    windows only). As a distillation term it rewards matching the teacher's local
    contrast and structure, where a pixel L1 or L2 term is best met by a blur
    (Zhao et al. 2017, "Loss functions for image restoration with neural networks").
    """
    images, targets = images.float(), targets.float()
    channels = images.shape[1]
    size = min(window, images.shape[-2], images.shape[-1])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float32, device=images.device) - (size - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(channels, 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, kernel, groups=channels)

    mu_x, mu_y = blur(images), blur(targets)
    var_x = blur(images * images) - mu_x**2
    var_y = blur(targets * targets) - mu_y**2
    cov = blur(images * targets) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return 1 - ssim.flatten(1).mean(dim=1)


def distill_terms(
    criterion: StyleCriterion,
    output: torch.Tensor,
    target: torch.Tensor,
    kinds: Sequence[str],
    *,
    output_features: Mapping[str, torch.Tensor] | None = None,
    target_features: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Distillation terms towards the teacher's image, each (B,) float32, unweighted.

    ``output``, ``target``: (B, 3, H, W) in [0, 1]. Images are compared as the criterion
    sees them (``criterion.measured``: luminance in colour-preserving mode).
    ``ssim`` is ``1 - SSIM`` (:func:`structural_dissimilarity`).
    ``feature`` is the criterion's content distance (:meth:`StyleCriterion.content_distance`)
    between the two images' features at its content layers; pass precomputed
    ``output_features`` / ``target_features`` to save passes.
    """
    terms: dict[str, torch.Tensor] = {}
    if "ssim" in kinds:
        terms["ssim"] = structural_dissimilarity(criterion.measured(output), criterion.measured(target))
    if "pixel_l1" in kinds or "pixel_l2" in kinds:
        diff = criterion.measured(output.float()) - criterion.measured(target.float())
        if "pixel_l1" in kinds:
            terms["pixel_l1"] = diff.abs().flatten(1).mean(dim=1)
        if "pixel_l2" in kinds:
            terms["pixel_l2"] = diff.pow(2).flatten(1).mean(dim=1)
    if "feature" in kinds:
        if output_features is None:
            output_features = criterion.features(output)
        if target_features is None:
            with torch.no_grad():
                target_features = criterion.features(target)
        # The criterion's own content distance: relative per layer with scale-free terms.
        terms["feature"] = criterion.content_distance(output_features, target_features)
    return {kind: terms[kind] for kind in kinds}
