"""Working with the styles of a multi-style student: pick one, bind it, add one later.

A multi-style student (``create_student(name, styles=[...])``) is called as
``model(images, style_weights)``; its style names are ``model.style_names`` and are
stored in its checkpoint's spec. Adding a style (:func:`extend_styles`) appends one
(gamma, beta) row per conditional norm, started from the mean of the existing styles,
and :func:`train_only_styles` then trains those rows alone: every shared weight, and
every other style, stays exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .conditional import conditional_norms
from .registry import create_student, rebuild_kwargs


def style_names_of(model: nn.Module) -> tuple[str, ...] | None:
    """The style names of a multi-style student; ``None`` for a single-style one."""
    names = getattr(model, "style_names", None)
    return tuple(names) if names else None


def one_hot_styles(indices: torch.Tensor | Sequence[int], count: int) -> torch.Tensor:
    """Style weights (N, count) that pick style ``indices[n]`` for image n."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    return torch.nn.functional.one_hot(indices, count).float()


class StyleBound(nn.Module):
    """A multi-style student with its style mix fixed: ``bound(images)`` = ``student(images, weights)``.

    For code that calls a student with images only (evaluation, sample grids).
    """

    def __init__(self, student: nn.Module, style_weights: torch.Tensor) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("style_weights", style_weights.detach().float().reshape(1, -1), persistent=False)
        self.stride = getattr(student, "stride", 1)
        self.min_side = getattr(student, "min_side", 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images, self.style_weights.to(images.device))


def extend_styles(model: nn.Module, new_styles: Sequence[str]) -> nn.Module:
    """A copy of the multi-style ``model`` with ``new_styles`` appended.

    Every weight is copied; each conditional norm gets one new (gamma, beta) row per new
    style, equal to the mean of the existing rows (a neutral start: the "average style"
    the shared layers already know). Raises ValueError for a single-style model or a
    name it already holds.
    """
    names = style_names_of(model)
    if names is None:
        raise ValueError("only a multi-style student can take another style (train one with --multi-style)")
    clash = sorted(set(names) & set(new_styles))
    if clash:
        raise ValueError(f"the student already holds style(s) {', '.join(clash)}")
    spec = model.student_spec
    # Every weight comes from ``model``: never ask for pretrained weights (a download) again.
    kwargs = {key: value for key, value in rebuild_kwargs(spec["kwargs"]).items() if key != "styles"}
    extended = create_student(spec["name"], styles=[*names, *new_styles], **kwargs)
    extended.student_spec = {"name": spec["name"], "kwargs": {**spec["kwargs"], "styles": [*names, *new_styles]}}
    state = model.state_dict()
    grown = {}
    for key, tensor in extended.state_dict().items():
        old = state[key]
        if old.shape == tensor.shape:
            grown[key] = old
        else:  # a conditional norm's (K, C) weight or bias: append the mean row per new style
            mean = old.mean(dim=0, keepdim=True)
            grown[key] = torch.cat([old, mean.expand(tensor.shape[0] - old.shape[0], -1)], dim=0)
    extended.load_state_dict(grown)
    return extended.to(next(model.parameters()).device)


def train_only_styles(model: nn.Module, indices: Sequence[int]) -> list[torch.utils.hooks.RemovableHandle]:
    """Freeze everything but the conditional-norm rows of styles ``indices``.

    Shared weights stop requiring gradients; the norms' (K, C) parameters keep them, but
    a gradient hook zeroes every row outside ``indices``, so Adam (which moves nothing
    whose gradient has always been zero) and weight decay-free training leave the other
    styles bit for bit as they were. Returns the hooks' handles.
    """
    keep = sorted(set(int(i) for i in indices))
    model.requires_grad_(False)
    handles = []
    for norm in conditional_norms(model):
        mask = torch.zeros(norm.num_styles, 1, device=norm.weight.device)
        mask[keep] = 1.0
        for parameter in (norm.weight, norm.bias):
            parameter.requires_grad_(True)
            # The mask follows the gradient: the model may move to another device after this call.
            handles.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype)))
    return handles
