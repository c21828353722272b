"""Name -> factory registry for student networks (timm-style).

Each factory is a plain function decorated with :func:`register_student`;
its ``__name__`` is the public name.  :func:`create_student` stamps the
name and keyword arguments on the model as ``student_spec`` so that a
checkpoint can rebuild the exact architecture from metadata alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from distill.core.affine import guided_filter
from distill.core.color import transfer_luminance

StudentFactory = TypeVar("StudentFactory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_student(factory: StudentFactory) -> StudentFactory:
    """Register ``factory`` under its function name and return it unchanged.

    Raises:
        ValueError: if another factory already uses that name (silently
            replacing it would make checkpoints ambiguous).
    """
    name = factory.__name__
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"a student named {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory


def list_students() -> list[str]:
    """Names accepted by :func:`create_student`, sorted."""
    return sorted(_FACTORIES)


class StudentWrapper(nn.Module):
    """A student network with a fixed transform of its output, as part of the model.

    Part of the model, so checkpoints, tiled inference and every export format apply it
    (a flag beside the weights would be lost by the first runtime that ignores it).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.stride = getattr(student, "stride", 1)
        self.min_side = getattr(student, "min_side", 1)

    def __getattr__(self, name: str) -> Any:
        # Training hooks such as timm_encoder's unfreeze_encoder() live on the wrapped student.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["student"], name)


class ColourPreservingStudent(StudentWrapper):
    """A student whose output keeps its input's colours: the wrapped network's luminance
    with the input's chroma (YIQ I and Q), as a colour-preserving teacher returns."""

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        return transfer_luminance(self.student(images, style_weights), images)


class AffineSmoothedStudent(StudentWrapper):
    """A photorealistic student: the wrapped network's output made locally affine in its input.

    The colour guided filter (:func:`distill.core.affine.guided_filter`, 5x5 windows) keeps,
    in every small window, only what an affine colour map of the input photo can express:
    the photorealism premise of Deep Photo Style Transfer, enforced at inference for a few
    milliseconds instead of learned approximately. Part of the model (trained through,
    checkpointed, tiled and exported with it); pooling and elementwise operations only.
    """

    def __init__(self, student: nn.Module, *, radius: int = 2, epsilon: float = 1e-3) -> None:
        super().__init__(student)
        self.radius = radius
        self.epsilon = epsilon

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        return guided_filter(self.student(images, style_weights), images, radius=self.radius, epsilon=self.epsilon)


def rebuild_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A saved spec's kwargs for rebuilding a student whose weights are all at hand (a checkpoint):
    requests for pretrained weights are dropped, since re-downloading them would make loading
    need the network."""
    kwargs = dict(kwargs)
    if kwargs.get("pretrained"):
        kwargs["pretrained"] = False
    kwargs.pop("pretrained_file", None)
    return kwargs


def create_student(
    name: str,
    *,
    preserve_color: bool = False,
    smooth_output: bool = False,
    styles: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the student registered as ``name``.

    Every student maps an image batch of shape (B, 3, H, W), float RGB in
    [0, 1], to a stylised batch of the same shape and range.

    Args:
        name: one of :func:`list_students`.
        preserve_color: wrap the network in :class:`ColourPreservingStudent`, for
            students of colour-preserving teachers.
        smooth_output: wrap it (outermost) in :class:`AffineSmoothedStudent`, for
            students of photorealistic teachers.
        styles: the names of the styles of a multi-style student (conditional instance
            norm, :mod:`students.conditional`): the model is then called as
            ``model(images, style_weights)`` with style weights (1 or B, len(styles)) and
            carries the names as ``model.style_names``. ``None``: one style.
        **kwargs: keyword hyperparameters of that student; they must be
            JSON-serialisable because they are stored in checkpoints.

    Returns:
        The model, with ``model.student_spec = {"name": name, "kwargs": kwargs}`` (the
        wrapper flags and ``styles`` included, so a checkpoint rebuilds it exactly).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names) or
            kwargs that are not JSON-serialisable.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(list_students()) or "(none)"
        raise ValueError(f"unknown student {name!r}; known students: {known}")
    if styles is not None:
        styles = [str(style) for style in styles]
        if not styles:
            raise ValueError("a multi-style student needs at least one style name")
        if len(set(styles)) != len(styles):
            raise ValueError(f"style names must be unique, got {styles}")
        if "num_styles" in kwargs:
            raise ValueError("give styles (their names), not num_styles")
    flags = {
        **({"preserve_color": True} if preserve_color else {}),
        **({"smooth_output": True} if smooth_output else {}),
        **({"styles": styles} if styles is not None else {}),
    }
    spec = {"name": name, "kwargs": {**kwargs, **flags}}
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as error:
        # Caught here rather than at save time, when the training run is over.
        raise ValueError(
            f"student {name!r} kwargs must be JSON-serialisable to be checkpointed: {error}"
        ) from error
    model = factory(**kwargs, **({"num_styles": len(styles)} if styles is not None else {}))
    if preserve_color:
        model = ColourPreservingStudent(model)
    if smooth_output:
        model = AffineSmoothedStudent(model)
    model.student_spec = spec
    model.style_names = tuple(styles) if styles is not None else None
    return model
