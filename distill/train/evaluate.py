"""How far a student is from its teacher during training: held-out metrics and sample grids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.utils import make_grid

from distill.core.color import transfer_luminance
from distill.core.imageio import quantize_8bit
from distill.core.metrics import ssim
from distill.objective.criterion import StyleCriterion
from distill.objective.terms import distill_terms
from distill.train.config import TrainConfig
from distill.train.data import eval_pair


@torch.no_grad()
def evaluate(
    student: nn.Module,
    criterion: StyleCriterion,
    pairs: torch.utils.data.Dataset,
    *,
    config: TrainConfig,
    device: torch.device,
    teacher_cache: dict[int, float] | None = None,
) -> dict[str, float]:
    """Mean held-out metrics in float32, each image whole at long side ``config.eval_size``.

    ``ssim`` (the student's 8-bit output against the teacher's image: what selects
    best.safetensors, because agreement with the teacher, unlike the criterion, cannot be
    met by an output that does not look like the teacher's), ``total`` (the criterion),
    ``content``, ``style``, ``tv``, ``distill_<kind>`` (unweighted) and ``teacher_total``
    (the criterion of the teacher's own images at that size), ``ratio`` = total / teacher_total.
    """
    was_training = student.training
    student.eval()
    count = len(pairs) if config.eval_max_images is None else min(len(pairs), config.eval_max_images)
    sums: dict[str, float] = {}
    try:
        for index in range(count):
            content, target = eval_pair(pairs[index], config.eval_size, device)
            output = student(content).float()
            terms = criterion(output, content=content)
            values = {"total": terms.total, "content": terms.content, "style": terms.style, "tv": terms.tv}
            values.update({f"distill_{k}": v for k, v in distill_terms(criterion, output, target, config.distill_kind).items()})
            if teacher_cache is not None and index in teacher_cache:
                teacher_total = teacher_cache[index]
            else:
                teacher_total = float(criterion(target, content=content).total)
                if teacher_cache is not None:
                    teacher_cache[index] = teacher_total
            values["teacher_total"] = teacher_total
            values["ssim"] = ssim(quantize_8bit(output[0]), target[0])
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + float(value if isinstance(value, float) else value.sum())
    finally:
        student.train(was_training)
    metrics = {name: value / max(count, 1) for name, value in sums.items()}
    metrics["images"] = float(count)
    if metrics.get("teacher_total"):
        metrics["ratio"] = metrics["total"] / metrics["teacher_total"]
    return metrics


@torch.no_grad()
def sample_grid(
    student: nn.Module,
    samples: Sequence[tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    *,
    luminance_only: bool,
    device: torch.device,
) -> torch.Tensor:
    """(3, H, W) grid in [0, 1]: one row per sample, content | teacher | student.

    A sample may carry a third item, the (1, K) style weights a multi-style student runs with.
    """
    was_training = student.training
    student.eval()
    try:
        tiles = []
        for content, target, *style in samples:
            inputs = content.unsqueeze(0).to(device)
            weights = style[0] if style else None
            output = (student(inputs) if weights is None else student(inputs, weights.to(device))).float().clamp(0, 1)
            if luminance_only:
                output = transfer_luminance(output, content.unsqueeze(0).to(device))
            tiles += [content, target, output[0].cpu()]
    finally:
        student.train(was_training)
    return make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)
