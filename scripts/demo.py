#!/usr/bin/env python
"""The main job on built-in sample data, offline: the teacher stylises a sample photo
with a generated stained-glass style.

    python scripts/demo.py --out demo_output
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli import LazyProgress, resolve_device, run_main, warn_if_random
from distill.criterion import CriterionConfig
from distill.fileio import write_json_atomic
from distill.imaging import save_image
from distill.samples import stained_glass, write_sample_contents
from teachers.gatys import TeacherConfig, stylize_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--weights", default="random", help="loss-network weights: random (offline), pretrained or a file")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)

    style_path = save_image(stained_glass(size=256), args.out / "data" / "style" / "stained_glass.png")
    (content_path,) = write_sample_contents(args.out / "data" / "content", long_side=args.size, count=1)
    config = TeacherConfig(criterion=CriterionConfig(weights=args.weights, style_size=256), size=args.size, iterations=args.iters)
    with LazyProgress(desc="teacher", unit="eval") as bar:
        image, report = stylize_file(str(content_path), [str(style_path)], config=config, device=device, progress=bar.update_to)
    warn_if_random(report["weights"])
    output = save_image(image, args.out / "teacher.png")
    write_json_atomic(args.out / "teacher_report.json", report)
    print(f"wrote {output} and {args.out / 'teacher_report.json'}; weights: {report['weights']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
