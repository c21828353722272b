"""Many styles in one student: conditional instance normalisation (Dumoulin et al. 2017).

"A learned representation for artistic style" showed that styles of one feed-forward
network can differ only in the per-channel scale and shift that follow each instance
normalisation: every other weight is shared. A multi-style student therefore keeps one
(gamma, beta) row per style in each normalisation layer and is called with
``style_weights`` (N, K), N = 1 or the batch: a one-hot row picks a style, a convex
combination blends their (gamma, beta), which blends the styles themselves.

The style weights travel through the network as an explicit argument
(:class:`StyledSequential` hands them to the layers that take them), not as state set
on the modules before a call: exporters then see a second graph input, and one model
can serve concurrent callers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: InstanceNorm2d's epsilon, so a single-style and a multi-style student normalise alike.
NORM_EPSILON = 1e-5


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose affine (scale, shift) is a style-weighted mix of K learned rows.

    ``weight`` and ``bias`` are (K, C); ``forward(x, style_weights)`` with ``x`` (B, C, H, W)
    and ``style_weights`` (N, K), N = 1 or B, returns
    ``instance_norm(x) * (style_weights @ weight) + style_weights @ bias``.
    """

    takes_style = True

    def __init__(self, num_features: int, num_styles: int) -> None:
        super().__init__()
        if num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {num_styles}")
        self.num_features, self.num_styles = num_features, num_styles
        # Every style starts as InstanceNorm2d(affine=True) starts: scale 1, shift 0.
        self.weight = nn.Parameter(torch.ones(num_styles, num_features))
        self.bias = nn.Parameter(torch.zeros(num_styles, num_features))

    def forward(self, features: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
        if style_weights is None:
            raise ValueError(
                f"this student holds {self.num_styles} styles: call it with style weights (N, {self.num_styles})"
            )
        normalised = F.instance_norm(features, eps=NORM_EPSILON)
        # The mix and the affine in float32, as InstanceNorm2d applies its affine: under bf16/fp16
        # autocast a matmul would round gamma to 8 bits. Elementwise ops, so autocast leaves them be.
        weights = style_weights.float()[:, :, None]
        scale = (weights * self.weight.float()[None]).sum(dim=1)[:, :, None, None]
        shift = (weights * self.bias.float()[None]).sum(dim=1)[:, :, None, None]
        return (normalised.float() * scale + shift).to(normalised.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_styles={self.num_styles}"


def instance_norm(channels: int, num_styles: int | None) -> nn.Module:
    """The students' normalisation: ``InstanceNorm2d(affine=True)`` for one style (the layer and
    its checkpoint keys as before), :class:`ConditionalInstanceNorm2d` for ``num_styles``."""
    if num_styles is None:
        return nn.InstanceNorm2d(channels, affine=True)
    return ConditionalInstanceNorm2d(channels, num_styles)


def call_styled(module: nn.Module, features: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
    """``module(features, style_weights)`` for layers that take a style, ``module(features)`` for the rest."""
    if getattr(module, "takes_style", False):
        return module(features, style_weights)
    return module(features)


class StyledSequential(nn.Sequential):
    """``nn.Sequential`` that passes ``style_weights`` to the children that take them.

    Its children and their state-dict keys are those of a plain ``nn.Sequential``, so
    single-style checkpoints load unchanged.
    """

    takes_style = True

    def forward(self, features: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        for module in self:
            features = call_styled(module, features, style_weights)
        return features


def conditional_norms(model: nn.Module) -> list[ConditionalInstanceNorm2d]:
    """The model's conditional normalisation layers, in module order."""
    return [module for module in model.modules() if isinstance(module, ConditionalInstanceNorm2d)]


def check_style_call(num_styles: int | None, style_weights: torch.Tensor | None, batch: int) -> None:
    """ValueError, in one line, for style weights that do not fit the student or the batch."""
    if num_styles is None:
        if style_weights is not None:
            raise ValueError("this student holds one style; it takes no style weights")
        return
    if style_weights is None:
        raise ValueError(f"this student holds {num_styles} styles: call it with style weights (N, {num_styles})")
    if style_weights.dim() != 2 or style_weights.shape[1] != num_styles or style_weights.shape[0] not in (1, batch):
        raise ValueError(
            f"style weights must have shape (1, {num_styles}) or ({batch}, {num_styles}), got {tuple(style_weights.shape)}"
        )
