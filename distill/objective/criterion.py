"""The one style-transfer objective: ``alpha * content + beta * style + gamma * TV``.

A :class:`StyleCriterion` is built once from a loss network and the style image(s). The
Gatys teacher minimises it over pixels, the student trainer minimises it over weights,
and the fidelity report evaluates it: a number printed anywhere in the toolkit means the
same thing. It is stateless with respect to content: the content image (or its
precomputed features) is passed on every call.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distill.core.color import luminance_as_rgb
from distill.core.imageio import resize_image
from distill.core.masks import regions_of
from distill.objective.config import NORMALISATIONS, STYLE_STATISTICS, CriterionConfig, CriterionError
from distill.objective.lossnet import FILTER_BANK_WEIGHT, LossNetwork, build_loss_network
from distill.objective.regions import RegionTargets, region_style_error, region_targets
from distill.objective.terms import (
    content_loss,
    flat_area_loss,
    gram_embedding,
    gram_matrix,
    layer_weights_for,
    relative_content_loss,
    resample_quantiles,
    sliced_wasserstein_layer_loss,
    sorted_projections,
    style_layer_loss,
    total_variation,
)


class StyleTooSmallWarning(UserWarning):
    """A style image gives a deep style layer fewer than 2x2 positions."""


#: Quantiles kept per projection of a style layer for the sliced-Wasserstein statistic.
STYLE_QUANTILES = 4096


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
    """Content + style statistics + total-variation objective.

    ``forward(images, content=...)`` takes images (B, 3, H, W) in [0, 1] and the content
    images they should keep (same shape), or their precomputed ``content_targets``, and
    returns :class:`LossTerms` with (B,) tensors. The style targets are fixed at
    construction and broadcast over the batch. :func:`build_criterion` is the way in;
    this constructor takes every ingredient explicitly (and defaults to the classic
    Gram objective, whose terms have closed forms).

    ``normalisation="scale_free"``: every layer's error is relative to its target's own
    size: ``||F - P||^2 / ||P||^2`` for content, ``||G - A||^2 / ||A||^2`` for Grams and
    the mean squared difference of quantiles over the style's mean squared quantile for
    sliced Wasserstein. So a layer's width, its activation scale (random or pretrained
    weights, any backbone) and the image size cancel out. The content term is the mean
    over content layers, the style term the weighted mean (weights normalised to sum 1)
    over style layers, so alpha and beta keep their balance across layer sets.
    ``"classic"``: summed mean squared errors with the raw layer weights (Gatys et al.,
    Johnson et al.).
    ``style_statistic="sliced_wasserstein"`` needs ``sw_directions`` and ``sw_quantiles``
    per style layer (see :func:`distill.objective.terms.sliced_wasserstein_layer_loss`).
    ``flat_area_weight`` > 0 adds :func:`distill.objective.terms.flat_area_loss` on the
    network's filter banks to the content term: the photo's flat areas stay flat.
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
        flat_area_weight: float = 0.0,
        luminance_only: bool = False,
        normalisation: str = "classic",
        style_statistic: str = "gram",
        sw_directions: Mapping[str, torch.Tensor] | None = None,
        sw_quantiles: Mapping[str, torch.Tensor] | None = None,
        regions: Mapping[str, RegionTargets] | None = None,
    ) -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        if style_statistic not in STYLE_STATISTICS:
            raise ValueError(f"style_statistic must be one of {STYLE_STATISTICS}, got {style_statistic!r}")
        self.network = network
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        self.style_layer_weights = dict(style_layer_weights)
        if normalisation == "scale_free":
            total = sum(self.style_layer_weights[layer] for layer in self.style_layers)
            self.style_layer_weights = {layer: self.style_layer_weights[layer] / total for layer in self.style_layers}
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.flat_area_weight = float(flat_area_weight)
        #: The taps that the flat-area term compares with the photo's: the loss network's filter banks.
        self.flat_area_layers: tuple[str, ...] = ()
        if self.flat_area_weight > 0:
            self.flat_area_layers = tuple(network.marginal_layers)
            if not self.flat_area_layers:
                raise CriterionError(
                    "the flat-area weight needs a loss network with filter banks (backbone texture_vgg, the offline "
                    "default); set it to 0 with this backbone"
                )
        self.luminance_only = luminance_only
        self.normalisation = normalisation
        self.style_statistic = style_statistic
        for layer in self.style_layers:
            self.register_buffer(f"target_gram_{_key(layer)}", target_grams[layer].float())
        if style_statistic == "sliced_wasserstein":
            if sw_directions is None or sw_quantiles is None:
                raise ValueError("the sliced-Wasserstein statistic needs sw_directions and sw_quantiles")
            for layer in self.style_layers:
                self.register_buffer(f"sw_directions_{_key(layer)}", sw_directions[layer].float())
                self.register_buffer(f"sw_quantiles_{_key(layer)}", sw_quantiles[layer].float())
        #: Palette classes with region-by-region style targets (semantic masks), or None.
        self.region_classes: tuple[int, ...] | None = None
        if regions is not None:
            self.region_classes = regions[self.style_layers[0]].classes
            for layer in self.style_layers:
                self.register_buffer(f"region_grams_{_key(layer)}", regions[layer].grams.float())
                self.register_buffer(f"region_present_{_key(layer)}", regions[layer].present)
                if regions[layer].quantiles is not None:
                    self.register_buffer(f"region_quantiles_{_key(layer)}", regions[layer].quantiles.float())

    @property
    def weights_description(self) -> str:
        return self.network.weights_description

    def target_gram(self, layer: str) -> torch.Tensor:
        """The blended style target of ``layer``: (1, C, C) float32."""
        return getattr(self, f"target_gram_{_key(layer)}")

    def sw_target(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection directions (C, K) and the style's quantiles (1, K, Q) of ``layer``."""
        return getattr(self, f"sw_directions_{_key(layer)}"), getattr(self, f"sw_quantiles_{_key(layer)}")

    def region_target(self, layer: str) -> RegionTargets:
        """The style's per-region statistics of ``layer`` (only with semantic masks)."""
        quantiles = getattr(self, f"region_quantiles_{_key(layer)}", None)
        return RegionTargets(
            self.region_classes, getattr(self, f"region_grams_{_key(layer)}"), quantiles, getattr(self, f"region_present_{_key(layer)}")
        )

    def measured(self, images: torch.Tensor) -> torch.Tensor:
        """What the loss network sees: the images, or their luminance in colour-preserving mode."""
        return luminance_as_rgb(images) if self.luminance_only else images

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss-network features of ``images`` at every tap the criterion uses."""
        return self.network(self.measured(images))

    @property
    def content_target_layers(self) -> tuple[str, ...]:
        """The taps whose content features ``forward`` needs: the content layers, and the flat-area layers."""
        return tuple(dict.fromkeys(self.content_layers + self.flat_area_layers))

    @torch.no_grad()
    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content features to pass as ``content_targets`` when the same content is used many times."""
        features = self.features(content)
        return {layer: features[layer].detach() for layer in self.content_target_layers}

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
        content_masks: torch.Tensor | None = None,
    ) -> LossTerms:
        """Loss terms of ``images``; ``content_masks`` (B, H, W) class maps, needed when the style has masks."""
        if (content is None) == (content_targets is None):
            raise ValueError("pass exactly one of content or content_targets")
        if (self.region_classes is not None) != (content_masks is not None):
            raise ValueError("content masks are needed exactly when the style was given a mask")
        if content_targets is None:
            content_targets = self.content_targets(content)
        features = self.features(images)
        content_term = self.content_weight * self.content_distance(features, content_targets)
        if self.flat_area_layers:
            flat = [flat_area_loss(features[layer], content_targets[layer]) for layer in self.flat_area_layers]
            content_term = content_term + self.flat_area_weight * sum(flat) / len(flat)
        style_term = self._style_term(features, content_masks)
        tv_term = total_variation(images) if self.tv_weight else torch.zeros_like(style_term)
        return LossTerms(
            content=content_term,
            style=self.style_weight * style_term,
            tv=self.tv_weight * tv_term,
        )

    def content_distance(self, features: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The unweighted content term (B,) between two sets of features at the content layers."""
        if self.normalisation == "classic":
            return sum(content_loss(features[layer], targets[layer]) for layer in self.content_layers)
        terms = [relative_content_loss(features[layer], targets[layer]) for layer in self.content_layers]
        return sum(terms) / len(terms)

    def _style_term(self, features: Mapping[str, torch.Tensor], content_masks: torch.Tensor | None) -> torch.Tensor:
        total = None
        for layer in self.style_layers:
            if content_masks is not None:
                directions = self.sw_target(layer)[0] if self.style_statistic == "sliced_wasserstein" else None
                # A filter bank's response inside a flat region of the style is nearly 0: relative to
                # the region's own size its error would swamp every other term, so banks take the
                # whole style's bank size instead (as without masks).
                bank = layer in self.network.marginal_layers and self.normalisation == "scale_free"
                error = region_style_error(
                    features[layer], content_masks, self.region_target(layer), directions,
                    relative=self.normalisation == "scale_free" and not bank,
                )
                if bank:
                    error = error / self._style_scale(layer)
            else:
                error = self.style_layer_error(layer, features[layer])
                if self.normalisation == "scale_free":
                    error = error / self._style_scale(layer)
            term = self.style_layer_weights[layer] * error
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the style term needs at least one layer")
        return total

    def _style_scale(self, layer: str) -> torch.Tensor:
        """The style target's own size: its mean squared entry (Gram) or mean squared quantile (sliced Wasserstein).

        Filter banks (the network's marginal layers) share one size, the mean of theirs: they are
        one descriptor at several scales, and a scale at which the painting has almost no texture
        (stripes averaged away at 1/8) must not turn a small error into the largest term.
        """
        banks = [name for name in self.style_layers if name in self.network.marginal_layers]
        if layer in banks:
            return torch.stack([self._own_style_scale(name) for name in banks]).mean()
        return self._own_style_scale(layer)

    def _own_style_scale(self, layer: str) -> torch.Tensor:
        if self.style_statistic == "gram":
            return self.target_gram(layer).pow(2).mean().clamp_min(1e-12)
        return self.sw_target(layer)[1].pow(2).mean().clamp_min(1e-12)

    def style_layer_error(self, layer: str, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised error (B,) of one style layer's features against the style target."""
        if self.style_statistic == "gram":
            return style_layer_loss(gram_matrix(features), self.target_gram(layer))
        directions, quantiles = self.sw_target(layer)
        return sliced_wasserstein_layer_loss(features, directions, quantiles)

    def style_embedding(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Flattened upper-triangular Grams of ``layers`` concatenated: (B, D) float32.

        The style "fingerprint" used for Gram-embedding distances and t-SNE plots.
        """
        return torch.cat([gram_embedding(gram) for gram in self.grams(images, layers).values()], dim=1)


def _key(layer: str) -> str:
    return layer.replace(".", "_")


def build_criterion(
    config: CriterionConfig,
    style_images: Sequence[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    network: LossNetwork | None = None,
    style_mask: torch.Tensor | None = None,
) -> StyleCriterion:
    """Build the criterion: loss network from ``config`` and blended style targets.

    ``style_images``: one or more (3, H, W) tensors in [0, 1]; each is resized to
    ``config.style_size`` (long side). Their Gram matrices are averaged with the weights
    ``config.style_blend`` (normalised to sum to 1); for the sliced-Wasserstein statistic
    their quantile functions are averaged with the same weights (the Wasserstein
    barycentre along each direction). ``network``: reuse an already built loss network
    (it must match the config). ``style_mask``: a class map (H, W) of the (single) style
    image at its given size (:mod:`distill.core.masks`): the style statistics are then
    kept region by region, and every call needs the content's masks. Warns (:class:`StyleTooSmallWarning`) when a style image is too
    small for a deep style layer; raises :class:`CriterionError` when the network gives
    non-finite features.
    """
    if not style_images:
        raise CriterionError("at least one style image is needed")
    config = config.resolved()
    blend = config.style_blend or tuple(1.0 for _ in style_images)
    if len(blend) != len(style_images):
        raise CriterionError(f"{len(style_images)} style image(s) but {len(blend)} style blend weight(s)")
    if style_mask is not None and len(style_images) != 1:
        raise CriterionError(f"a style mask needs exactly one style image, got {len(style_images)}")
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
    layer_weights = _style_layer_weights(style_layers, channels, config.layer_weighting, network.marginal_layers)
    weights = [w / float(sum(blend)) for w in blend]

    sliced = config.style_statistic == "sliced_wasserstein"
    per_channel, marginal = config.sliced_projections, network.marginal_layers
    directions = _projection_directions(channels, style_layers, seed=config.seed, per_channel=per_channel, marginal_layers=marginal) if sliced else None
    grams: dict[str, torch.Tensor] = {layer: 0.0 for layer in style_layers}
    quantiles: dict[str, torch.Tensor] = {layer: 0.0 for layer in style_layers}
    measure = luminance_as_rgb if config.luminance_only else (lambda x: x)
    regions = None
    with torch.no_grad():
        for image, weight in zip(style_images, weights):
            if config.style_size is not None:
                image = resize_image(image, long_side=config.style_size)
            features = network(measure(image.unsqueeze(0).to(device)))
            if style_mask is not None:
                regions = _region_targets(features, style_mask, style_layers, directions)
            for layer in style_layers:
                _check_style_features(features[layer], layer, image.shape[-2:], config.weights)
                grams[layer] = grams[layer] + weight * gram_matrix(features[layer])
                if directions is not None:
                    projected = sorted_projections(features[layer], directions[layer].to(device))
                    quantiles[layer] = quantiles[layer] + weight * resample_quantiles(projected, STYLE_QUANTILES)
    return StyleCriterion(
        network,
        content_layers=content_layers,
        style_layers=style_layers,
        style_layer_weights=layer_weights,
        target_grams=grams,
        content_weight=config.content_weight,
        style_weight=config.style_weight,
        tv_weight=config.tv_weight, flat_area_weight=config.flat_area_weight,
        luminance_only=config.luminance_only,
        normalisation=config.normalisation,
        style_statistic=config.style_statistic,
        sw_directions=directions,
        sw_quantiles=quantiles if directions is not None else None,
        regions=regions,
    ).to(device)


def _style_layer_weights(
    layers: Sequence[str], channels: Mapping[str, int], weighting: str, banks: Sequence[str]
) -> dict[str, float]:
    """Per style layer weights of ``weighting``, filter banks at :data:`FILTER_BANK_WEIGHT` of a layer's."""
    weights = layer_weights_for(layers, channels, weighting)
    return {layer: weight * (FILTER_BANK_WEIGHT if layer in banks else 1.0) for layer, weight in weights.items()}


def _region_targets(
    features: Mapping[str, torch.Tensor],
    style_mask: torch.Tensor,
    layers: Sequence[str],
    directions: Mapping[str, torch.Tensor] | None,
) -> dict[str, RegionTargets]:
    """Per-region style statistics of every style layer, for the classes that cover enough of the mask."""
    classes = regions_of(style_mask)
    regions = {
        layer: region_targets(features[layer].cpu(), style_mask, classes, None if directions is None else directions[layer])
        for layer in layers
    }
    if not any(bool(target.present.any()) for target in regions.values()):
        raise CriterionError(
            f"the style mask's regions are too small for every style layer ({', '.join(layers)}): "
            "use a larger --style-size or shallower style layers"
        )
    return regions


def _projection_directions(
    channels: Mapping[str, int],
    layers: Sequence[str],
    *,
    seed: int,
    per_channel: int = 1,
    marginal_layers: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Fixed unit directions (C, per_channel * C) per layer, seeded: the objective must not change
    between L-BFGS iterations (Heitz et al. redraw them each step; a quasi-Newton method cannot).

    ``marginal_layers`` (channels that are independent filters) get the channel axes themselves,
    (C, C): each filter's own response histogram. Measured on the texture network's filter
    banks: texture moved further toward the painting than with random mixtures of filters.
    """
    generator = torch.Generator().manual_seed(seed)
    directions = {}
    for layer in layers:
        if layer in marginal_layers:
            directions[layer] = torch.eye(channels[layer])
            continue
        matrix = torch.randn(channels[layer], per_channel * channels[layer], generator=generator)
        directions[layer] = matrix / matrix.norm(dim=0, keepdim=True)
    return directions


def _check_style_features(features: torch.Tensor, layer: str, image_size: Sequence[int], weights: str) -> None:
    height, width = features.shape[-2:]
    if height * width < 4:
        # Not an error: the other layers still carry the style, but this one says little.
        warnings.warn(
            f"the style image ({image_size[1]}x{image_size[0]} px) is small for style layer {layer!r}: its feature map "
            f"is {width}x{height}, too few positions for style statistics; use a larger --style-size",
            StyleTooSmallWarning,
            stacklevel=3,
        )
    if not torch.isfinite(features).all():
        raise CriterionError(
            f"the loss network ({weights} weights) gives non-finite features for the style image at {layer!r}; "
            "check the weights file"
        )
