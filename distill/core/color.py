"""Colour helpers: luminance-only transfer (Gatys et al., "Preserving color in neural
artistic style transfer", 2016: stylise the luminance, keep the content's chroma), the
linear colour transfer that recolours a photo to another image's colour statistics, and
the iterative distribution transfer that moves its colours to another image's whole
colour distribution."""

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


def match_colour_statistics(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``image`` (3, H, W) recoloured so its RGB mean and covariance equal ``reference``'s (clamped to [0, 1]).

    The linear Monge-Kantorovich map (Pitie & Kokaram 2007): the colour transfer that
    moves the pixels least. It is the baseline "recolour the photo" that a stylisation
    must beat on texture, and a student must beat on agreement with its teacher.
    """
    pixels = image.detach().cpu().reshape(3, -1).double()
    mapped = _monge_kantorovich(pixels, reference.detach().cpu().reshape(3, -1).double())
    return mapped.reshape(image.shape).clamp(0, 1).to(image.dtype)


def recolour_regions(
    image: torch.Tensor,
    reference: torch.Tensor,
    image_mask: torch.Tensor | None,
    reference_mask: torch.Tensor | None,
    *,
    whole_distribution: bool = False,
) -> torch.Tensor:
    """:func:`match_colour_statistics` region by region: each region of ``image`` (3, H, W) gets the colour
    statistics of the same region of ``reference`` (3, h, w); class maps (H, W), (h, w), or ``None``
    for one region. Regions the reference lacks (or has fewer than 16 pixels of) keep their colours.

    ``whole_distribution``: after the linear map, :func:`_distribution_transfer` moves each
    region's colours to the reference region's whole colour distribution, not only its mean
    and covariance (a region of sky and sand is two clusters of colour, not one ellipsoid).
    """
    transfer = _distribution_transfer if whole_distribution else _monge_kantorovich
    pixels = image.detach().cpu().reshape(3, -1).double()
    target = reference.detach().cpu().reshape(3, -1).double()
    if image_mask is None or reference_mask is None:
        return transfer(pixels, target).reshape(image.shape).clamp(0, 1).to(image.dtype)
    image_mask, reference_mask = image_mask.cpu().flatten(), reference_mask.cpu().flatten()
    result = pixels.clone()
    for region in image_mask.unique():
        inside, source = image_mask == region, reference_mask == region
        if int(inside.sum()) >= 16 and int(source.sum()) >= 16:
            result[:, inside] = transfer(pixels[:, inside], target[:, source])
    return result.reshape(image.shape).clamp(0, 1).to(image.dtype)


#: Rotations of the iterative distribution transfer: Pitie et al. report convergence within
#: 10-20; on the shared photo pairs 10 already match each region's colours (sliced
#: Wasserstein in CIELAB within about Delta E 4 of the style's region).
DISTRIBUTION_TRANSFER_ROTATIONS = 10


def _distribution_transfer(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Colours (3, N) moved to the whole colour distribution of ``target`` (3, M); float64.

    The linear map first (mean and covariance), then Pitie, Kokaram & Dahyot's iterative
    distribution transfer (2005): in a random orthonormal colour basis, match each axis's
    1-D distribution to the target's by quantiles, and repeat in new bases. Every step is a
    monotone function of the colour, so the result is still a colour map of the photo
    (pixels of equal colour stay equal); the rotations are seeded, so it is reproducible.
    """
    mapped = _monge_kantorovich(pixels, target)
    generator = torch.Generator().manual_seed(0)
    count, target_count = mapped.shape[1], target.shape[1]
    # Where each pixel's rank falls among the target's sorted values (linear interpolation).
    position = ((torch.arange(count, dtype=torch.float64) + 0.5) / count * target_count - 0.5).clamp(0, target_count - 1)
    below, weight = position.floor().long(), position - position.floor()
    above = (below + 1).clamp(max=target_count - 1)
    for _ in range(DISTRIBUTION_TRANSFER_ROTATIONS):
        basis, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        projected, target_sorted = basis.T @ mapped, (basis.T @ target).sort(dim=1).values
        quantiles = target_sorted[:, below] * (1 - weight) + target_sorted[:, above] * weight
        matched = torch.empty_like(projected)
        for axis in range(3):
            values, order = projected[axis].sort()
            # Equal values share the mean of their quantiles: a flat region (clipped black, a
            # white wall) stays flat instead of being spread over the target's range.
            _, group, sizes = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
            shared = torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, group, quantiles[axis]) / sizes
            matched[axis, order] = shared[group]
        mapped = mapped + basis @ (matched - projected)
    return mapped


def _monge_kantorovich(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Colours (3, N) mapped linearly to the mean and covariance of ``target`` (3, M); float64."""
    mean_x, mean_y = pixels.mean(1, keepdim=True), target.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64) * 1e-6
    cov_x = torch.cov(pixels) + eye
    cov_y = torch.cov(target) + eye
    root_x = _sqrtm(cov_x)
    inverse_root_x = torch.linalg.inv(root_x)
    transform = inverse_root_x @ _sqrtm(root_x @ cov_y @ root_x) @ inverse_root_x
    return transform @ (pixels - mean_x) + mean_y


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
