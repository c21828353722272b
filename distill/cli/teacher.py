"""Stylise one image with the Gatys L-BFGS teacher.

Example:
    python scripts/stylize_gatys.py --content photo.jpg --style mosaic.jpg --output out.png --size 512 --iters 300
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import ProgressBar, process_settings, run_main, warn_if_random
from distill.cli.teacher_args import add_teacher_arguments, batch_invariant_teacher, teacher_config_from_args
from distill.core.devices import resolve_device
from distill.core.files import write_json_atomic
from distill.core.imageio import save_image
from teachers.gatys import stylize_file


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", required=True, help="content image")
    parser.add_argument("--output", required=True, type=Path, help="output image (.png for lossless)")
    parser.add_argument("--report", type=Path, help="write a JSON report: loss trace, final terms, seconds, iterations, weights")
    add_teacher_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    config = teacher_config_from_args(args)
    with process_settings():
        device = resolve_device(args.device)
        with ProgressBar(desc="teacher", unit="eval") as bar:
            image, report = stylize_file(
                args.content, args.style, config=config, device=device, progress=bar.update_to, teacher=batch_invariant_teacher
            )
        warn_if_random(report["weights"])
        save_image(image, args.output)
    if args.report:
        write_json_atomic(args.report, report)
    final = report["final"]
    print(
        f"wrote {args.output} ({report['size'][1]}x{report['size'][0]}) in {report['seconds']:.1f} s, "
        f"{report['iterations_run']} evaluations ({report['stop_reason']}); total {final['total']:.4g} = "
        f"content {final['content']:.4g} + style {final['style']:.4g} + tv {final['tv']:.4g}; weights: {report['weights']}",
        file=sys.stderr,
    )
    return 0


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: errors as one ``error:`` line, exit 2."""
    run_main(lambda: main(argv, prog=prog))
