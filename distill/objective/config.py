"""What defines the objective: :class:`CriterionConfig`, stored with every teacher target."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from distill.core.config import check_fields
from distill.core.errors import ConfigError
from distill.objective.lossnet import DEFAULT_LAYERS, FILTER_BANK_TAPS

#: "scale_free": every term relative to its target's own size; "classic": Gatys/Johnson mean squared errors.
NORMALISATIONS = ("scale_free", "classic")
#: "gram" (Gatys), or "sliced_wasserstein": the whole distribution of feature responses.
STYLE_STATISTICS = ("gram", "sliced_wasserstein")
#: Per-style-layer weights: 1 each, or the lecture's 1 / C_l^2.
LAYER_WEIGHTINGS = ("inverse_square_channels", "equal")
#: Loss-network pooling: VGG's max, or Gatys's smoother average.
POOLINGS = ("max", "avg")
#: The flat-area weight that ``flat_area_weight=None`` resolves to where the style is measured on the filter banks.
DEFAULT_FLAT_AREA_WEIGHT = 0.1


class CriterionError(ConfigError):
    """The objective cannot be built as asked: bad weights, or a loss network that gives non-finite features."""


@dataclass(frozen=True)
class CriterionConfig:
    """Everything that defines the objective; stored with every teacher target.

    ``"auto"`` fields are filled in by :meth:`resolved` from the weights and the
    normalisation; stores and reports keep the resolved config, so "auto" never hides
    which network or statistic was used.
    """

    backbone: str = "auto"  # loss network; auto: vgg19, or texture_vgg with random weights; "resnet50" is the lecture's
    weights: str = "pretrained"  # "pretrained", "random" (offline) or a weights file path
    seed: int = 0  # seeds weights="random" and the sliced-Wasserstein directions, so runs are reproducible
    pooling: str = "max"  # "max", or "avg" (Gatys's smoother variant)
    content_layers: tuple[str, ...] | None = None  # None: the backbone's defaults (relu4_2 for VGG-19)
    style_layers: tuple[str, ...] | None = None  # None: relu1_1..relu5_1 for VGG-19; and bank1..bank8 for texture_vgg
    layer_weighting: str = "equal"  # per style layer: "equal", or the lecture's "inverse_square_channels" (classic)
    # "scale_free": every layer's term is relative to its target's own magnitude, so alpha
    # and beta mean the same on any network, weights, image size and layer count.
    # "classic": Gatys/Johnson mean squared errors, whose balance depends on all of those.
    normalisation: str = "scale_free"
    # "gram" (Gatys), or "sliced_wasserstein": the whole distribution of feature responses,
    # which random-weight networks need to paint rather than speckle; auto picks it for random weights.
    style_statistic: str = "auto"
    # Fixed projection directions per feature channel for the sliced-Wasserstein statistic.
    # Heitz et al. draw C new ones every step; L-BFGS needs a fixed objective, so more fixed
    # directions stand in for the redrawing. Measured on 128 px photo x painting pairs with
    # random weights: 2 per channel moved texture toward the painting by +0.07 on average over
    # 1 per channel (two direction seeds), with broader patches and less speckle; 4 did no better
    # and 8 costs 4x. Each doubling adds about a third to the teacher's time per iteration.
    sliced_projections: int = 2
    # alpha and beta: with scale_free terms, style 100x content stylises every measured photo x
    # painting pair while the photo's layout stays (benchmarks/bench_stylization.py); at 10x,
    # smooth photos kept their own texture. The ratio is what the teacher sees; the style
    # weight stays 10 so that a student's training objective keeps its measured balance of
    # style against distillation (distill.train.config.distill_weight).
    content_weight: float = 0.1  # alpha
    style_weight: float = 10.0  # beta
    tv_weight: float = 0.0  # gamma; total variation, a smoothness prior (it smears painted texture when high)
    # Keeps the photo's flat areas flat: a content term on the filter banks (texture_vgg), weighted
    # per pixel by how flat the photo is there (distill.objective.terms.flat_area_loss). 0: off;
    # None: DEFAULT_FLAT_AREA_WEIGHT where the style layers include the filter banks (the offline
    # default; not the photorealistic teacher, which leaves them out), else off. A painting that
    # is one texture from edge to edge otherwise fills skies and walls with its strokes; measured
    # at 0.1 on four tuning pairs (128 px), structure kept rose by 0.07-0.19 with texture moved
    # as before, and on 30 held-out pairs 23 -> 28 met the stylisation bar (README, "What the
    # teacher does offline").
    flat_area_weight: float | None = None
    style_size: int | None = 512  # long side of the style image(s) when their statistics are taken; None keeps them as given
    style_blend: tuple[float, ...] | None = None  # relative weight of each style image; None = equal
    luminance_only: bool = False  # measure luminance only (colour-preserving transfer)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.normalisation not in NORMALISATIONS:
            raise CriterionError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.style_statistic not in ("auto", *STYLE_STATISTICS):
            raise CriterionError(f"style_statistic must be 'auto' or one of {STYLE_STATISTICS}, got {self.style_statistic!r}")
        if self.pooling not in POOLINGS:
            raise CriterionError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        if self.sliced_projections < 1:
            raise CriterionError(f"sliced_projections must be at least 1 direction per channel, got {self.sliced_projections}")
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise CriterionError(f"layer_weighting must be one of {LAYER_WEIGHTINGS}, got {self.layer_weighting!r}")
        for name in ("content_weight", "style_weight", "tv_weight", "flat_area_weight"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise CriterionError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.style_size is not None and self.style_size < 1:
            raise CriterionError(f"style-size must be a positive number of pixels, got {self.style_size}")
        if self.style_blend is not None and (any(w < 0 for w in self.style_blend) or sum(self.style_blend) <= 0):
            raise CriterionError(f"style blend weights must be non-negative and not all zero, got {self.style_blend}")

    @classmethod
    def classic(cls, **changes) -> "CriterionConfig":
        """The original Gatys/Johnson objective (the toolkit's behaviour before scale-free terms).

        VGG-19 (also with random weights), Gram matrices, mean squared errors, the lecture's
        1/C^2 layer weights, beta 1e6 (the PyTorch Gatys tutorial's balance) and TV 1.
        For reproducing papers; ``changes`` override any field.
        """
        settings = dict(
            backbone="vgg19", pooling="max", layer_weighting="inverse_square_channels", normalisation="classic",
            style_statistic="gram", content_weight=1.0, style_weight=1e6, tv_weight=1.0,
        )
        return cls(**{**settings, **changes})

    def resolved(self) -> "CriterionConfig":
        """This config with every ``"auto"`` field decided, and the backbone's default layers named
        (a backbone's defaults can change between versions; a stored config keeps what was used)."""
        backbone = self.backbone
        if backbone == "auto":
            offline = self.weights == "random" and self.normalisation == "scale_free"
            backbone = "texture_vgg" if offline else "vgg19"
        statistic = self.style_statistic
        if statistic == "auto":
            statistic = "sliced_wasserstein" if self.weights == "random" and self.normalisation == "scale_free" else "gram"
        defaults = DEFAULT_LAYERS.get(backbone)
        content = self.content_layers or (defaults["content"] if defaults else None)
        style = self.style_layers or (defaults["style"] if defaults else None)
        flat_area_weight = self.flat_area_weight
        if flat_area_weight is None:  # on where the style is measured on the filter banks, as it was tuned
            banks = self.normalisation == "scale_free" and any(layer in FILTER_BANK_TAPS for layer in style or ())
            flat_area_weight = DEFAULT_FLAT_AREA_WEIGHT if banks else 0.0
        return dataclasses.replace(
            self, backbone=backbone, style_statistic=statistic, flat_area_weight=flat_area_weight,
            content_layers=tuple(content) if content else None, style_layers=tuple(style) if style else None,
        )

    def resolved_layers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(content layers, style layers) with the backbone's defaults filled in."""
        resolved = self.resolved()
        if not resolved.content_layers or not resolved.style_layers:
            raise CriterionError(f"backbone {resolved.backbone!r} has no default layers: set content_layers and style_layers")
        return resolved.content_layers, resolved.style_layers
