"""The Gatys et al. teacher: optimise the pixels of an image with L-BFGS until the
style criterion is small.

Batched: B content images are optimised at once, each with its own L-BFGS state
(:mod:`teachers.lbfgs`), so each result equals the one the image gets alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from distill.core.color import recolour_regions, transfer_luminance
from distill.core.config import check_fields, to_dict
from distill.core.devices import format_bytes, memory_capacity, synchronize
from distill.core.errors import ConfigError
from distill.core.imageio import load_image, quantize_8bit, resize_image
from distill.objective.config import CriterionConfig
from distill.core.affine import guided_filter
from distill.core.masks import check_mask_options, fit_mask, load_mask, resize_mask, shared_regions
from distill.objective.criterion import LossTerms, StyleCriterion, build_criterion
from distill.objective.lossnet import FILTER_BANK_TAPS
from distill.objective.matting import DEFAULT_EPSILON, MattingPenalty
from teachers.lbfgs import BatchedLBFGS
from teachers.pyramid import (
    COLOUR_BASES, DEFAULT_COARSEST_SIDE, DEFAULT_LUMINANCE_STEP, PARAMETERISATIONS, ImageParameterisation,
)

INIT_CHOICES = ("content", "noise", "style", "recoloured", "distribution")
#: Every side of a content image, as given and at the teacher's size, needs at least this
#: many pixels: below it the deepest style taps of the loss network have (almost) none left.
MIN_SIDE = 16
#: Memory the teacher needs per pixel of a result, besides L-BFGS's state: the loss network's
#: activations and their gradients. Measured on the CPU at 256 px: 2.0 kB (VGG-19) to 2.6 kB
#: (the texture network); the lower figure is used, so that only sizes that cannot fit are refused.
ACTIVATION_BYTES_PER_PIXEL = 2000
#: Style statistics are taken once, at the style size, without gradients.
STYLE_BYTES_PER_PIXEL = 1000
#: Weight of the photorealism term that ``--photoreal`` sets (measured on the shared photo pairs,
#: see benchmarks/bench_photoreal.py).
DEFAULT_PHOTOREAL_WEIGHT = 1000.0
#: Regulariser of the guided filter that ``smooth`` applies (colour variance; the filter's own
#: default is 1e-3). Measured on the shared photo pairs (radius 2): 1e-3 -> 5e-3 lifts structure
#: kept on in26 (sofa) from 0.59 to 0.61 and on in7 from 0.62 to 0.63; 1e-2 smooths the small
#: regions of in25 (kitchen) back toward their neighbours (least region colour 0.75 -> 0.57).
DEFAULT_SMOOTH_EPSILON = 5e-3
#: Content weight (alpha) of the photoreal teacher: its photorealism weight was measured with
#: style 10x content. The painterly default, 100x, cost structure on the shared pairs (in7
#: 0.61 -> 0.60, in26 0.59 -> 0.58, benchmarks/bench_photoreal.py).
PHOTOREAL_CONTENT_WEIGHT = 1.0
#: Every this many iterations (and for the result) the teacher also records its objective on
#: the iterate as a saved PNG would hold it (clamped to [0, 1], 8-bit), ``trace["total_8bit"]``:
#: what a student's rounded output must be compared with for "equivalent iterations".
QUANTISED_TRACE_INTERVAL = 5


def smoothing_radius(long_side: int) -> int:
    """Window radius of the ``smooth`` guided filter for a result whose long side is ``long_side`` px.

    2 px at 128 px, growing with the square root of the size (3 at 256, 4 at 512, 6 at
    1024). Measured on the shared photo pairs at 256 px (epsilon 5e-3): fixed at 2 px the
    filter leaves the sofa's speckle (structure kept 0.595); in proportion to the size
    (4 px) it blurs the kitchen's small regions into their neighbours (least region 0.62,
    against 0.76 at 3 px).
    """
    return max(2, round(2 * math.sqrt(long_side / 128)))


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines a teacher result (hashed to key the target store)."""

    criterion: CriterionConfig = field(default_factory=CriterionConfig)  # the objective
    size: int = 512  # long side of the content image and of the result, in pixels
    iterations: int = 500  # budget of objective evaluations, summed over all scales
    # starting image: "content", "noise" (seeded uniform), "style" (first style image), "recoloured" (the
    # content recoloured to the style's colour mean and covariance, region by region with masks) or
    # "distribution" (recoloured, then moved to the style's whole colour distribution, region by region)
    init: str = "content"
    scales: tuple[float, ...] = (1.0,)  # coarse-to-fine fractions of ``size``, ending at 1.0, e.g. (0.5, 1.0)
    history_size: int = 100  # L-BFGS curvature pairs kept per image
    learning_rate: float = 1.0  # L-BFGS step length along its direction
    tolerance_grad: float = 1e-7  # stop an image when its largest gradient entry falls below this
    tolerance_change: float = 1e-9  # ... or its loss / step changes less than this
    seed: int = 0  # seeds the noise initialisation
    # What L-BFGS moves: "pixels", or "laplacian" pyramid bands (patches and strokes form
    # before speckle; see teachers.pyramid). auto: laplacian, except pixels for the classic objective.
    parameterisation: str = "auto"
    pyramid_gain: float = 1.5  # step scale of each coarser Laplacian band relative to the next finer one
    pyramid_coarsest: int = DEFAULT_COARSEST_SIDE  # no Laplacian band shorter than this many px (16: the earlier default)
    # The colour axes L-BFGS moves: "rgb", or "decorrelated" (luminance and two chroma axes scaled
    # by how much photos vary along them; see teachers.pyramid). auto: decorrelated with the
    # Laplacian pyramid, rgb on pixels (classic, photoreal). Measured on 24 photo x painting pairs
    # never tuned on (128 px, 200 iterations, random weights): colour moved 0.87 -> 0.91 (least
    # 0.50 -> 0.71), texture 0.46 -> 0.51 (least 0.21 -> 0.28), broader strokes and far less
    # per-pixel colour speckle; structure kept 0.84 -> 0.67 (least 0.69 -> 0.43).
    colour_basis: str = "auto"
    # How far a unit step of the colour variables moves luminance (teachers.pyramid.colour_basis_matrix).
    # None: DEFAULT_LUMINANCE_STEP with the decorrelated basis (more of a dark, flat photo's
    # layout survives), 1 on RGB.
    luminance_step: float | None = None
    # Deep Photo Style Transfer's photorealism term: weight of the content photo's matting
    # Laplacian penalty (teachers.photoreal); 0 = plain Gatys.
    photoreal_weight: float = 0.0
    matting_epsilon: float = DEFAULT_EPSILON  # the matting Laplacian's window regulariser (the paper's 1e-7)
    smooth: bool = False  # post-process: guided filter of the result with the content as guide (locally affine colours)
    smooth_epsilon: float = DEFAULT_SMOOTH_EPSILON  # that filter's regulariser (colour variance smoothed away in flat areas)

    def resolved_parameterisation(self) -> str:
        if self.parameterisation != "auto":
            return self.parameterisation
        return "pixels" if self.criterion.normalisation == "classic" else "laplacian"

    def resolved_colour_basis(self) -> str:
        if self.colour_basis != "auto":
            return self.colour_basis
        return "decorrelated" if self.resolved_parameterisation() == "laplacian" else "rgb"

    def resolved_luminance_step(self) -> float:
        if self.luminance_step is not None:
            return self.luminance_step
        return DEFAULT_LUMINANCE_STEP if self.resolved_colour_basis() == "decorrelated" else 1.0

    def resolved(self) -> "TeacherConfig":
        """This config with every ``"auto"`` decided (what stores and reports record)."""
        return replace(
            self, criterion=self.criterion.resolved(), parameterisation=self.resolved_parameterisation(),
            colour_basis=self.resolved_colour_basis(), luminance_step=self.resolved_luminance_step(),
        )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.size < MIN_SIDE:
            raise ConfigError(f"size must be at least {MIN_SIDE} px (the long side of the result), got {self.size}")
        if self.parameterisation not in ("auto", *PARAMETERISATIONS):
            raise ConfigError(f"parameterisation must be 'auto' or one of {PARAMETERISATIONS}, got {self.parameterisation!r}")
        if self.colour_basis not in ("auto", *COLOUR_BASES):
            raise ConfigError(f"colour_basis must be 'auto' or one of {COLOUR_BASES}, got {self.colour_basis!r}")
        if self.luminance_step is not None and not (math.isfinite(self.luminance_step) and self.luminance_step > 0):
            raise ConfigError(f"luminance-step must be a positive number, got {self.luminance_step}")
        if not (math.isfinite(self.photoreal_weight) and self.photoreal_weight >= 0):
            raise ConfigError(f"photoreal-weight must be a finite number >= 0, got {self.photoreal_weight}")
        if not self.smooth_epsilon > 0:
            raise ConfigError(f"smooth_epsilon must be > 0, got {self.smooth_epsilon}")
        if not self.matting_epsilon > 0:
            raise ConfigError(f"matting_epsilon must be > 0, got {self.matting_epsilon}")
        if not self.pyramid_gain > 0:
            raise ConfigError(f"pyramid_gain must be positive, got {self.pyramid_gain}")
        if self.pyramid_coarsest < 1:
            raise ConfigError(f"pyramid_coarsest must be at least 1 px, got {self.pyramid_coarsest}")
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales) or self.scales[-1] != 1.0:
            raise ConfigError(f"scales must lie in (0, 1] and end with 1.0, got {self.scales}")
        if self.iterations < len(self.scales):
            raise ConfigError(f"an iteration budget of {self.iterations} cannot cover {len(self.scales)} scales")
        if self.history_size < 1 or not self.learning_rate > 0 or self.tolerance_grad < 0 or self.tolerance_change < 0:
            raise ConfigError(
                f"L-BFGS needs history_size >= 1, learning_rate > 0 and tolerances >= 0, got {self.history_size}, "
                f"{self.learning_rate}, {self.tolerance_grad}, {self.tolerance_change}"
            )


def photoreal_teacher(
    config: TeacherConfig, *, weight: float = DEFAULT_PHOTOREAL_WEIGHT, content_weight: float = PHOTOREAL_CONTENT_WEIGHT
) -> TeacherConfig:
    """``config`` as Deep Photo Style Transfer: the photorealism term at ``weight``, and the settings that suit it.

    - content at ``content_weight`` (alpha; style 10x content): a recolouring keeps the
      photo's content, and the photorealism weight was measured at this balance;
    - pixels at one scale: the term's optimum is a recolouring of the photo, so the
      Laplacian pyramid and coarse-to-fine scales, which serve painted strokes, are left
      out (unless ``config`` set a parameterisation explicitly);
    - the start is the photo's colours moved to the style's whole colour distribution
      (``init="distribution"``, region by region with masks), a photorealistic image
      already, which the criterion then refines. Measured against the mean-and-covariance
      recolouring: the least-moved region of in25 (kitchen) went from 0.59 to 0.75 of the
      way to the style's region (benchmarks/bench_photoreal.py);
    - the result is guided-filtered with the photo (``smooth``), the paper's optional
      post-process: it halves the affine residual and removes the speckle that costs
      structure (:data:`DEFAULT_SMOOTH_EPSILON`, :func:`smoothing_radius`);
    - the offline texture network's filter banks are left out (unless ``config`` named its
      style layers): they carry a painting's strokes into flat regions, which a photographic
      result must not take. Measured on a 32 px two-region pair: structure kept 0.10 with
      them, 0.37 without, and the least-moved region's colour 0.17 against 0.46.
    """
    parameterisation = "pixels" if config.parameterisation == "auto" else config.parameterisation
    criterion = replace(config.criterion, content_weight=content_weight)
    resolved = criterion.resolved()
    if config.criterion.style_layers is None and resolved.style_layers:
        criterion = replace(criterion, style_layers=tuple(name for name in resolved.style_layers if name not in FILTER_BANK_TAPS))
    return replace(
        config, criterion=criterion, photoreal_weight=weight,
        parameterisation=parameterisation, scales=(1.0,), init="distribution", smooth=True,
    )


@dataclass
class TeacherResult:
    """Output of :func:`stylize`, per image of the batch."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1], on the CPU
    # per image: total/content/style/tv/scale per iterate, last = final image; total_8bit: the
    # objective of the clamped 8-bit iterate every QUANTISED_TRACE_INTERVAL iterates (else None)
    traces: list[dict[str, list[float | None]]]
    final: list[dict[str, float]]  # per image: loss terms of the returned image
    iterations_run: list[int]  # gradient evaluations actually spent per image
    stop_reasons: list[str]  # "budget", "converged (...)" or "non-finite loss"
    seconds: float  # wall time of the whole batch
    weights: str  # provenance of the loss network's weights


ProgressCallback = Callable[[int, int], None]
#: Runs the teacher: :func:`stylize`, or a caller's wrapper around it (e.g. one that switches
#: oneDNN off, which only the command line may do: it is process-wide).
Teacher = Callable[..., TeacherResult]


def split_budget(iterations: int, scales: int) -> list[int]:
    """Evaluations per scale: an even split, the remainder going to the finest scale."""
    per_scale = iterations // scales
    budget = [per_scale] * scales
    budget[-1] += iterations - per_scale * scales
    return budget


def stylize(
    criterion: StyleCriterion,
    content: torch.Tensor,
    *,
    config: TeacherConfig,
    style_image: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    content_masks: torch.Tensor | None = None,
    style_mask: torch.Tensor | None = None,
) -> TeacherResult:
    """Run the teacher on a batch of content images.

    ``content``: (B, 3, H, W) in [0, 1], already at the teacher's size, on the
    criterion's device. ``style_image``: (3, h, w), needed for ``init="style"``.
    ``content_masks``: (B, H, W) class maps (:mod:`distill.core.masks`), needed when the
    criterion was built with a style mask; ``style_mask`` (h, w), the style image's, is only
    needed by ``init="recoloured"``. ``progress(done, total)`` is called after
    every evaluation round with evaluations counted over the batch. Returns a
    :class:`TeacherResult`.

    Each image's result equals the one it gets alone, up to float rounding, which
    L-BFGS amplifies. On the CPU, oneDNN picks convolution algorithms by batch size, so
    exact batch invariance needs it off (``torch.backends.mkldnn.enabled = False``, a
    process-wide switch this function leaves alone; the command line's teacher sets it,
    see :func:`distill.cli.teacher_args.batch_invariant_teacher`).
    """
    if content.dim() != 4 or content.shape[1] != 3:
        raise ValueError(f"content must be (B, 3, H, W), got {tuple(content.shape)}")
    batch, _, height, width = content.shape
    started = time.perf_counter()
    record = _Record(batch, total_evaluations=config.iterations * batch, progress=progress)
    budgets = split_budget(config.iterations, len(config.scales))
    image = objective = None
    for scale_index, (scale, budget) in enumerate(zip(config.scales, budgets)):
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled_content = resize_image(content, size=size)
        objective = _Objective(criterion, scaled_content, config, None if content_masks is None else resize_mask(content_masks, size))
        if image is None:
            masks = None if content_masks is None else resize_mask(content_masks, size)
            image = _initial_image(config, scaled_content, style_image, masks, style_mask)
        else:
            image = resize_image(image.clamp(0, 1), size=size)
        finest = scale_index == len(config.scales) - 1
        image = _optimise_scale(objective, image, config=config, budget=budget, scale_index=scale_index,
                                finest=finest, record=record)
    return _finish(objective, image, config=config, record=record, scale_index=len(config.scales) - 1, started=started)


class _Objective:
    """What the teacher minimises at one scale: the criterion, plus the photorealism term when asked.

    Holds everything that depends on the content at this size (its features, masks and
    matting Laplacians), so each evaluation only runs the images through the loss network.
    """

    def __init__(self, criterion: StyleCriterion, content: torch.Tensor, config: TeacherConfig, masks: torch.Tensor | None) -> None:
        self.criterion = criterion
        self.content = content
        self.masks = masks
        self.content_targets = criterion.content_targets(content)
        self.photoreal_weight = config.photoreal_weight
        self.matting = MattingPenalty(content, epsilon=config.matting_epsilon) if config.photoreal_weight > 0 else None

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> tuple[LossTerms, torch.Tensor, torch.Tensor]:
        """(criterion terms, weighted photorealism term, total), each per image, for content ``rows``."""
        terms = self.criterion(
            images,
            content_targets={k: v[rows] for k, v in self.content_targets.items()},
            content_masks=None if self.masks is None else self.masks[rows],
        )
        if self.matting is None:
            photoreal = torch.zeros_like(terms.total)
        else:
            photoreal = self.photoreal_weight * self.matting(images, rows.tolist())
        return terms, photoreal, terms.total + photoreal


class _Record:
    """What the teacher records per image as it runs: loss traces, evaluations, why each stopped."""

    def __init__(self, batch: int, *, total_evaluations: int, progress: ProgressCallback | None) -> None:
        self.traces: list[dict[str, list[float | None]]] = [
            {"total": [], "content": [], "style": [], "tv": [], "photoreal": [], "scale": [], "total_8bit": []}
            for _ in range(batch)
        ]
        self.iterations_run = [0] * batch
        self.stop_reasons = ["budget"] * batch
        self.evaluations_done = 0
        self.total_evaluations = total_evaluations
        self.progress = progress

    def add(self, row: int, values: dict[str, float], scale_index: int, total_8bit: float | None) -> None:
        """Image ``row``'s terms (:func:`_terms_of`) and its 8-bit objective, if measured."""
        trace = self.traces[row]
        for name, value in values.items():
            trace[name].append(value)
        trace["scale"].append(scale_index)
        trace["total_8bit"].append(total_8bit)


def _terms_of(terms: LossTerms, photoreal: torch.Tensor, total: torch.Tensor, position: int) -> dict[str, float]:
    """Plain floats of one image's terms, the photorealism term included in the total."""
    values = terms.item(position)
    values["photoreal"] = float(photoreal[position].detach())
    values["total"] = float(total[position].detach())
    return values


def _optimise_scale(
    objective: _Objective,
    image: torch.Tensor,
    *,
    config: TeacherConfig,
    budget: int,
    scale_index: int,
    finest: bool,
    record: _Record,
) -> torch.Tensor:
    """L-BFGS on ``image`` (B, 3, h, w) at one scale for ``budget`` evaluations; returns the optimised images."""
    height, width = image.shape[-2:]
    luminance_only = objective.criterion.luminance_only
    variables = ImageParameterisation(
        config.resolved_parameterisation(), height=height, width=width, gain=config.pyramid_gain,
        coarsest=config.pyramid_coarsest, colour_basis=config.resolved_colour_basis(),
        luminance_step=config.resolved_luminance_step(),
    )
    optimiser = BatchedLBFGS(
        variables.encode(image).clone(),
        history_size=config.history_size,
        lr=config.learning_rate,
        tolerance_grad=config.tolerance_grad,
        tolerance_change=config.tolerance_change,
    )
    # An image that stopped at a coarse scale still starts again at the next one:
    # its optimum there is not the optimum at the finer scale.
    for _ in range(budget):
        rows = optimiser.active.nonzero().flatten()
        if rows.numel() == 0:
            break
        point = optimiser.x[rows].clone().requires_grad_(True)
        terms, photoreal, total = objective(variables.decode(point), rows)
        (grad,) = torch.autograd.grad(total.sum(), point)
        quantised = None
        if finest and record.iterations_run[int(rows[0])] % QUANTISED_TRACE_INTERVAL == 0:
            with torch.no_grad():
                saved = _as_saved(variables.decode(point.detach()), objective.content[rows], luminance_only)
                quantised = objective(saved, rows)[2]
        for position, row in enumerate(rows.tolist()):
            record.add(row, _terms_of(terms, photoreal, total, position), scale_index,
                       None if quantised is None else float(quantised[position]))
            record.iterations_run[row] += 1
        report = optimiser.step(rows, total.detach(), grad.reshape(len(rows), -1))
        for row, reason in enumerate(report.stopped_reason):
            if reason is not None:
                record.stop_reasons[row] = reason
        record.evaluations_done += len(rows)
        if record.progress is not None:
            record.progress(record.evaluations_done, record.total_evaluations)
    with torch.no_grad():
        return variables.decode(optimiser.x)


def _finish(
    objective: _Objective, image: torch.Tensor, *, config: TeacherConfig, record: _Record, scale_index: int, started: float
) -> TeacherResult:
    """The result images (colour put back, smoothed, if asked) with their final terms appended to the traces."""
    content = objective.content
    result = image.clamp(0, 1)
    if objective.criterion.luminance_only:
        result = transfer_luminance(result, content)
    if config.smooth:
        result = guided_filter(result, content, radius=smoothing_radius(max(content.shape[-2:])), epsilon=config.smooth_epsilon)
    rows = torch.arange(content.shape[0], device=content.device)
    with torch.no_grad():
        final = objective(result, rows)
        final_8bit = objective(_as_saved(result, content, objective.criterion.luminance_only), rows)[2]
    values = [_terms_of(*final, row) for row in range(content.shape[0])]
    for row in range(content.shape[0]):
        record.add(row, values[row], scale_index, float(final_8bit[row]))
    synchronize(content.device)
    return TeacherResult(
        images=result.detach().cpu(),
        traces=record.traces,
        final=values,
        iterations_run=record.iterations_run,
        stop_reasons=record.stop_reasons,
        seconds=time.perf_counter() - started,
        weights=objective.criterion.weights_description,
    )


def _as_saved(images: torch.Tensor, content: torch.Tensor, luminance_only: bool) -> torch.Tensor:
    """What a target PNG holds for these iterates: clamped, colour-transferred if asked, 8-bit."""
    images = images.clamp(0, 1)
    if luminance_only:
        images = transfer_luminance(images, content)
    return quantize_8bit(images)


def _initial_image(
    config: TeacherConfig,
    content: torch.Tensor,
    style_image: torch.Tensor | None,
    content_masks: torch.Tensor | None = None,
    style_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    batch, _, height, width = content.shape
    if config.init == "content":
        return content.clone()
    if config.init in ("recoloured", "distribution"):
        if style_image is None:
            raise ValueError(f'init="{config.init}" needs the style image')
        return _recoloured(content, style_image, content_masks, style_mask, whole_distribution=config.init == "distribution")
    if config.init == "noise":
        # One generator per image with the same seed: an image's start does not depend
        # on its position in the batch.
        noise = [
            torch.rand(3, height, width, generator=torch.Generator().manual_seed(config.seed)) for _ in range(batch)
        ]
        return torch.stack(noise).to(content)
    if style_image is None:
        raise ValueError('init="style" needs the style image')
    style = resize_image(style_image.to(content), size=(height, width))
    return style.unsqueeze(0).expand(batch, -1, -1, -1).clone()


def _recoloured(
    content: torch.Tensor,
    style: torch.Tensor,
    content_masks: torch.Tensor | None,
    style_mask: torch.Tensor | None,
    *,
    whole_distribution: bool = False,
) -> torch.Tensor:
    """Each content recoloured to the style's colour statistics (or whole colour distribution), region by
    region when masks are given."""
    long_side = 512  # colour statistics do not need more pixels; the mask follows the style
    if max(style.shape[-2:]) > long_side:
        if style_mask is not None:
            style_mask = resize_mask(style_mask, tuple(resize_image(style, long_side=long_side).shape[-2:]))
        style = resize_image(style, long_side=long_side)
    images = [
        recolour_regions(image, style, None if content_masks is None else content_masks[index], style_mask,
                         whole_distribution=whole_distribution)
        for index, image in enumerate(content)
    ]
    return torch.stack(images).to(content)


class TeacherInputError(ConfigError):
    """A content or style image, or a size, that the teacher cannot work with; found before any work."""


def result_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) of an image of ``height`` x ``width`` resized to ``long_side`` (as :func:`resize_image` does)."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def content_size_problem(height: int, width: int, long_side: int) -> str | None:
    """Why a content image of ``height`` x ``width`` cannot be taught at ``long_side`` px, or ``None``."""
    if min(height, width) < MIN_SIDE:
        return f"too small ({width}x{height} px; every side needs at least {MIN_SIDE} px)"
    new_height, new_width = result_size(height, width, long_side)
    if min(new_height, new_width) < MIN_SIDE:
        return (
            f"too elongated ({width}x{height} px becomes {new_width}x{new_height} at size {long_side}; "
            f"every side needs at least {MIN_SIDE} px)"
        )
    return None


def memory_estimate(
    config: TeacherConfig, result: tuple[int, int], *, batch: int = 1, styles: Sequence[tuple[int, int]] = ()
) -> int:
    """Bytes the teacher needs, at least, for ``batch`` results of ``result`` (H, W) px and style images of (H, W) ``styles``.

    L-BFGS keeps ``history_size`` pairs of vectors of every pixel; the loss network's
    activations come on top (:data:`ACTIVATION_BYTES_PER_PIXEL`), and the style statistics
    are taken once at the style size.
    """
    lbfgs_bytes = (2 * config.history_size + 3) * 3 * 4
    pixels = result[0] * result[1]
    style_pixels = 0
    for height, width in styles:
        if config.criterion.style_size is not None:
            height, width = result_size(height, width, config.criterion.style_size)
        style_pixels = max(style_pixels, height * width)
    return batch * pixels * (ACTIVATION_BYTES_PER_PIXEL + lbfgs_bytes) + style_pixels * STYLE_BYTES_PER_PIXEL


def check_memory(
    config: TeacherConfig,
    result: tuple[int, int],
    *,
    device: torch.device | str,
    batch: int = 1,
    styles: Sequence[tuple[int, int]] = (),
    what: str = "result",
) -> None:
    """:class:`TeacherInputError` when the teacher cannot fit in ``device``'s memory (see :func:`memory_estimate`)."""
    capacity = memory_capacity(device)
    needed = memory_estimate(config, result, batch=batch, styles=styles)
    if capacity is None or needed <= capacity:
        return
    if memory_estimate(config, result, batch=batch) > capacity:
        batch_text = f" (a batch of {batch})" if batch > 1 else ""
        option, value, what = "--size", config.size, f"a {result[1]}x{result[0]} {what}{batch_text}"
    else:
        option, value, what = "--style-size", config.criterion.style_size, "the style statistics"
    raise TeacherInputError(
        f"{option} {value}: the teacher would need about {format_bytes(needed)} for {what}, more than the "
        f"{format_bytes(capacity)} of memory on {torch.device(device).type}; use a smaller {option}"
        + (" or --batch-size" if batch > 1 and option == "--size" else "")
    )


def stylize_file(
    content_path: str,
    style_paths: list[str],
    *,
    config: TeacherConfig,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    teacher: Teacher | None = None,
    content_mask_path: str | None = None,
    style_mask_path: str | None = None,
) -> tuple[torch.Tensor, dict]:
    """Stylise one content file with the style file(s): returns the image (3, H, W) and a report dict.

    The report holds the loss trace, the final terms, seconds, iterations run, why the
    optimisation stopped, which weights the loss network had, and the resolved config.
    ``teacher``: what runs the optimisation (default :func:`stylize`).
    ``content_mask_path`` and ``style_mask_path`` (both or neither): colour-coded semantic
    masks of the content and of the (single) style image; each region is then styled by
    the style's region of the same colour.
    """
    config = config.resolved()
    # Every input is read and checked before any work, so a bad style file fails in a second, not after minutes.
    styles = [load_image(path) for path in style_paths]
    content = load_image(content_path)
    height, width = content.shape[-2:]
    problem = content_size_problem(height, width, config.size)
    if problem is not None:
        raise TeacherInputError(f"{content_path}: {problem}")
    masks = load_mask_pair(content_mask_path, style_mask_path, content.shape[-2:], [s.shape[-2:] for s in styles])
    result = result_size(height, width, config.size)
    check_memory(config, result, device=device, styles=[tuple(style.shape[-2:]) for style in styles])
    content = resize_image(content, long_side=config.size).unsqueeze(0).to(device)
    content_masks = None if masks is None else resize_mask(masks[0], tuple(content.shape[-2:]))[None].to(device)
    criterion = build_criterion(config.criterion, styles, device=device, style_mask=None if masks is None else masks[1])
    result = (teacher or stylize)(
        criterion, content, config=config, style_image=styles[0].to(device), progress=progress, content_masks=content_masks,
        style_mask=None if masks is None else masks[1],
    )
    report = {
        "content": str(content_path),
        "styles": [str(path) for path in style_paths],
        "masks": None if masks is None else {"content": str(content_mask_path), "style": str(style_mask_path)},
        "size": list(result.images.shape[-2:]),
        "weights": result.weights,
        "device": str(device),
        "seconds": result.seconds,
        "iterations_run": result.iterations_run[0],
        "stop_reason": result.stop_reasons[0],
        "final": result.final[0],
        "trace": result.traces[0],
        "config": to_dict(config),
    }
    return result.images[0], report


def load_mask_pair(
    content_mask_path: str | None,
    style_mask_path: str | None,
    content_size: Sequence[int],
    style_sizes: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(content class map, style class map), each fitted to its photo's size, or ``None`` without masks.

    Raises :class:`MaskError` for one mask without the other, several style images, an
    unreadable mask, one of another photo's size, or masks with no region in common;
    warns about regions only one mask has.
    """
    if not check_mask_options(content_mask_path, style_mask_path, len(style_sizes), content_option="--content-mask"):
        return None
    content_mask = fit_mask(load_mask(content_mask_path), tuple(content_size), what=f"content mask {content_mask_path}")
    style_mask = fit_mask(load_mask(style_mask_path), tuple(style_sizes[0]), what=f"style mask {style_mask_path}")
    shared_regions(content_mask, style_mask, what=f"masks {content_mask_path} and {style_mask_path}")
    return content_mask, style_mask
