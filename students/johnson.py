"""Johnson et al. 2016 transformer network, as in pytorch/examples fast_neural_style.

Same layers and widths as the reference (1,679,235 parameters), with three
deliberate departures:

* images are float RGB in [0, 1] in and out, not [0, 255];
* the last convolution is followed by a sigmoid so the output is bounded
  to [0, 1] without clamping (a clamp has zero gradient wherever it is
  active, which stalls training on saturated pixels; sigmoid is the same
  function as the "scaled tanh" (tanh(z) + 1) / 2 at half the logit
  scale, in one op that exports cleanly);
* inputs of any size >= 5 px are reflection-padded to a multiple of the
  network stride (4) and cropped back, so output H, W == input H, W.
"""

from __future__ import annotations

import torch
from torch import nn

from .conditional import StyledSequential, check_style_call, instance_norm
from .layers import ConvInstanceNormReLU, UpsampleConvInstanceNormReLU, reflect_conv, sigmoid_output, zero_init_
from .padding import crop_to_size, reflect_pad_to_multiple
from .registry import register_student


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm and an identity shortcut (He et al. 2016)."""

    takes_style = True

    def __init__(self, channels: int, *, num_styles: int | None = None):
        super().__init__()
        self.body = StyledSequential(
            reflect_conv(channels, channels, kernel_size=3),
            instance_norm(channels, num_styles),
            nn.ReLU(),
            reflect_conv(channels, channels, kernel_size=3),
            instance_norm(channels, num_styles),
        )

    def forward(self, features: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        return features + self.body(features, style_weights)


class JohnsonNet(nn.Module):
    """Image transformation network of Johnson et al. 2016.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W >= 5 (any parity).
    Output: (B, 3, H, W) float RGB in [0, 1].
    """

    stride = 4
    min_side = 5  # smallest side whose stride-4 features still allow reflection padding

    def __init__(self, *, num_residual_blocks: int = 5, input_skip: bool = False, num_styles: int | None = None):
        super().__init__()
        self.input_skip = input_skip
        self.num_styles = num_styles
        self.stem = ConvInstanceNormReLU(3, 32, kernel_size=9, num_styles=num_styles)
        self.down_to_half = ConvInstanceNormReLU(32, 64, kernel_size=3, stride=2, num_styles=num_styles)
        self.down_to_quarter = ConvInstanceNormReLU(64, 128, kernel_size=3, stride=2, num_styles=num_styles)
        self.residual_blocks = StyledSequential(
            *(ResidualBlock(128, num_styles=num_styles) for _ in range(num_residual_blocks))
        )
        self.up_to_half = UpsampleConvInstanceNormReLU(128, 64, kernel_size=3, num_styles=num_styles)
        self.up_to_full = UpsampleConvInstanceNormReLU(64, 32, kernel_size=3, num_styles=num_styles)
        self.to_rgb = reflect_conv(32, 3, kernel_size=9)
        if input_skip:
            zero_init_(self.to_rgb)

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise ``images`` (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

        ``style_weights`` (1 or B, K): the styles' mix, for a student built with ``num_styles``.
        """
        check_style_call(self.num_styles, style_weights, images.shape[0])
        height, width = images.shape[-2:]
        padded = reflect_pad_to_multiple(images, multiple=self.stride, min_side=self.min_side)
        half = self.down_to_half(self.stem(padded, style_weights), style_weights)
        quarter = self.residual_blocks(self.down_to_quarter(half, style_weights), style_weights)
        features = self.up_to_half(quarter, style_weights, size=half.shape[-2:])
        features = self.up_to_full(features, style_weights, size=padded.shape[-2:])
        output = sigmoid_output(self.to_rgb(features), padded if self.input_skip else None)
        return crop_to_size(output, height=height, width=width)


@register_student
def johnson(*, num_residual_blocks: int = 5, input_skip: bool = False, num_styles: int | None = None) -> JohnsonNet:
    """Johnson et al. 2016 reference student (1.68 M parameters with 5 residual blocks).

    ``input_skip``: predict the change to the input (in logit space) instead of the
    output itself, starting from the identity (see :func:`students.layers.sigmoid_output`).
    ``num_styles``: conditional instance norm with this many styles (:mod:`students.conditional`).
    Input (B, 3, H, W) in [0, 1] with H, W >= 5; output the same shape in [0, 1].
    """
    return JohnsonNet(num_residual_blocks=num_residual_blocks, input_skip=input_skip, num_styles=num_styles)
