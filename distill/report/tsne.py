"""A 2-D t-SNE of style embeddings that also works for a handful of points."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE


def tsne_2d(embeddings: np.ndarray, *, random_state: int = 0, max_pca: int = 50) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D t-SNE of ``embeddings`` (n, D): PCA to ``min(max_pca, n - 1)`` components first.

    Perplexity is ``min(30, n - 1)`` so that a handful of points (fewer than sklearn's
    default perplexity of 30) works. Returns ``(points (n, 2), info)`` where ``info`` holds
    the perplexity, the PCA components and the random state. One point maps to (0, 0).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    info: dict[str, Any] = {"points": n, "random_state": random_state}
    if n < 2:
        info.update(perplexity=None, pca_components=0)
        return np.zeros((n, 2)), info
    components = max(1, min(max_pca, n - 1, x.shape[1]))
    reduced = PCA(n_components=components, random_state=random_state).fit_transform(x)
    if reduced.shape[1] < 2:  # t-SNE's PCA initialisation needs at least 2 features
        reduced = np.concatenate([reduced, np.zeros((n, 2 - reduced.shape[1]))], axis=1)
    perplexity = float(min(30, n - 1))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=random_state)
    points = tsne.fit_transform(reduced)
    info.update(perplexity=perplexity, pca_components=components)
    return points, info
