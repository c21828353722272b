"""Stylise one image with the Gatys L-BFGS teacher.

Example:
    python scripts/stylize_gatys.py --content photo.jpg --style mosaic.jpg --output out.png --size 512 --iters 300

Every input is checked before the loss network is built: sizes (at least 16 px, and within
the machine's memory), weights, the content photo, and --output / --report (writable, a
known suffix, not a folder, never one of the inputs). Exit codes: 0 done, 1 a failure while
working, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import CommandParser, ProgressBar, process_settings, run_main, warn_if_random
from distill.cli.teacher_args import add_teacher_arguments, batch_invariant_teacher, teacher_config_from_args
from distill.core.devices import resolve_device
from distill.core.files import write_json_atomic
from distill.core.imageio import OUTPUT_FORMATS, save_image
from distill.core.outputs import check_output_file
from teachers.gatys import stylize_file


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", required=True, help="content image")
    parser.add_argument("--output", required=True, type=Path, help=f"output image ({', '.join(OUTPUT_FORMATS)}; .png for lossless)")
    parser.add_argument("--content-mask", metavar="IMG", help="colour-coded semantic mask of --content (with --style-mask)")
    parser.add_argument("--report", type=Path, help="write a JSON report (.json): loss trace, final terms, seconds, iterations, weights")
    add_teacher_arguments(parser)
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """--output and --report can be written, have known suffixes and are none of the inputs; before any work."""
    inputs = [("--content", args.content), *(("--style", style) for style in args.style)]
    inputs += [(option, path) for option, path in (("--content-mask", args.content_mask), ("--style-mask", args.style_mask)) if path]
    check_output_file(args.output, option="--output", inputs=inputs, suffixes=tuple(OUTPUT_FORMATS))
    if args.report is not None:
        check_output_file(args.report, option="--report", inputs=[*inputs, ("--output", args.output)], suffixes=(".json",))


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    config = teacher_config_from_args(args)
    check_outputs(args)
    with process_settings():
        device = resolve_device(args.device)
        with ProgressBar(desc="teacher", unit="eval") as bar:
            image, report = stylize_file(
                args.content, args.style, config=config, device=device, progress=bar.update_to, teacher=batch_invariant_teacher,
                content_mask_path=args.content_mask, style_mask_path=args.style_mask,
            )
        warn_if_random(report["weights"])
        save_image(image, args.output)
    if args.report:
        write_json_atomic(args.report, report)
    final = report["final"]
    print(
        f"wrote {args.output} ({report['size'][1]}x{report['size'][0]}) in {report['seconds']:.1f} s, "
        f"{report['iterations_run']} evaluations ({report['stop_reason']}); total {final['total']:.4g} = "
        f"content {final['content']:.4g} + style {final['style']:.4g} + tv {final['tv']:.4g}"
        + (f" + photoreal {final['photoreal']:.4g}" if config.photoreal_weight else "")
        + f"; weights: {report['weights']}",
        file=sys.stderr,
    )
    return 0


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 done, 1 a failure while working, 2 bad input (one ``error:`` line each)."""
    run_main(lambda: main(argv, prog=prog))
