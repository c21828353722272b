#!/usr/bin/env python
"""Stylise one image with the Gatys L-BFGS teacher.

Example:
    python scripts/stylize_gatys.py --content photo.jpg --style mosaic.jpg --output out.png --size 512 --iters 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli import LazyProgress, add_teacher_arguments, resolve_device, run_main, teacher_config_from_args, warn_if_random
from distill.fileio import write_json_atomic
from distill.imaging import save_image
from teachers.gatys import stylize_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", required=True, help="content image")
    parser.add_argument("--output", required=True, type=Path, help="output image (.png for lossless)")
    parser.add_argument("--report", type=Path, help="write a JSON report: loss trace, final terms, seconds, iterations, weights")
    add_teacher_arguments(parser)
    args = parser.parse_args()
    config = teacher_config_from_args(args)
    device = resolve_device(args.device)

    with LazyProgress(desc="teacher", unit="eval") as bar:
        image, report = stylize_file(args.content, args.style, config=config, device=device, progress=bar.update_to)
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


if __name__ == "__main__":
    run_main(main)
