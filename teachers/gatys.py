"""The Gatys et al. teacher: optimise the pixels of an image with L-BFGS until the
style criterion is small.

Batched: B content images are optimised at once, each with its own L-BFGS state
(:mod:`teachers.lbfgs`), so each result equals the one the image gets alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from distill.color import transfer_luminance
from distill.criterion import CriterionConfig, StyleCriterion
from distill.imaging import resize_image
from teachers.lbfgs import BatchedLBFGS
from teachers.pyramid import PARAMETERISATIONS, ImageParameterisation

INIT_CHOICES = ("content", "noise", "style")
#: Every this many iterations (and for the result) the teacher also records its objective on
#: the iterate as a saved PNG would hold it (clamped to [0, 1], 8-bit), ``trace["total_8bit"]``:
#: what a student's rounded output must be compared with for "equivalent iterations".
QUANTISED_TRACE_INTERVAL = 5


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines a teacher result (hashed to key the target store)."""

    criterion: CriterionConfig = field(default_factory=CriterionConfig)  # the objective
    size: int = 512  # long side of the content image and of the result, in pixels
    iterations: int = 500  # budget of objective evaluations, summed over all scales
    init: str = "content"  # starting image: "content", "noise" (seeded uniform) or "style" (first style image)
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

    def resolved_parameterisation(self) -> str:
        if self.parameterisation != "auto":
            return self.parameterisation
        return "pixels" if self.criterion.normalisation == "classic" else "laplacian"

    def resolved(self) -> "TeacherConfig":
        """This config with every ``"auto"`` decided (what stores and reports record)."""
        return replace(self, criterion=self.criterion.resolved(), parameterisation=self.resolved_parameterisation())

    def __post_init__(self) -> None:
        if self.parameterisation not in ("auto", *PARAMETERISATIONS):
            raise ValueError(f"parameterisation must be 'auto' or one of {PARAMETERISATIONS}, got {self.parameterisation!r}")
        if not self.pyramid_gain > 0:
            raise ValueError(f"pyramid_gain must be positive, got {self.pyramid_gain}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales) or self.scales[-1] != 1.0:
            raise ValueError(f"scales must lie in (0, 1] and end with 1.0, got {self.scales}")
        if self.iterations < len(self.scales):
            raise ValueError(f"an iteration budget of {self.iterations} cannot cover {len(self.scales)} scales")


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
) -> TeacherResult:
    """Run the teacher on a batch of content images.

    ``content``: (B, 3, H, W) in [0, 1], already at the teacher's size, on the
    criterion's device. ``style_image``: (3, h, w), needed for ``init="style"``.
    ``progress(done, total)`` is called after every evaluation round with evaluations
    counted over the batch. Returns a :class:`TeacherResult`.
    """
    if content.dim() != 4 or content.shape[1] != 3:
        raise ValueError(f"content must be (B, 3, H, W), got {tuple(content.shape)}")

    # oneDNN picks convolution algorithms by batch size, so on the CPU a batched run
    # would drift from single-image runs after a few L-BFGS steps; PyTorch's native CPU
    # convolutions are batch-invariant and, measured at 256 px, no slower per image.
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return _stylize(criterion, content, config=config, style_image=style_image, progress=progress)
    finally:
        torch.backends.mkldnn.enabled = previous


def _stylize(
    criterion: StyleCriterion,
    content: torch.Tensor,
    *,
    config: TeacherConfig,
    style_image: torch.Tensor | None,
    progress: ProgressCallback | None,
) -> TeacherResult:
    device = content.device
    batch, _, height, width = content.shape
    budgets = split_budget(config.iterations, len(config.scales))
    total_evaluations = config.iterations * batch
    started = time.perf_counter()

    traces: list[dict[str, list[float | None]]] = [
        {"total": [], "content": [], "style": [], "tv": [], "scale": [], "total_8bit": []} for _ in range(batch)
    ]
    iterations_run = [0] * batch
    stop_reasons = ["budget"] * batch
    evaluations_done = 0
    image = None
    for scale_index, (scale, budget) in enumerate(zip(config.scales, budgets)):
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled_content = resize_image(content, size=size)
        if image is None:
            image = _initial_image(config, scaled_content, style_image)
        else:
            image = resize_image(image.clamp(0, 1), size=size)
        content_targets = criterion.content_targets(scaled_content)
        variables = ImageParameterisation(config.resolved_parameterisation(), height=size[0], width=size[1], gain=config.pyramid_gain)
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
            terms = criterion(variables.decode(point), content_targets={k: v[rows] for k, v in content_targets.items()})
            (grad,) = torch.autograd.grad(terms.total.sum(), point)
            finest = scale_index == len(config.scales) - 1
            quantised = None
            if finest and iterations_run[int(rows[0])] % QUANTISED_TRACE_INTERVAL == 0:
                with torch.no_grad():
                    quantised = criterion(
                        _as_saved(variables.decode(point.detach()), scaled_content[rows], criterion.luminance_only),
                        content_targets={k: v[rows] for k, v in content_targets.items()},
                    ).total
            for position, row in enumerate(rows.tolist()):
                _record(traces[row], terms, position, scale_index)
                traces[row]["total_8bit"].append(None if quantised is None else float(quantised[position]))
                iterations_run[row] += 1
            report = optimiser.step(rows, terms.total, grad.reshape(len(rows), -1))
            for row, reason in enumerate(report.stopped_reason):
                if reason is not None:
                    stop_reasons[row] = reason
            evaluations_done += len(rows)
            if progress is not None:
                progress(evaluations_done, total_evaluations)
        with torch.no_grad():
            image = variables.decode(optimiser.x)

    result = image.clamp(0, 1)
    if criterion.luminance_only:
        result = transfer_luminance(result, content)
    with torch.no_grad():
        final_targets = criterion.content_targets(content)
        final_terms = criterion(result, content_targets=final_targets)
        final_8bit = criterion(_as_saved(result, content, criterion.luminance_only), content_targets=final_targets).total
    final = [final_terms.item(i) for i in range(batch)]
    for row in range(batch):
        _record(traces[row], final_terms, row, len(config.scales) - 1)
        traces[row]["total_8bit"].append(float(final_8bit[row]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TeacherResult(
        images=result.detach().cpu(),
        traces=traces,
        final=final,
        iterations_run=iterations_run,
        stop_reasons=stop_reasons,
        seconds=time.perf_counter() - started,
        weights=criterion.weights_description,
    )


def _as_saved(images: torch.Tensor, content: torch.Tensor, luminance_only: bool) -> torch.Tensor:
    """What a target PNG holds for these iterates: clamped, colour-transferred if asked, 8-bit."""
    images = images.clamp(0, 1)
    if luminance_only:
        images = transfer_luminance(images, content)
    return images.mul(255).round().div(255)


def _initial_image(config: TeacherConfig, content: torch.Tensor, style_image: torch.Tensor | None) -> torch.Tensor:
    batch, _, height, width = content.shape
    if config.init == "content":
        return content.clone()
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


def _record(trace: dict[str, list[float]], terms, index: int, scale_index: int) -> None:
    for name in ("total", "content", "style", "tv"):
        trace[name].append(float(getattr(terms, name)[index].detach()))
    trace["scale"].append(scale_index)


def stylize_file(
    content_path: str,
    style_paths: list[str],
    *,
    config: TeacherConfig,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, dict]:
    """Stylise one content file with the style file(s): returns the image (3, H, W) and a report dict.

    The report holds the loss trace, the final terms, seconds, iterations run, why the
    optimisation stopped, which weights the loss network had, and the resolved config.
    """
    from distill.config import to_dict
    from distill.criterion import build_criterion
    from distill.imaging import load_image

    config = config.resolved()
    # Every input is read before any work, so a bad style file fails in a second, not after minutes.
    styles = [load_image(path) for path in style_paths]
    content = resize_image(load_image(content_path), long_side=config.size).unsqueeze(0).to(device)
    criterion = build_criterion(config.criterion, styles, device=device)
    result = stylize(criterion, content, config=config, style_image=styles[0].to(device), progress=progress)
    report = {
        "content": str(content_path),
        "styles": [str(path) for path in style_paths],
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
