"""Local affine colour maps: the premise of photorealistic style transfer, as a filter and as a measure.

Luan et al. (2017) call a result photorealistic when, in every small window, its colours
are an affine function of the photo's colours (``out = A @ photo + b`` per window): then
edges stay where they were and no new texture appears, only the colours change. The same
least-squares fit serves two uses:

- :func:`guided_filter` (He et al. 2013) keeps, per pixel, the average of the affine maps of
  the windows around it: the result becomes locally affine in the guide (the "smooth"
  post-process of the photoreal teacher and students);
- :func:`affine_residual` measures how far a result is from locally affine: the
  root-mean-square error of the best fit in every 3x3 window.

Everything is computed with box filters, so cost is linear in the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Ridge term of :func:`affine_residual` (units of colour variance, images in [0, 1]): about
#: 2.5 grey levels of spread. It stops the fit from explaining texture in a flat window by
#: amplifying the photo's quantisation noise a thousandfold.
RESIDUAL_EPSILON = 1e-4


def _box(images: torch.Tensor, radius: int, *, full: bool) -> torch.Tensor:
    """Mean over (2r+1)^2 windows; ``full`` keeps the size (border windows cover what is inside the image)."""
    size = 2 * radius + 1
    if full:
        return F.avg_pool2d(images, size, stride=1, padding=radius, count_include_pad=False)
    return F.avg_pool2d(images, size, stride=1)


def _fit(guide: torch.Tensor, target: torch.Tensor, radius: int, epsilon: float, *, full: bool):
    """Per-window ridge fit ``target ~ A^T guide + b``.

    ``guide`` (B, 3, H, W), ``target`` (B, C, H, W), float64. Returns A (B, h, w, 3, C),
    b (B, h, w, C), the guide's window covariance (B, h, w, 3, 3), the guide-target
    covariance (B, h, w, 3, C) and the target's window variance per channel (B, h, w, C).
    """
    batch, channels = guide.shape[0], target.shape[1]
    mean_i = _box(guide, radius, full=full)
    mean_p = _box(target, radius, full=full)
    products_ii = torch.stack([guide[:, a] * guide[:, b] for a in range(3) for b in range(3)], dim=1)
    products_ip = torch.stack([guide[:, a] * target[:, c] for a in range(3) for c in range(channels)], dim=1)
    h, w = mean_i.shape[-2:]
    to_last = lambda x: x.permute(0, 2, 3, 1)  # noqa: E731
    cov_ii = to_last(_box(products_ii, radius, full=full)).reshape(batch, h, w, 3, 3)
    cov_ii = cov_ii - to_last(mean_i)[..., :, None] * to_last(mean_i)[..., None, :]
    cov_ip = to_last(_box(products_ip, radius, full=full)).reshape(batch, h, w, 3, channels)
    cov_ip = cov_ip - to_last(mean_i)[..., :, None] * to_last(mean_p)[..., None, :]
    var_p = to_last(_box(target * target, radius, full=full) - mean_p**2)
    ridge = epsilon * torch.eye(3, dtype=guide.dtype, device=guide.device)
    coefficients = _inverse_3x3(cov_ii + ridge) @ cov_ip
    offsets = to_last(mean_p) - (coefficients * to_last(mean_i)[..., :, None]).sum(dim=-2)
    return coefficients, offsets, cov_ii, cov_ip, var_p


def _inverse_3x3(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 3, 3) matrices by cofactors: elementwise operations only, so the
    filter exports to ONNX (which has no batched solve) and runs fast on tiny matrices."""
    a = [[matrix[..., i, j] for j in range(3)] for i in range(3)]
    cofactor = [
        [a[(i + 1) % 3][(j + 1) % 3] * a[(i + 2) % 3][(j + 2) % 3] - a[(i + 1) % 3][(j + 2) % 3] * a[(i + 2) % 3][(j + 1) % 3]
         for j in range(3)]
        for i in range(3)
    ]
    determinant = a[0][0] * cofactor[0][0] + a[0][1] * cofactor[0][1] + a[0][2] * cofactor[0][2]
    # inverse = adjugate / det, adjugate = transposed cofactors
    adjugate = torch.stack([torch.stack([cofactor[j][i] for j in range(3)], dim=-1) for i in range(3)], dim=-2)
    return adjugate / determinant[..., None, None]


def guided_filter(image: torch.Tensor, guide: torch.Tensor, *, radius: int = 2, epsilon: float = 1e-3) -> torch.Tensor:
    """``image`` (B, C, H, W) made locally affine in ``guide`` (B, 3, H, W), both in [0, 1].

    The colour guided filter of He et al.: the affine fit of every (2r+1)^2 window,
    averaged over the windows that cover each pixel, applied to the guide. ``epsilon``
    (colour variance) sets how much of the image's own variation in flat areas of the
    guide is smoothed away. Computed in float32 at least (float64 stays float64), returned
    in ``image``'s dtype; elementwise and pooling operations only, so it exports to ONNX.
    """
    dtype = image.dtype
    work = torch.promote_types(dtype, torch.float32)
    guide_w, image_w = guide.to(work), image.to(work)
    coefficients, offsets, *_ = _fit(guide_w, image_w, radius, epsilon, full=True)
    batch, h, w = coefficients.shape[:3]
    mean_a = _box(coefficients.reshape(batch, h, w, -1).permute(0, 3, 1, 2), radius, full=True)
    mean_b = _box(offsets.permute(0, 3, 1, 2), radius, full=True)
    mean_a = mean_a.permute(0, 2, 3, 1).reshape(batch, h, w, 3, -1)
    result = (mean_a * guide_w.permute(0, 2, 3, 1)[..., :, None]).sum(dim=-2) + mean_b.permute(0, 2, 3, 1)
    return result.permute(0, 3, 1, 2).clamp(0, 1).to(dtype)


def affine_residual(output: torch.Tensor, content: torch.Tensor, *, radius: int = 1, epsilon: float = RESIDUAL_EPSILON) -> float:
    """Root-mean-square residual of the best affine colour map from ``content`` to ``output`` per window.

    ``output``, ``content``: (3, H, W) in [0, 1], same size. Every (2r+1)^2 window inside
    the image (3x3 by default, the windows of the matting Laplacian) gets its own ridge
    least-squares fit; the mean squared error over all windows and channels is returned
    as its square root, in intensity units. 0: a perfect local recolouring of the photo;
    painted strokes, new edges and blur all raise it.
    """
    content64 = content.detach().double().cpu()[None]
    output64 = output.detach().double().cpu()[None]
    coefficients, _, cov_ii, cov_ip, var_p = _fit(content64, output64, radius, epsilon, full=False)
    # E[(p - A^T I - b)^2] = var_p - 2 A^T cov_ip + A^T cov_ii A, per output channel.
    explained = 2 * (coefficients * cov_ip).sum(dim=-2) - (coefficients * (cov_ii @ coefficients)).sum(dim=-2)
    residual = (var_p - explained).clamp_min(0)
    return float(residual.mean().sqrt())
