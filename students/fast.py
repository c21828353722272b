"""A small, fast student: Johnson's layout, thin, separable, and with no full-resolution layers.

On CPU a thin network is limited less by multiply-adds than by memory traffic
and by the fixed cost of each parallel op; full-resolution feature maps
dominate both.  This student keeps Johnson's encoder / residual / decoder
layout and its instance normalisation (what makes feed-forward stylisation
work), but:

* it never builds a full-resolution feature map: the image enters through a
  stride-2 5x5 convolution and leaves through a sub-pixel convolution
  (a conv to 3 x 2 x 2 channels at half resolution, then ``pixel_shuffle``;
  Shi et al. 2016) initialised ICNR-style (Aitken et al. 2017) so that it
  starts out free of checkerboard artifacts;
* widths 32 / 64 at half / quarter resolution instead of 64 / 128;
* residual blocks are depthwise-separable (depthwise 3x3 + pointwise 1x1,
  about 8x cheaper than dense 3x3 at 64 channels), three instead of five.

Output is bounded by a sigmoid for the same reason as in
:mod:`students.johnson`: no clamp, so no dead gradients on saturated pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditional import StyledSequential, check_style_call, instance_norm
from .layers import ConvInstanceNormReLU, UpsampleConvInstanceNormReLU, reflect_conv, sigmoid_output, zero_init_
from .padding import crop_to_size, reflect_pad_to_multiple
from .registry import register_student

SUBPIXEL_UPSCALE = 2  # pixel_shuffle factor from half to full resolution


class SeparableResidualBlock(nn.Module):
    """Residual block of two depthwise-separable 3x3 convolutions with instance norm."""

    takes_style = True

    def __init__(self, channels: int, *, num_styles: int | None = None):
        super().__init__()
        self.body = StyledSequential(
            reflect_conv(channels, channels, kernel_size=3, groups=channels),
            nn.Conv2d(channels, channels, 1),
            instance_norm(channels, num_styles),
            nn.ReLU(),
            reflect_conv(channels, channels, kernel_size=3, groups=channels),
            nn.Conv2d(channels, channels, 1),
            instance_norm(channels, num_styles),
        )

    def forward(self, features: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        return features + self.body(features, style_weights)


def icnr_init_(conv: nn.Conv2d, *, upscale: int) -> None:
    """Make a sub-pixel conv start out as "conv, then nearest upsampling".

    Every group of ``upscale**2`` output channels that ``pixel_shuffle`` spreads
    over one upscale x upscale block gets identical weights, so the initial
    output has no checkerboard pattern (Aitken et al. 2017).
    """
    subpixels = upscale**2
    with torch.no_grad():
        base_weight = conv.weight[::subpixels].clone()
        conv.weight.copy_(base_weight.repeat_interleave(subpixels, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[::subpixels].repeat_interleave(subpixels))


class FastStudent(nn.Module):
    """Thin, separable Johnson-style network working at half and quarter resolution.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W >= 5 (any parity).
    Output: (B, 3, H, W) float RGB in [0, 1].
    """

    stride = 4
    min_side = 5  # smallest side whose quarter-resolution features allow reflection padding

    def __init__(self, *, widths: tuple[int, int] = (32, 64), num_residual_blocks: int = 3, input_skip: bool = False,
                 num_styles: int | None = None):
        super().__init__()
        self.input_skip = input_skip
        self.num_styles = num_styles
        half, quarter = widths
        # A strided conv rather than the lossless pixel_unshuffle: unshuffle's shape
        # arithmetic defeats torch.export's dynamic-shape reasoning on padded inputs.
        self.stem = ConvInstanceNormReLU(3, half, kernel_size=5, stride=2, num_styles=num_styles)
        self.down_to_quarter = ConvInstanceNormReLU(half, quarter, kernel_size=3, stride=2, num_styles=num_styles)
        self.residual_blocks = StyledSequential(
            *(SeparableResidualBlock(quarter, num_styles=num_styles) for _ in range(num_residual_blocks))
        )
        self.up_to_half = UpsampleConvInstanceNormReLU(quarter, half, kernel_size=3, num_styles=num_styles)
        self.to_rgb_subpixels = reflect_conv(half, 3 * SUBPIXEL_UPSCALE**2, kernel_size=3)
        icnr_init_(self.to_rgb_subpixels, upscale=SUBPIXEL_UPSCALE)
        if input_skip:
            zero_init_(self.to_rgb_subpixels)

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise ``images`` (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

        ``style_weights`` (1 or B, K): the styles' mix, for a student built with ``num_styles``.
        """
        check_style_call(self.num_styles, style_weights, images.shape[0])
        height, width = images.shape[-2:]
        padded = reflect_pad_to_multiple(images, multiple=self.stride, min_side=self.min_side)
        half = self.stem(padded, style_weights)
        quarter = self.residual_blocks(self.down_to_quarter(half, style_weights), style_weights)
        features = self.up_to_half(quarter, style_weights, size=half.shape[-2:])
        logits = F.pixel_shuffle(self.to_rgb_subpixels(features), SUBPIXEL_UPSCALE)
        output = sigmoid_output(logits, padded if self.input_skip else None)
        return crop_to_size(output, height=height, width=width)


@register_student
def fast(*, widths: tuple[int, int] = (32, 64), num_residual_blocks: int = 3, input_skip: bool = False,
         num_styles: int | None = None) -> FastStudent:
    """Fast CPU student (73 k parameters), roughly 10x faster than ``johnson`` on CPU.

    Args:
        widths: channels at half and quarter resolution.
        num_residual_blocks: depthwise-separable residual blocks at quarter resolution.
        input_skip: predict the change to the input (in logit space), starting from the
            identity (see :func:`students.layers.sigmoid_output`).
        num_styles: conditional instance norm with this many styles (:mod:`students.conditional`).

    Input (B, 3, H, W) in [0, 1] with H, W >= 5; output the same shape in [0, 1].
    """
    return FastStudent(widths=tuple(widths), num_residual_blocks=num_residual_blocks, input_skip=input_skip,
                       num_styles=num_styles)
