"""What the fidelity report measures with the teacher's criterion: k*, ratios, Gram-embedding distances.

Pure functions of traces, numbers and a :class:`distill.objective.criterion.StyleCriterion`;
:mod:`distill.report.fidelity` applies them to a store and a student.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from distill.objective.criterion import StyleCriterion
from distill.objective.terms import gram_embedding

TERMS = ("total", "content", "style", "tv")
GROUPS = ("style", "teacher", "student", "content")  # t-SNE point groups, in legend order


def equivalent_iterations(trace_total: Sequence[float], student_objective: float) -> int | None:
    """The teacher iterations the student's result is worth (k*).

    ``trace_total[k]`` is the teacher's objective after ``k`` L-BFGS iterations
    (``k = 0``: the initial image; the last entry: the image the teacher returned).
    Returns the first ``k`` with ``trace_total[k] <= student_objective``: ``0`` if even
    the teacher's starting image is at least as good as the student, ``None`` if the
    teacher never got that low within its budget (the student beats the teacher's final
    result: k* > iterations run). NaN entries never count as reached. This is the measure
    Johnson et al. (2016) read off their loss curves by hand.
    """
    for k, value in enumerate(trace_total):
        if value <= student_objective:  # False for NaN
            return k
    return None


def finest_scale_trace(trace: dict[str, list[float]]) -> list[float]:
    """The teacher's objective per iterate, as comparable with a student's 8-bit output.

    ``trace["total_8bit"]`` when the teacher recorded it (the objective of each iterate
    clamped and rounded to 8 bits, every few iterations; iterates without a value count
    as ``inf``, so k* rounds up to the next recorded one), else ``trace["total"]`` (older
    stores). Iterates of coarser scales are set to ``inf``: a coarse-to-fine teacher's
    early iterates are smaller images whose objective is not comparable with a full-size
    image's; masking keeps the indices (k still counts every iteration) but never lets a
    coarse iterate be the one that "reached" the student.
    """
    quantised = trace.get("total_8bit")
    if quantised and len(quantised) == len(trace["total"]):
        totals = [math.inf if v is None else float(v) for v in quantised]
    else:
        totals = [float(v) for v in trace["total"]]
    scales = trace.get("scale")
    if not scales or len(scales) != len(totals):
        return totals
    finest = max(scales)
    return [v if s == finest else math.inf for v, s in zip(totals, scales)]


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; 1 for 0/0, +-inf for x/0."""
    if denominator == 0:
        if numerator == 0:
            return 1.0
        return math.copysign(math.inf, numerator)
    return numerator / denominator


def embedding_distances(e_student: np.ndarray, e_teacher: np.ndarray, e_style: np.ndarray) -> dict[str, float]:
    """Euclidean distances between Gram embeddings, absolute and relative to ``||e_style||``."""
    style_norm = float(np.linalg.norm(e_style))
    pairs = {
        "student_teacher": np.linalg.norm(e_student - e_teacher),
        "student_style": np.linalg.norm(e_student - e_style),
        "teacher_style": np.linalg.norm(e_teacher - e_style),
    }
    out = {name: float(value) for name, value in pairs.items()}
    out.update({f"{name}_relative": safe_ratio(float(value), style_norm) for name, value in pairs.items()})
    out["style_norm"] = style_norm
    return out


def default_embedding_layers(criterion: StyleCriterion) -> tuple[str, ...]:
    """The two shallowest style layers: a moderate embedding size (10k dims for VGG-19's relu1_1+relu2_1)."""
    return tuple(criterion.style_layers[:2])


def style_target_embedding(criterion: StyleCriterion, layers: Sequence[str]) -> np.ndarray:
    """The criterion's (blended) style target as an embedding, in the layout of ``style_embedding``."""
    for layer in layers:
        if layer not in criterion.style_layers:
            raise ValueError(f"embedding layer {layer!r} is not a style layer of the criterion {criterion.style_layers}")
    parts = [gram_embedding(criterion.target_gram(layer)) for layer in layers]
    return torch.cat(parts, dim=1)[0].detach().cpu().double().numpy()


@torch.no_grad()
def style_embeddings(criterion: StyleCriterion, images: torch.Tensor, layers: Sequence[str]) -> np.ndarray:
    """``criterion.style_embedding`` of (B, 3, H, W) images as float64 numpy (B, D)."""
    return criterion.style_embedding(images, layers).detach().cpu().double().numpy()
