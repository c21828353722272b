"""The training objective of one batch: the teacher's criterion plus the distillation terms.

    objective = criterion(student(c), content=c).total + distill_weight * sum(distill terms)

The criterion is the teacher's own, rebuilt from the target store
(``store.build_criterion``), so that it cannot drift from what the teacher optimised.
``distill_weight = 0`` is plain Johnson-style perceptual-loss training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from distill.objective.criterion import StyleCriterion
from distill.objective.terms import distill_terms
from distill.train.config import TrainConfig
from students.styles import one_hot_styles


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Keeps the latest output of ``module`` (the loss network) so its features are reused."""
    captured: dict[str, Any] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
    try:
        yield captured
    finally:
        handle.remove()


def compute_objective(
    criterion: StyleCriterion,
    output: torch.Tensor,
    content: torch.Tensor,
    target: torch.Tensor,
    *,
    config: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar objective, named batch-mean terms) of one batch.

    Terms: ``content``, ``style``, ``tv``, ``criterion`` (their sum, the teacher's
    number), ``distill_<kind>`` (unweighted), ``distill`` (weighted sum) and ``objective``.
    Content and target go through the loss network together in one no-grad pass; the
    student output's features are captured from the criterion's own pass.
    """
    kinds = config.distill_kind if config.distill_weight > 0 else ()
    batch = content.shape[0]
    with torch.no_grad():
        if "feature" in kinds:
            reference = criterion.features(torch.cat([content, target]))
            content_targets = {layer: reference[layer][:batch] for layer in criterion.content_target_layers}
            target_features = {layer: reference[layer][batch:] for layer in criterion.content_layers}
        else:
            content_targets, target_features = criterion.content_targets(content), None
    with _capture_output(criterion.network) as captured:
        terms = criterion(output, content_targets=content_targets).mean()
    named = {"content": terms.content, "style": terms.style, "tv": terms.tv, "criterion": terms.total}
    distill = distill_terms(
        criterion, output, target, kinds, output_features=captured.get("out"), target_features=target_features
    )
    weighted = torch.zeros((), device=output.device)
    for kind, value in distill.items():
        named[f"distill_{kind}"] = value.mean()
        weighted = weighted + value.mean()
    named["distill"] = config.distill_weight * weighted
    objective = terms.total + named["distill"]
    named["objective"] = objective
    return objective, named


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` ("fp32" disables it)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def forward_objective(
    model: nn.Module,
    criterion: StyleCriterion,
    content: torch.Tensor,
    target: torch.Tensor,
    *,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Student forward and :func:`compute_objective` under the configured autocast."""
    with autocast_for(config.precision, device):
        output = model(content)
        return compute_objective(criterion, output, content, target, config=config)


def forward_style_objective(
    model: nn.Module,
    criteria: Sequence[StyleCriterion],
    content: torch.Tensor,
    target: torch.Tensor,
    styles: torch.Tensor,
    *,
    model_styles: Sequence[int],
    style_count: int,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A multi-style batch: one student forward with each image's style, each style's own objective.

    ``styles`` (B,): each image's position in ``criteria``; ``model_styles[p]`` is that
    style's index among the student's ``style_count`` styles. The terms are the batch
    means over all images (each style's mean weighted by its share of the batch), so a
    batch of one style gives exactly :func:`compute_objective` of its criterion.
    """
    styles = styles.to(device)
    index_map = torch.as_tensor(list(model_styles), device=device)
    weights = one_hot_styles(index_map[styles], style_count).to(device)
    batch = content.shape[0]
    totals: dict[str, torch.Tensor] = {}
    with autocast_for(config.precision, device):
        output = model(content, weights)
        for position in torch.unique(styles).tolist():
            chosen = styles == position
            share = chosen.sum() / batch
            _, named = compute_objective(criteria[position], output[chosen], content[chosen], target[chosen], config=config)
            for name, value in named.items():
                totals[name] = totals.get(name, 0.0) + share * value
    return totals["objective"], totals


def backward_step(
    objective: torch.Tensor,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    grad_clip: float = 0.0,
) -> None:
    """Backward (loss-scaled for fp16), optional gradient clipping, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(objective).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
