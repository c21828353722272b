"""The Gatys teacher on the command line: its options, and the process settings it runs under.

Shared by the ``teacher`` and ``targets`` commands, so both take the same options and
their results are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import warnings
from collections.abc import Iterator

import torch

from distill.cli.console import fail
from distill.objective.config import (
    DEFAULT_FLAT_AREA_WEIGHT, LAYER_WEIGHTINGS, NORMALISATIONS, POOLINGS, STYLE_STATISTICS, CriterionConfig,
)
from teachers import gatys
from teachers.gatys import (
    DEFAULT_PHOTOREAL_WEIGHT, INIT_CHOICES, MIN_SIDE, PHOTOREAL_CONTENT_WEIGHT, TeacherConfig, TeacherResult, photoreal_teacher,
)
from teachers.pyramid import COLOUR_BASES, DEFAULT_LUMINANCE_STEP, PARAMETERISATIONS


def add_teacher_arguments(parser: argparse.ArgumentParser, *, style_required: bool = True) -> None:
    """The Gatys teacher's options, the same for every script that runs the teacher."""
    defaults = TeacherConfig()
    criterion = defaults.criterion
    classic = CriterionConfig.classic()
    group = parser.add_argument_group("teacher")
    group.add_argument(
        "--style", action="append", required=style_required, default=[], metavar="IMG", help="style image; repeat to blend several"
    )
    group.add_argument("--style-weights", type=_float_list, metavar="W1,W2", help="relative weight of each --style (default equal)")
    group.add_argument("--size", type=int, default=defaults.size, help="long side of the result in pixels (default %(default)s)")
    group.add_argument("--style-size", type=int, help="long side of the style image(s) when their statistics are taken (default: --size)")
    group.add_argument("--iters", type=int, default=defaults.iterations, help="L-BFGS objective evaluations, all scales together (default %(default)s)")
    group.add_argument(
        "--backbone", default=criterion.backbone,
        help="loss network: vgg19, resnet50, texture_vgg or a timm model name; auto: vgg19, or texture_vgg with random weights (default %(default)s)",
    )
    group.add_argument(
        "--weights",
        default=criterion.weights,
        help="loss-network weights: 'pretrained' (downloads once, then cached), 'random' (offline: a seeded random texture "
        "network that stylises, but is not learned features) or a path to a .safetensors / torch state-dict file (default %(default)s)",
    )
    group.add_argument("--init", choices=INIT_CHOICES, help=f"starting image (default {defaults.init}; distribution with --photoreal)")
    group.add_argument("--preserve-color", action="store_true", help="luminance-only transfer: keep the content's colours")
    group.add_argument("--scales", type=_float_list, default=defaults.scales, metavar="S1,S2", help="coarse-to-fine fractions of --size ending at 1, e.g. 0.5,1")
    group.add_argument(
        "--loss-normalisation", choices=NORMALISATIONS, default=criterion.normalisation,
        help="scale_free: alpha/beta mean the same on any network, size and layer set; classic: the original Gatys/Johnson "
        "terms and defaults (VGG-19, Gram, beta 1e6, TV 1), for reproducing papers (default %(default)s)",
    )
    group.add_argument(
        "--style-statistic", choices=("auto", *STYLE_STATISTICS), default=criterion.style_statistic,
        help="gram, or sliced_wasserstein (whole feature distributions); auto: sliced_wasserstein for random weights (default %(default)s)",
    )
    group.add_argument(
        "--sliced-projections", type=int, default=criterion.sliced_projections, metavar="K",
        help="sliced_wasserstein: fixed projection directions per feature channel; 1 is the earlier objective (default %(default)s)",
    )
    group.add_argument(
        "--parameterisation", choices=("auto", *PARAMETERISATIONS), default=defaults.parameterisation,
        help="what L-BFGS moves: pixels or laplacian pyramid bands; auto: laplacian, pixels with classic (default %(default)s)",
    )
    group.add_argument(
        "--colour-basis", choices=("auto", *COLOUR_BASES), default=defaults.colour_basis,
        help="the colour axes L-BFGS moves: rgb, or decorrelated (luminance moves freely, chroma less: broader strokes, "
        "less colour speckle); auto: decorrelated with laplacian, rgb on pixels (default %(default)s)",
    )
    group.add_argument(
        "--luminance-step", type=float, default=defaults.luminance_step, metavar="S",
        help=f"how far a step of the colour variables moves luminance; lower keeps more of a dark or flat photo's "
        f"layout (default: {DEFAULT_LUMINANCE_STEP:g} with the decorrelated basis, 1 on rgb)",
    )
    group.add_argument("--content-weight", type=float, help=f"alpha (default {criterion.content_weight:g}; classic {classic.content_weight:g}; --photoreal {PHOTOREAL_CONTENT_WEIGHT:g})")
    group.add_argument("--style-weight", type=float, help=f"beta (default {criterion.style_weight:g}; classic {classic.style_weight:g})")
    group.add_argument("--tv-weight", type=float, help=f"total-variation weight (default {criterion.tv_weight:g}; classic {classic.tv_weight:g})")
    group.add_argument(
        "--flat-area-weight", type=float, metavar="W",
        help="keep the photo's flat areas free of the painting's strokes (offline texture network only; 0 turns it off; "
        f"default {DEFAULT_FLAT_AREA_WEIGHT:g} where the style is measured on its filter banks, off otherwise and with --photoreal)",
    )
    group.add_argument(
        "--layer-weighting", choices=LAYER_WEIGHTINGS,
        help=f"per-style-layer weights (default {criterion.layer_weighting}; classic {classic.layer_weighting})",
    )
    group.add_argument(
        "--photoreal", action="store_true",
        help="Deep Photo Style Transfer: add the content photo's matting-Laplacian penalty so the style changes colours, "
        f"not structure (weight {DEFAULT_PHOTOREAL_WEIGHT:g}; pixels, one scale, --init distribution, --smooth; --scales is ignored)",
    )
    group.add_argument("--photoreal-weight", type=float, help=f"weight of the photorealism term (implies --photoreal; default {DEFAULT_PHOTOREAL_WEIGHT:g})")
    group.add_argument("--style-mask", metavar="IMG", help="colour-coded semantic mask of the (single) --style image; needs content masks too")
    group.add_argument(
        "--smooth", action=argparse.BooleanOptionalAction, default=None,
        help="guided-filter the result with the content as guide (locally affine colours); default: on with --photoreal",
    )
    group.add_argument("--pooling", choices=POOLINGS, default=criterion.pooling, help="loss-network pooling (default %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="seeds random weights and noise initialisation (default %(default)s)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default %(default)s)")


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """Build the :class:`TeacherConfig` that :func:`add_teacher_arguments` describes."""
    if args.style_weights is not None and len(args.style_weights) != len(args.style):
        fail(f"--style-weights has {len(args.style_weights)} value(s) for {len(args.style)} --style image(s)")
    if args.size < MIN_SIDE:
        fail(f"--size {args.size}: the long side of the result must be at least {MIN_SIDE} px")
    if args.style_size is not None and args.style_size < MIN_SIDE:
        fail(f"--style-size {args.style_size}: the style's long side must be at least {MIN_SIDE} px")
    if args.iters < 1:
        fail(f"--iters {args.iters}: the teacher needs at least 1 evaluation")
    preset = CriterionConfig.classic() if args.loss_normalisation == "classic" else CriterionConfig()
    given = {
        "content_weight": args.content_weight,
        "style_weight": args.style_weight,
        "tv_weight": args.tv_weight,
        "flat_area_weight": args.flat_area_weight,
        "layer_weighting": args.layer_weighting,
    }
    try:
        criterion = dataclasses.replace(
            preset,
            backbone=preset.backbone if args.backbone == "auto" else args.backbone,
            weights=args.weights,
            seed=args.seed,
            pooling=args.pooling,
            style_statistic=preset.style_statistic if args.style_statistic == "auto" else args.style_statistic,
            sliced_projections=args.sliced_projections,
            # Classic keeps its 512 px style; otherwise the style is seen at the result's own scale.
            style_size=args.style_size or (preset.style_size if args.loss_normalisation == "classic" else args.size),
            style_blend=tuple(args.style_weights) if args.style_weights else None,
            luminance_only=args.preserve_color,
            **{name: value for name, value in given.items() if value is not None},
        )
    except ValueError as exc:
        fail(str(exc))
    try:
        config = TeacherConfig(
            criterion=criterion, size=args.size, iterations=args.iters, scales=tuple(args.scales), seed=args.seed,
            parameterisation=args.parameterisation,
            colour_basis=args.colour_basis, luminance_step=args.luminance_step,
        )
        if args.photoreal or args.photoreal_weight is not None:
            config = photoreal_teacher(
                config, weight=DEFAULT_PHOTOREAL_WEIGHT if args.photoreal_weight is None else args.photoreal_weight,
                **({} if args.content_weight is None else {"content_weight": args.content_weight}),
            )
        given = {"init": args.init, "smooth": args.smooth}  # explicit choices win over the presets
        return dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None}).resolved()
    except ValueError as exc:
        fail(str(exc))


@contextlib.contextmanager
def batch_invariant_cpu() -> Iterator[None]:
    """oneDNN switched off for the enclosed code (restored on exit).

    oneDNN picks convolution algorithms by batch size, so on the CPU a batched teacher
    run would drift from single-image runs after a few L-BFGS steps; PyTorch's native
    CPU convolutions are batch-invariant and, measured at 256 px, no slower per image.
    """
    previous = torch.backends.mkldnn.enabled
    with warnings.catch_warnings():
        # torch warns about Intel-GPU TF32 whenever oneDNN's flags change; noise above the progress bar.
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = previous


def batch_invariant_teacher(*args, **kwargs) -> TeacherResult:
    """:func:`teachers.gatys.stylize` under :func:`batch_invariant_cpu`: what the commands run as the teacher.

    Only the optimisation runs without oneDNN; the criterion is built as everywhere else.
    ``gatys.stylize`` is looked up at each call, so a replaced teacher (in tests) is used.
    """
    with batch_invariant_cpu():
        return gatys.stylize(*args, **kwargs)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
