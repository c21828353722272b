"""The one style-transfer objective: ``alpha * content + beta * style + gamma * TV``.

A :class:`StyleCriterion` is built once from a loss network and the style image(s). The
Gatys teacher minimises it over pixels, the student trainer minimises it over weights,
and the fidelity report evaluates it: a number printed anywhere in the toolkit means the
same thing. It is stateless with respect to content: the content image (or its
precomputed features) is passed on every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distill.color import luminance_as_rgb
from distill.imaging import resize_image
from distill.lossnet import DEFAULT_LAYERS, LossNetwork, build_loss_network
from distill.losses import content_loss, gram_matrix, layer_weights_for, style_loss, total_variation


@dataclass(frozen=True)
class CriterionConfig:
    """Everything that defines the objective; stored with every teacher target."""

    backbone: str = "vgg19"  # loss network; "resnet50" is the lecture's, any timm name works with explicit layers
    weights: str = "pretrained"  # "pretrained", "random" (offline tests and demos only) or a weights file path
    seed: int = 0  # seeds weights="random" so that random-weight runs are reproducible
    pooling: str = "max"  # "avg" gives Gatys's smoother variant
    content_layers: tuple[str, ...] | None = None  # None: the backbone's defaults (relu4_2 for VGG-19)
    style_layers: tuple[str, ...] | None = None  # None: relu1_1..relu5_1 for VGG-19
    layer_weighting: str = "inverse_square_channels"  # the lecture's 1/C^2 per style layer, or "equal"
    content_weight: float = 1.0  # alpha
    style_weight: float = 1e6  # beta; 1e6 with 1/C^2 weighting equals the PyTorch Gatys tutorial's balance
    tv_weight: float = 1.0  # gamma; mild smoothing, raise to ~100 against high-frequency noise
    style_size: int | None = 512  # long side of the style image(s) when their Grams are taken; None keeps them as given
    style_blend: tuple[float, ...] | None = None  # relative weight of each style image; None = equal
    luminance_only: bool = False  # measure luminance only (colour-preserving transfer)

    def resolved_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(content layers, style layers) with the backbone's defaults filled in."""
        defaults = DEFAULT_LAYERS.get(self.backbone)
        content = self.content_layers or (defaults["content"] if defaults else None)
        style = self.style_layers or (defaults["style"] if defaults else None)
        if not content or not style:
            raise ValueError(f"backbone {self.backbone!r} has no default layers: set content_layers and style_layers")
        return tuple(content), tuple(style)


@dataclass
class LossTerms:
    """Weighted loss terms, one value per image (B,); ``total`` is their sum."""

    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    total: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = self.content + self.style + self.tv

    def mean(self) -> "LossTerms":
        """Batch means (0-dim tensors), for a training step."""
        return LossTerms(self.content.mean(), self.style.mean(), self.tv.mean())

    def item(self, index: int | None = None) -> dict[str, float]:
        """Plain floats of one image (``index``) or of 0-dim terms (``None``)."""
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        return {name: float(pick(getattr(self, name)).detach()) for name in ("total", "content", "style", "tv")}


class StyleCriterion(nn.Module):
    """Content + Gram-matrix style + total-variation objective.

    ``forward(images, content=...)`` takes images (B, 3, H, W) in [0, 1] and the content
    images they should keep (same shape), or their precomputed ``content_targets``, and
    returns :class:`LossTerms` with (B,) tensors. The style targets are fixed at
    construction and broadcast over the batch.
    """

    def __init__(
        self,
        network: LossNetwork,
        *,
        content_layers: Sequence[str],
        style_layers: Sequence[str],
        style_layer_weights: Mapping[str, float],
        target_grams: Mapping[str, torch.Tensor],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        luminance_only: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        self.style_layer_weights = dict(style_layer_weights)
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.luminance_only = luminance_only
        for layer in self.style_layers:
            self.register_buffer(f"target_gram_{layer.replace('.', '_')}", target_grams[layer].float())

    @property
    def weights_description(self) -> str:
        return self.network.weights_description

    def target_gram(self, layer: str) -> torch.Tensor:
        """The blended style target of ``layer``: (1, C, C) float32."""
        return getattr(self, f"target_gram_{layer.replace('.', '_')}")

    def measured(self, images: torch.Tensor) -> torch.Tensor:
        """What the loss network sees: the images, or their luminance in colour-preserving mode."""
        return luminance_as_rgb(images) if self.luminance_only else images

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss-network features of ``images`` at every tap the criterion uses."""
        return self.network(self.measured(images))

    @torch.no_grad()
    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content features to pass as ``content_targets`` when the same content is used many times."""
        features = self.features(content)
        return {layer: features[layer].detach() for layer in self.content_layers}

    def grams(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Gram matrices (B, C, C) float32 of ``images`` at the style layers (or ``layers``)."""
        features = self.features(images)
        return {layer: gram_matrix(features[layer]) for layer in (layers or self.style_layers)}

    def forward(
        self,
        images: torch.Tensor,
        *,
        content: torch.Tensor | None = None,
        content_targets: Mapping[str, torch.Tensor] | None = None,
    ) -> LossTerms:
        if (content is None) == (content_targets is None):
            raise ValueError("pass exactly one of content or content_targets")
        if content_targets is None:
            content_targets = self.content_targets(content)
        features = self.features(images)
        content_term = sum(content_loss(features[layer], content_targets[layer]) for layer in self.content_layers)
        grams = {layer: gram_matrix(features[layer]) for layer in self.style_layers}
        targets = {layer: self.target_gram(layer) for layer in self.style_layers}
        style_term = style_loss(grams, targets, self.style_layer_weights)
        tv_term = total_variation(images) if self.tv_weight else torch.zeros_like(style_term)
        return LossTerms(
            content=self.content_weight * content_term,
            style=self.style_weight * style_term,
            tv=self.tv_weight * tv_term,
        )

    def style_embedding(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Flattened upper-triangular Grams of ``layers`` concatenated: (B, D) float32.

        The style "fingerprint" used for Gram-embedding distances and t-SNE plots.
        """
        parts = []
        for layer, gram in self.grams(images, layers).items():
            rows, cols = torch.triu_indices(gram.shape[-1], gram.shape[-1], device=gram.device)
            parts.append(gram[:, rows, cols])
        return torch.cat(parts, dim=1)


def build_criterion(
    config: CriterionConfig,
    style_images: Sequence[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    network: LossNetwork | None = None,
) -> StyleCriterion:
    """Build the criterion: loss network from ``config`` and blended style targets.

    ``style_images``: one or more (3, H, W) tensors in [0, 1]; each is resized to
    ``config.style_size`` (long side) and its Grams are averaged with the weights
    ``config.style_blend`` (normalised to sum to 1). ``network``: reuse an already built
    loss network (it must match the config).
    """
    if not style_images:
        raise ValueError("at least one style image is needed")
    blend = config.style_blend or tuple(1.0 for _ in style_images)
    if len(blend) != len(style_images):
        raise ValueError(f"{len(style_images)} style image(s) but {len(blend)} style blend weight(s)")
    if any(w < 0 for w in blend) or sum(blend) <= 0:
        raise ValueError(f"style blend weights must be non-negative and not all zero, got {blend}")
    content_layers, style_layers = config.resolved_layers()
    if network is None:
        network = build_loss_network(
            config.backbone,
            weights=config.weights,
            layers=tuple(dict.fromkeys(content_layers + style_layers)),
            seed=config.seed,
            pooling=config.pooling,
            device=device,
        )
    network = network.to(device)
    channels = network.channels()
    layer_weights = layer_weights_for(style_layers, channels, config.layer_weighting)

    probe = StyleCriterion(
        network,
        content_layers=content_layers,
        style_layers=style_layers,
        style_layer_weights=layer_weights,
        target_grams={layer: torch.zeros(1, channels[layer], channels[layer]) for layer in style_layers},
        content_weight=config.content_weight,
        style_weight=config.style_weight,
        tv_weight=config.tv_weight,
        luminance_only=config.luminance_only,
    )
    total_weight = float(sum(blend))
    blended: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for image, weight in zip(style_images, blend):
            if config.style_size is not None:
                image = resize_image(image, long_side=config.style_size)
            grams = probe.grams(image.unsqueeze(0).to(device))
            for layer, gram in grams.items():
                contribution = gram * (weight / total_weight)
                blended[layer] = contribution if layer not in blended else blended[layer] + contribution
    for layer in style_layers:
        probe.target_gram(layer).copy_(blended[layer])
    return probe.to(device)
