"""Compute Gatys teacher targets for a folder of content images into a target store.

    python scripts/generate_targets.py --content-dir photos/ --style starry.jpg --out store/ \\
        --size 512 --iters 500 --batch-size 4 [--shard 0/4]
    python scripts/generate_targets.py --content-dir photos/ --content-mask-dir masks/ --style dusk.jpg \
        --style-mask dusk_mask.png --photoreal --out store/
    python scripts/generate_targets.py --out store/ --verify

Rerunning the same command skips finished targets (also after kill -9); a changed teacher
config makes new targets beside the old ones. Shards (``--shard i/n``, or torchrun's
RANK/WORLD_SIZE) split the contents by hash into disjoint parts that may run at once.
--out must be new, empty or a target store; a folder of other files is refused, untouched.
Exit codes: 0 done, 1 some targets failed (or --verify found problems) or a failure, 2 bad
input (found before any work).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import CommandParser, ProgressBar, debugging, describe_error, process_settings, run_main, write_line
from distill.cli.teacher_args import add_teacher_arguments, batch_invariant_teacher, teacher_config_from_args
from distill.core.errors import DistillError
from distill.core.files import write_json_atomic
from distill.core.outputs import check_output_file, check_output_folder
from distill.targets.generation import (
    GenerationInputError,
    GenerationProgress,
    GenerationSummary,
    generate_targets,
    parse_shard,
    shard_from_env,
)
from distill.targets.store import TargetStore

PROG = "generate_targets"
#: Hashing fewer files than this is too quick to deserve a bar.
_HASHING_BAR_MIN_FILES = 200
#: The teacher reports every evaluation; the bar's text changes at most this often (seconds).
_TEACHER_REFRESH = 0.5


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog or PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--content-dir", type=Path, help="folder of content images (walked recursively)")
    io.add_argument(
        "--content-mask-dir", type=Path,
        help="semantic masks of the contents, paired by name (DIR/a/b.png for CONTENT_DIR/a/b.jpg); needs --style-mask",
    )
    io.add_argument("--out", type=Path, required=True, help="target store folder (created if needed)")
    io.add_argument("--limit", type=int, default=None, help="use only the first N content files (sorted by path; N >= 1)")
    io.add_argument("--summary-json", type=Path, default=None, help="also write the run summary to this JSON file (.json)")
    io.add_argument("--verify", action="store_true", help="only recompute the store's hashes; exit 1 on problems")
    io.add_argument("--quiet", action="store_true", help="no progress bar")

    add_teacher_arguments(parser, style_required=False)

    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=1, help="images per teacher call (same-size images only)")
    run.add_argument("--shard", help="i/n: this process takes the contents whose hash is i modulo n")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        with process_settings():
            if args.verify:
                return _verify(args.out, quiet=args.quiet)
            summary = _generate(args)
    except DistillError as exc:  # bad input (2) or no weights (1): one line, returned for in-process callers
        if debugging():
            raise
        message, code = describe_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code
    for line in summary.lines():
        print(line)
    if args.summary_json is not None:
        write_json_atomic(args.summary_json, summary.to_dict())
    return 1 if summary.failed else 0


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 done, 1 some targets failed (or --verify found problems) or a failure, 2 bad input."""
    run_main(lambda: main(argv, prog=prog))


def _verify(store_root: Path, *, quiet: bool) -> int:
    bars: dict[str, ProgressBar] = {}

    def progress(label: str, done: int, total: int) -> None:
        bars.setdefault(label, ProgressBar(desc=label, unit="entry")).update_to(done, total)

    try:
        report = TargetStore(store_root).verify(progress=None if quiet else progress)
    finally:
        for bar in bars.values():
            bar.close()
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def _generate(args: argparse.Namespace) -> GenerationSummary:
    if args.content_dir is None or not args.style:
        raise GenerationInputError("--content-dir and at least one --style are required (or use --verify)")
    config = teacher_config_from_args(args)
    # The store refuses a folder with other files itself; here: a path it could never be written to.
    check_output_folder(args.out, option="--out")
    if args.summary_json is not None:
        inputs = [("--content-dir", args.content_dir), *(("--style", style) for style in args.style)]
        check_output_file(args.summary_json, option="--summary-json", inputs=inputs, suffixes=(".json",))
    shard = parse_shard(args.shard) if args.shard else (shard_from_env() or (0, 1))
    bars = _TargetBars(shard)
    try:
        return generate_targets(
            content_dir=args.content_dir,
            style_paths=[Path(path) for path in args.style],
            store_root=args.out,
            teacher_config=config,
            batch_size=args.batch_size,
            shard=shard,
            device=args.device,
            limit=args.limit,
            teacher=batch_invariant_teacher,
            progress=None if args.quiet else bars.update,
            log=write_line,
            content_mask_dir=args.content_mask_dir,
            style_mask_path=args.style_mask,
        )
    finally:
        bars.close()


class _TargetBars:
    """The console bars of a generation run: hashing the contents, then the targets."""

    def __init__(self, shard: tuple[int, int]) -> None:
        self.hashing = ProgressBar(desc="hashing contents", unit="file", leave=False)
        self.targets = ProgressBar(desc=f"targets {shard[0]}/{shard[1]}", unit="img")
        self._last_refresh = 0.0

    def update(self, report: GenerationProgress) -> None:
        counts = f"done={report.new}, skipped={report.skipped}, failed={report.failed}"
        if report.stage == "hashing":
            if report.total >= _HASHING_BAR_MIN_FILES:
                self.hashing.update_to(report.done, report.total)
        elif report.stage == "targets":
            self.targets.update_to(report.done, report.total, postfix=counts + (f", busy={report.busy}" if report.busy else ""))
        elif time.perf_counter() - self._last_refresh >= _TEACHER_REFRESH:
            # Within a long batch the bar would otherwise look stalled for minutes.
            self._last_refresh = time.perf_counter()
            self.targets.set_postfix_str(f"{counts}, batch {100 * report.done // report.total}%")

    def close(self) -> None:
        self.hashing.close()
        self.targets.close()
