"""Building blocks shared by the Johnson-style students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditional import StyledSequential, instance_norm


def reflect_conv(
    in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A 'same'-padded convolution whose padding mirrors the image.

    Reflection instead of zero padding avoids dark borders in stylised
    output (zeros look like a black frame to instance norm and the convs).
    """
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        padding_mode="reflect",
        groups=groups,
    )


class ConvInstanceNormReLU(StyledSequential):
    """reflect_conv -> InstanceNorm2d(affine) -> ReLU.

    Instance norm (Ulyanov et al. 2016) rather than batch norm: it removes
    each image's contrast, which is what makes feed-forward stylisation work.
    With ``num_styles`` the norm is conditional (one scale and shift per style,
    :mod:`students.conditional`) and ``forward`` takes the style weights.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1,
                 num_styles: int | None = None):
        super().__init__(
            reflect_conv(in_channels, out_channels, kernel_size=kernel_size, stride=stride),
            instance_norm(out_channels, num_styles),
            nn.ReLU(),
        )


class UpsampleConvInstanceNormReLU(nn.Module):
    """Nearest-neighbour upsample to a given size, then ConvInstanceNormReLU.

    Upsample-then-convolve instead of a transposed conv avoids checkerboard
    artifacts (Odena et al. 2016).  Upsampling to the size of the matching
    encoder feature map, rather than by a factor of 2, lets torch.export
    prove the output size equals the padded input size for dynamic H/W.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, num_styles: int | None = None):
        super().__init__()
        self.conv = ConvInstanceNormReLU(in_channels, out_channels, kernel_size=kernel_size, num_styles=num_styles)

    def forward(self, features: torch.Tensor, style_weights: torch.Tensor | None = None, *,
                size: tuple[int, int]) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, *size)."""
        return self.conv(F.interpolate(features, size=size, mode="nearest"), style_weights)


def sigmoid_output(logits: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
    """The students' output in [0, 1]: ``sigmoid(logits)``, or with an input skip
    ``sigmoid(logits + logit(images))``, so that zero logits return the input itself.

    The skip makes "keep the photo, change what the style changes" the easy function to
    learn: a teacher that keeps most of a photo's structure is a small residual away from
    its input, which a student trained on tens of photos finds far sooner than a mapping
    from scratch. ``logit`` is written with logs (exporters know those) and the input is
    clamped away from 0 and 1, where it is infinite.
    """
    if images is not None:
        clamped = images.clamp(1e-3, 1 - 1e-3)
        logits = logits + torch.log(clamped) - torch.log1p(-clamped)
    return torch.sigmoid(logits)


def zero_init_(conv: nn.Conv2d) -> None:
    """Zero weights and bias: with an input skip, the student starts as the identity."""
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
