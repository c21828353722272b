"""Inference controls: which style of a multi-style student, a mix of styles, and strength.

* ``style_index``: one style of the student (0-based, as ``--list-styles`` numbers them).
* ``style_mix``: a convex combination of styles, ``"0:0.5,3:0.5"`` or by name
  ``"candy:0.7,udnie:0.3"``; the weights are normalised to sum to 1 (they must be >= 0
  and sum to a positive number). The student blends the styles' normalisation
  parameters, which blends the styles (Dumoulin et al. 2017).
* ``strength`` in [0, 1]: the output moves from the content (0, returned exactly) to the
  full stylisation (1) along a straight line in pixel space. It applies to every student,
  single- or multi-style, and to every model format: the runtime applies it after the model.

Every bad control is refused with one line (:class:`StyleControlError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from distill.core.errors import ConfigError
from students.styles import one_hot_styles


class StyleControlError(ConfigError):
    """A style control that does not fit the model (one line, names the model's styles)."""


def _listing(names: Sequence[str]) -> str:
    return ", ".join(f"{index}: {name}" for index, name in enumerate(names))


def parse_style_mix(text: str, names: Sequence[str]) -> dict[int, float]:
    """``"0:0.5,3:0.5"`` or ``"candy:0.5,udnie:0.5"`` -> {style index: weight}.

    Raises:
        StyleControlError: malformed text, an unknown style, a negative or non-finite
            weight, a style named twice.
    """
    mix: dict[int, float] = {}
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        style, sep, weight_text = item.rpartition(":")
        if not sep or not style:
            raise StyleControlError(f"--style-mix expects STYLE:WEIGHT pairs such as 0:0.5,1:0.5; got {item!r}")
        index = _style_index(style.strip(), names)
        try:
            weight = float(weight_text)
        except ValueError:
            raise StyleControlError(f"--style-mix: weight {weight_text!r} of style {style!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise StyleControlError(f"--style-mix: weights must be finite and >= 0, got {weight_text} for style {style!r}")
        if index in mix:
            raise StyleControlError(f"--style-mix names style {index} ({names[index]}) twice")
        mix[index] = weight
    if not mix:
        raise StyleControlError("--style-mix is empty; give STYLE:WEIGHT pairs such as 0:0.5,1:0.5")
    return mix


def _style_index(style: str, names: Sequence[str]) -> int:
    if style in names:
        return list(names).index(style)
    try:
        index = int(style)
    except ValueError:
        raise StyleControlError(f"unknown style {style!r}; the model's styles are {_listing(names)}") from None
    if not 0 <= index < len(names):
        raise StyleControlError(f"style index {index} is out of range; the model holds {len(names)} styles: {_listing(names)}")
    return index


def style_weights(
    names: Sequence[str] | None, *, index: int | str | None = None, mix: str | dict[int, float] | None = None
) -> torch.Tensor | None:
    """The (1, K) style weights that ``index`` or ``mix`` ask for; None for a single-style model.

    No control on a multi-style model picks its first style.

    Raises:
        StyleControlError: a style control for a single-style model, both controls at
            once, an index out of range, a bad mix (see :func:`parse_style_mix`) or one whose
            weights sum to zero.
    """
    if names is None:
        if index is not None or mix is not None:
            raise StyleControlError("this model holds a single style; --style-index and --style-mix apply to multi-style models")
        return None
    if index is not None and mix is not None:
        raise StyleControlError("give --style-index or --style-mix, not both")
    count = len(names)
    if mix is None:
        return one_hot_styles([0 if index is None else _style_index(str(index), names)], count)
    parsed = parse_style_mix(mix if isinstance(mix, str) else ",".join(f"{k}:{v}" for k, v in mix.items()), names)
    total = sum(parsed.values())
    if not total > 0:
        raise StyleControlError("--style-mix weights sum to 0; at least one weight must be positive")
    weights = torch.zeros(1, count)
    for style, weight in parsed.items():
        weights[0, style] = weight / total
    return weights


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1], or :class:`StyleControlError`."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:  # NaN fails too
        raise StyleControlError(f"--strength must lie in [0, 1], got {strength}")
    return strength


def apply_strength(content: torch.Tensor, stylised: torch.Tensor, strength: float) -> torch.Tensor:
    """``content + strength * (stylised - content)``: the content itself at 0, the stylised image at 1."""
    if strength >= 1.0:
        return stylised
    if strength <= 0.0:
        return content.to(stylised.dtype).clone()
    return torch.lerp(content.to(stylised.dtype), stylised, strength)


def describe_styles(names: Sequence[str] | None) -> list[str]:
    """Lines for ``--list-styles``: one per style, ``index<TAB>name``."""
    if names is None:
        return ["this model holds a single style"]
    return [f"{index}\t{name}" for index, name in enumerate(names)]
