"""Command-line pieces shared by the scripts: teacher options, device choice, errors.

Scripts stay thin: they parse arguments with these helpers and call one library function.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import NoReturn

import torch

from distill.criterion import NORMALISATIONS, STYLE_STATISTICS, CriterionConfig
from teachers.gatys import INIT_CHOICES, TeacherConfig
from teachers.pyramid import PARAMETERISATIONS


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
    group.add_argument("--init", choices=INIT_CHOICES, default=defaults.init, help="starting image (default %(default)s)")
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
        "--parameterisation", choices=("auto", *PARAMETERISATIONS), default=defaults.parameterisation,
        help="what L-BFGS moves: pixels or laplacian pyramid bands; auto: laplacian, pixels with classic (default %(default)s)",
    )
    group.add_argument("--content-weight", type=float, help="alpha (default 1)")
    group.add_argument("--style-weight", type=float, help=f"beta (default {criterion.style_weight:g}; classic {classic.style_weight:g})")
    group.add_argument("--tv-weight", type=float, help=f"total-variation weight (default {criterion.tv_weight:g}; classic {classic.tv_weight:g})")
    group.add_argument(
        "--layer-weighting", choices=("inverse_square_channels", "equal"),
        help=f"per-style-layer weights (default {criterion.layer_weighting}; classic {classic.layer_weighting})",
    )
    group.add_argument("--pooling", choices=("max", "avg"), default=criterion.pooling, help="loss-network pooling (default %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="seeds random weights and noise initialisation (default %(default)s)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default %(default)s)")


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """Build the :class:`TeacherConfig` that :func:`add_teacher_arguments` describes."""
    if args.style_weights is not None and len(args.style_weights) != len(args.style):
        fail(f"--style-weights has {len(args.style_weights)} value(s) for {len(args.style)} --style image(s)")
    preset = CriterionConfig.classic() if args.loss_normalisation == "classic" else CriterionConfig()
    given = {
        "content_weight": args.content_weight,
        "style_weight": args.style_weight,
        "tv_weight": args.tv_weight,
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
            # Classic keeps its 512 px style; otherwise the style is seen at the result's own scale.
            style_size=args.style_size or (preset.style_size if args.loss_normalisation == "classic" else args.size),
            style_blend=tuple(args.style_weights) if args.style_weights else None,
            luminance_only=args.preserve_color,
            **{name: value for name, value in given.items() if value is not None},
        )
    except ValueError as exc:
        fail(str(exc))
    try:
        return TeacherConfig(
            criterion=criterion, size=args.size, iterations=args.iters, init=args.init, scales=tuple(args.scales), seed=args.seed,
            parameterisation=args.parameterisation,
        ).resolved()
    except ValueError as exc:
        fail(str(exc))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def warn_if_random(weights_description: str) -> None:
    """A loud line on stderr when the loss network is not pretrained."""
    if weights_description.startswith("random"):
        print(
            "WARNING: the loss network has RANDOM weights (offline mode): a seeded texture model, not learned "
            "features. Results are stylised, but not what a pretrained VGG-19 gives; use --weights pretrained "
            "or --weights PATH for that.",
            file=sys.stderr,
        )


class LazyProgress:
    """A tqdm bar that appears on the first update, so input errors print before any bar.

    Use as ``progress=bar.update_to`` for callbacks of the form ``(done, total)``.
    """

    def __init__(self, *, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def update_to(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "LazyProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fail(message: str, *, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit: the user-facing end of every expected failure."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Call ``main``; expected errors (bad input, missing weights) become one ``error:`` line."""
    import warnings

    from distill.criterion import CriterionError
    from distill.imaging import ImageLoadError
    from distill.lossnet import WeightsFileError, WeightsUnavailableError

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line_warning  # the command line shows warnings as one line, no source excerpt
    try:
        code = main()
    except (ImageLoadError, WeightsFileError, WeightsUnavailableError, CriterionError, FileNotFoundError, *expected) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    raise SystemExit(code or 0)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
