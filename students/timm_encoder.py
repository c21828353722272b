"""Transfer-learning student: a timm backbone encoder with a light U-Net decoder.

Training recipe (two steps): the encoder starts frozen, so step 1 trains only
the decoder on top of (ideally pretrained) features; step 2 calls
:meth:`TimmEncoderStudent.unfreeze_encoder` and fine-tunes everything,
usually with a lower learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .conditional import check_style_call
from .layers import ConvInstanceNormReLU, reflect_conv
from .padding import crop_to_size, reflect_pad_to_multiple
from .registry import register_student

DEFAULT_BACKBONE = "resnet18"


def create_feature_encoder(
    backbone: str, *, pretrained: bool, pretrained_file: str | None
) -> nn.Module:
    """A timm ``features_only`` model; translate download failures into a clear error.

    Raises:
        ValueError: ``backbone`` is not a timm model name.
        RuntimeError: pretrained weights could not be obtained.
    """
    if not timm.is_model(backbone):
        raise ValueError(f"unknown timm backbone {backbone!r} (see timm.list_models())")
    wants_weights = pretrained or pretrained_file is not None
    if not wants_weights:
        return timm.create_model(backbone, features_only=True, pretrained=False)
    overlay = {"file": str(pretrained_file)} if pretrained_file is not None else None
    try:
        return timm.create_model(
            backbone, features_only=True, pretrained=True, pretrained_cfg_overlay=overlay
        )
    except Exception as error:  # download/IO errors come in many types (OSError, HTTP, hub)
        source = f"file {pretrained_file!r}" if pretrained_file else "timm's download"
        raise RuntimeError(
            f"could not load pretrained weights for timm backbone {backbone!r} from {source} "
            f"({type(error).__name__}: {' '.join(str(error).split())}); "
            "pass pretrained=False for random weights, or pretrained_file='path/to/weights' "
            "for a local weights file"
        ) from error


class DecoderStage(nn.Module):
    """Upsample to the skip's size, concatenate the skip, then conv + instance norm + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, num_styles: int | None = None):
        super().__init__()
        self.conv = ConvInstanceNormReLU(in_channels + skip_channels, out_channels, kernel_size=3, num_styles=num_styles)

    def forward(self, features: torch.Tensor, skip: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        # Upsampling to skip.shape (not by x2) keeps sizes exact for any backbone
        # and provable for torch.export with dynamic H/W.
        upsampled = F.interpolate(features, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([upsampled, skip], dim=1), style_weights)


class TimmEncoderStudent(nn.Module):
    """timm encoder (ImageNet-normalised input) + U-Net-style decoder to full resolution.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W >= ``min_side``
    (stride // 2 + 1, i.e. 17 px for stride-32 backbones).
    Output: (B, 3, H, W) float RGB in [0, 1] (sigmoid, as in the other students).

    For torch.export with dynamic H/W use ``Dim(min=stride + 1)``: at smaller
    sizes the deepest feature map can be 1x1, and export specialises size 1.

    The decoder fuses, from deep to shallow, every encoder level and finally
    the normalised input image itself, so full-resolution detail survives.
    """

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        decoder_channels: Sequence[int] | None = None,
        num_styles: int | None = None,
    ):
        super().__init__()
        self.num_styles = num_styles
        self.encoder = create_feature_encoder(
            backbone, pretrained=pretrained, pretrained_file=pretrained_file
        )
        encoder_channels = list(self.encoder.feature_info.channels())
        self.stride = int(self.encoder.feature_info.reduction()[-1])
        self.min_side = self.stride // 2 + 1  # reflection padding needs pad < side

        config = self.encoder.pretrained_cfg
        mean = config.get("mean", IMAGENET_DEFAULT_MEAN)
        std = config.get("std", IMAGENET_DEFAULT_STD)
        # Not persistent: they follow from the backbone name, so checkpoints stay pure weights.
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        # One stage per skip: every shallower encoder level, then the image itself.
        skip_channels = encoder_channels[-2::-1] + [3]
        if decoder_channels is None:
            decoder_channels = [max(16, 256 >> level) for level in range(len(skip_channels))]
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != len(skip_channels):
            raise ValueError(
                f"decoder_channels needs {len(skip_channels)} entries for backbone "
                f"{backbone!r}, got {len(decoder_channels)}"
            )
        in_channels = [encoder_channels[-1]] + decoder_channels[:-1]
        self.decoder_stages = nn.ModuleList(
            DecoderStage(c_in, c_skip, c_out, num_styles=num_styles)
            for c_in, c_skip, c_out in zip(in_channels, skip_channels, decoder_channels)
        )
        self.to_rgb = reflect_conv(decoder_channels[-1], 3, kernel_size=3)
        self.freeze_encoder()

    @property
    def encoder_frozen(self) -> bool:
        """True while no encoder parameter is trainable."""
        return not any(p.requires_grad for p in self.encoder.parameters())

    def freeze_encoder(self) -> None:
        """Stop training the encoder (step 1 of the recipe); its norm statistics freeze too."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def unfreeze_encoder(self) -> None:
        """Train the encoder as well (step 2); it follows the model's train/eval mode again."""
        self.encoder.requires_grad_(True)
        self.encoder.train(self.training)

    def train(self, mode: bool = True) -> TimmEncoderStudent:
        super().train(mode)
        if self.encoder_frozen:
            # BatchNorm running statistics update in train mode even without
            # gradients; a frozen encoder must not drift away from its weights.
            self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise ``images`` (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

        ``style_weights`` (1 or B, K): the styles' mix, for a student built with ``num_styles``
        (the decoder's norms are conditional; the encoder is shared by every style).
        """
        check_style_call(self.num_styles, style_weights, images.shape[0])
        height, width = images.shape[-2:]
        padded = reflect_pad_to_multiple(images, multiple=self.stride, min_side=self.min_side)
        normalised = (padded - self.input_mean) / self.input_std
        encoder_levels = self.encoder(normalised)
        skips = encoder_levels[-2::-1] + [normalised]
        features = encoder_levels[-1]
        for stage, skip in zip(self.decoder_stages, skips):
            features = stage(features, skip, style_weights)
        logits = self.to_rgb(features)
        return crop_to_size(torch.sigmoid(logits), height=height, width=width)


@register_student
def timm_encoder(
    *,
    backbone: str = DEFAULT_BACKBONE,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    decoder_channels: Sequence[int] | None = None,
    num_styles: int | None = None,
) -> TimmEncoderStudent:
    """Transfer-learning student on a timm ``features_only`` backbone; encoder starts frozen.

    Args:
        backbone: any timm model name that supports ``features_only``
            (e.g. "resnet18", "mobilenetv3_small_100").
        pretrained: load timm's pretrained weights (downloads them).
        pretrained_file: load pretrained weights from this local file instead
            of downloading (implies pretrained).
        decoder_channels: width of each decoder stage, deep to shallow, one per
            encoder level (default 256, 128, 64, 32, 16 for 5-level backbones).
        num_styles: conditional instance norm in the decoder with this many styles
            (:mod:`students.conditional`).

    Input (B, 3, H, W) in [0, 1] with H, W >= 17 for stride-32 backbones;
    output the same shape in [0, 1].
    """
    return TimmEncoderStudent(
        backbone=backbone,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        decoder_channels=decoder_channels,
        num_styles=num_styles,
    )
