"""The photorealism regulariser of Deep Photo Style Transfer: the matting Laplacian of the photo.

Levin, Lischinski & Weiss (2008) showed that an image V whose colours are, in every 3x3
window, an affine function of the photo's colours has ``V_c^T L V_c = 0`` for the photo's
matting Laplacian L, and that the quadratic form grows with every departure from it. Luan
et al. (2017) add ``sum_c V_c^T L V_c`` to the Gatys objective so that the style can change
the colours of a photo but not paint over it.

L is N x N for N pixels with 81 entries per window, so it is built as a scipy sparse
matrix (vectorised over all windows; scipy is already a dependency of scikit-image, and
its COO -> CSR conversion sums the overlapping windows' entries in compiled code) and
applied as a torch sparse matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

#: Window regulariser of the paper (images in [0, 1]).
DEFAULT_EPSILON = 1e-7
_WINDOWS_PER_CHUNK = 1 << 16


def matting_laplacian(image: torch.Tensor, *, epsilon: float = DEFAULT_EPSILON, radius: int = 1) -> scipy.sparse.csr_matrix:
    """The matting Laplacian (N x N, N = H * W, row-major pixels) of ``image`` (3, H, W) in [0, 1].

    ``L_ij = sum_k [delta_ij - (1 + (I_i - mu_k)^T (Sigma_k + eps / |w| I)^-1 (I_j - mu_k)) / |w|]``
    over the (2r+1)^2 windows k that hold both pixels (Levin et al. 2008, eq. 12). It is
    symmetric and positive semi-definite, and every row sums to zero.
    """
    height, width = image.shape[-2:]
    size = 2 * radius + 1
    count = size * size
    total = height * width
    pixels = image.detach().cpu().double().permute(1, 2, 0).reshape(-1, 3).numpy()
    index = np.arange(total, dtype=np.int32).reshape(height, width)
    # (windows, count) pixel indices of every window that lies inside the image.
    window_index = np.lib.stride_tricks.sliding_window_view(index, (size, size)).reshape(-1, count)
    values = np.empty((len(window_index), count, count))
    for start in range(0, len(window_index), _WINDOWS_PER_CHUNK):  # bounded temporaries at any size
        chunk = slice(start, start + _WINDOWS_PER_CHUNK)
        centred = pixels[window_index[chunk]]
        centred -= centred.mean(axis=1, keepdims=True)
        covariance = np.einsum("wpi,wpj->wij", centred, centred) / count
        inverse = np.linalg.inv(covariance + (epsilon / count) * np.eye(3))
        values[chunk] = np.eye(count) - (1.0 + np.einsum("wpi,wij,wqj->wpq", centred, inverse, centred)) / count
    rows = np.repeat(window_index, count, axis=1).ravel()
    cols = np.tile(window_index, (1, count)).ravel()
    return scipy.sparse.coo_matrix((values.ravel(), (rows, cols)), shape=(total, total)).tocsr()


def to_torch_sparse(matrix: scipy.sparse.csr_matrix, *, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch sparse COO tensor (works on CPU and CUDA)."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data).to(dtype)
    # scipy built it, so it is valid; checking invariants would cost a pass over every entry.
    return torch.sparse_coo_tensor(indices, values, size=matrix.shape, device=device, check_invariants=False).coalesce()


class _QuadraticForm(torch.autograd.Function):
    """``sum_c V_c^T L V_c`` of V (N, C) for a symmetric sparse L, with gradient ``2 L V``."""

    @staticmethod
    def forward(ctx, laplacian: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        applied = torch.sparse.mm(laplacian, values)
        ctx.save_for_backward(applied)
        return (values * applied).sum()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (applied,) = ctx.saved_tensors
        return None, 2 * grad_output * applied


class MattingPenalty:
    """The photorealism term of a batch of content photos: ``sum_c V_c^T L V_c / N`` per image.

    Divided by the pixel count, the term is the mean per-pixel departure from a locally
    affine recolouring, so its weight means the same at 128 px and 1024 px.
    Built once per content batch and size (the Laplacians are the expensive part).
    """

    def __init__(self, contents: torch.Tensor, *, epsilon: float = DEFAULT_EPSILON) -> None:
        self.size = tuple(contents.shape[-2:])
        self.laplacians = [
            to_torch_sparse(matting_laplacian(content, epsilon=epsilon), device=contents.device) for content in contents
        ]

    def __call__(self, images: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """The term (B,) of ``images`` (B, 3, H, W); ``rows``: which content each image belongs to (default 0..B-1)."""
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"images are {tuple(images.shape[-2:])}, the Laplacians were built for {self.size}")
        rows = list(range(images.shape[0])) if rows is None else rows
        pixels = self.size[0] * self.size[1]
        terms = []
        for image, row in zip(images, rows):
            values = image.reshape(image.shape[0], -1).t().float()
            terms.append(_QuadraticForm.apply(self.laplacians[row], values) / pixels)
        return torch.stack(terms)
