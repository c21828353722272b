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
import sys
from pathlib import Path

from distill.cli import add_teacher_arguments, teacher_config_from_args
from distill.fileio import write_json_atomic
from distill.lossnet import WeightsFileError, WeightsUnavailableError
from distill.store import StoreError, TargetStore
from distill.targets import GenerationInputError, generate_targets, parse_shard, shard_from_env

PROG = "generate_targets"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--content-dir", type=Path, help="folder of content images (walked recursively)")
    io.add_argument("--out", type=Path, required=True, help="target store folder (created if needed)")
    io.add_argument("--limit", type=int, default=None, help="use only the first N content files (sorted by path)")
    io.add_argument("--summary-json", type=Path, default=None, help="also write the run summary to this JSON file")
    io.add_argument("--verify", action="store_true", help="only recompute the store's hashes; exit 1 on problems")
    io.add_argument("--quiet", action="store_true", help="no progress bar")

    add_teacher_arguments(parser, style_required=False)

    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=1, help="images per teacher call (same-size images only)")
    run.add_argument("--shard", help="i/n: this process takes the contents whose hash is i modulo n")
    return parser


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
            style_paths=[Path(path) for path in args.style],
            store_root=args.out,
            teacher_config=config,
            batch_size=args.batch_size,
            shard=shard,
            device=args.device,
            limit=args.limit,
            progress=not args.quiet,
        )
    except (GenerationInputError, StoreError, WeightsFileError, WeightsUnavailableError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    if args.summary_json is not None:
        write_json_atomic(args.summary_json, summary.to_dict())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
