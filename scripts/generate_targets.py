#!/usr/bin/env python
"""Compute Gatys teacher targets for a folder of content images into a target store.

    python scripts/generate_targets.py --content-dir photos/ --style starry.jpg --out store/ \
        --size 512 --iters 500 --batch-size 4 [--shard 0/4]
    python scripts/generate_targets.py --out store/ --verify

Rerunning the same command skips finished targets (also after kill -9); a changed teacher
config makes new targets beside the old ones. Shards (``--shard i/n``, or torchrun's
RANK/WORLD_SIZE) split the contents by hash into disjoint parts that may run at once.
Exit codes: 0 done, 1 some targets failed (or --verify found problems), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.config import replace
from distill.fileio import write_json_atomic
from distill.lossnet import WeightsFileError, WeightsUnavailableError
from distill.store import StoreError, TargetStore
from distill.targets import GenerationInputError, generate_targets, parse_shard, shard_from_env
from teachers.gatys import INIT_CHOICES, TeacherConfig

PROG = "generate_targets"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--content-dir", type=Path, help="folder of content images (walked recursively)")
    io.add_argument("--style", type=Path, action="append", default=[], help="style image; repeat to blend several")
    io.add_argument("--out", type=Path, required=True, help="target store folder (created if needed)")
    io.add_argument("--limit", type=int, default=None, help="use only the first N content files (sorted by path)")
    io.add_argument("--summary-json", type=Path, default=None, help="also write the run summary to this JSON file")
    io.add_argument("--verify", action="store_true", help="only recompute the store's hashes; exit 1 on problems")
    io.add_argument("--quiet", action="store_true", help="no progress bar")

    teacher = parser.add_argument_group("teacher (defaults: teachers.gatys.TeacherConfig)")
    teacher.add_argument("--size", type=int, help="long side of contents and targets, px")
    teacher.add_argument("--iters", type=int, help="L-BFGS evaluation budget per image")
    teacher.add_argument("--init", choices=INIT_CHOICES)
    teacher.add_argument("--scales", type=float, nargs="+", help="coarse-to-fine fractions ending with 1.0")
    teacher.add_argument("--backbone", help="loss network (vgg19, resnet50, any timm name with explicit layers)")
    teacher.add_argument("--weights", help="pretrained | random (tests only) | PATH to a weights file")
    teacher.add_argument("--style-weights", type=float, nargs="+", help="relative weight of each --style")
    teacher.add_argument("--style-size", type=int, help="long side of the style image(s) for their Grams")
    teacher.add_argument("--preserve-color", action="store_true", default=None, help="luminance-only transfer")
    teacher.add_argument("--content-weight", type=float)
    teacher.add_argument("--style-weight", type=float)
    teacher.add_argument("--tv-weight", type=float)

    run = parser.add_argument_group("execution")
    run.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    run.add_argument("--batch-size", type=int, default=1, help="images per teacher call (same-size images only)")
    run.add_argument("--shard", help="i/n: this process takes the contents whose hash is i modulo n")
    return parser


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """TeacherConfig defaults, overridden by the options that were given."""
    changes = {
        "size": args.size,
        "iterations": args.iters,
        "init": args.init,
        "scales": tuple(args.scales) if args.scales else None,
        "criterion.backbone": args.backbone,
        "criterion.weights": args.weights,
        "criterion.style_blend": tuple(args.style_weights) if args.style_weights else None,
        "criterion.style_size": args.style_size,
        "criterion.luminance_only": args.preserve_color,
        "criterion.content_weight": args.content_weight,
        "criterion.style_weight": args.style_weight,
        "criterion.tv_weight": args.tv_weight,
    }
    return replace(TeacherConfig(), **{k: v for k, v in changes.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verify:
            store = TargetStore(args.out)
            report = store.verify(progress=not args.quiet)
            for line in report.lines():
                print(line)
            return 0 if report.ok else 1
        if args.content_dir is None or not args.style:
            raise GenerationInputError("--content-dir and at least one --style are required (or use --verify)")
        config = teacher_config_from_args(args)
        shard = parse_shard(args.shard) if args.shard else (shard_from_env() or (0, 1))
        summary = generate_targets(
            content_dir=args.content_dir,
            style_paths=args.style,
            store_root=args.out,
            teacher_config=config,
            batch_size=args.batch_size,
            shard=shard,
            device=args.device,
            limit=args.limit,
            progress=not args.quiet,
        )
    except (GenerationInputError, StoreError, WeightsFileError, WeightsUnavailableError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    if args.summary_json is not None:
        write_json_atomic(args.summary_json, summary.to_dict())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
