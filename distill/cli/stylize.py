"""Stylise an image or a folder of images with a trained student (checkpoint or export).

    python scripts/stylize.py --model fast.safetensors --input photo.jpg --output photo_styled.png
    python scripts/stylize.py --model fast.onnx --input photos/ --output styled/ --batch-size 4
    python scripts/stylize.py --model fast.pt2 --input big.tif --output big.png --tile 1024 --overlap 128
    python scripts/stylize.py --model multi.onnx --list-styles
    python scripts/stylize.py --model multi.onnx --input photo.jpg --output mix.png --style-mix candy:0.5,udnie:0.5

--model: a .safetensors student checkpoint or an export from scripts/export_student.py
(.onnx, .pt2, TorchScript .pt); detected by content. Folders are walked recursively and
mirrored under --output as PNG. Every image keeps its size; EXIF orientation is applied.
Images above --pixel-budget pixels are tiled automatically (2048 px tiles, 256 px overlap).
An output is never one of the inputs, and an image that cannot fit in memory as planned is
refused before any work, with the estimate and a pointer to --tile.
A multi-style model (trained with --multi-style) stylises in its first style unless
--style-index or --style-mix picks others; --strength (any model) moves the result
toward the photo (0 returns the photo, 1 the full stylisation).
Exit codes: 0 done, 1 some images could not be read (each is named) or a failure, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import CommandParser, ProgressBar, fail, process_settings, run_main, write_line
from distill.core.devices import resolve_device
from distill.core.imageio import IMAGE_SUFFIXES, OUTPUT_FORMATS
from distill.core.outputs import check_output_file, check_output_folder
from distill.deploy.controls import StyleControlError, check_strength, describe_styles
from distill.deploy.model_files import DTYPES, ModelLoadError, load_model, read_export_metadata
from distill.deploy.stylize import StylizeInputError, output_paths, stylize_path
from distill.deploy.tiling import DEFAULT_PIXEL_BUDGET


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog or "stylize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="student checkpoint (.safetensors) or export (.onnx, .pt2, .pt)")
    parser.add_argument("--input", type=Path, help="image file or folder (recursive)")
    parser.add_argument("--output", type=Path, help="output image (its suffix picks the format) or folder (PNG)")
    parser.add_argument("--list-styles", action="store_true", help="print the model's styles (index and name) and stop")
    parser.add_argument("--style-index", help="multi-style model: the style to use, by index or name (default: 0)")
    parser.add_argument("--style-mix", help="multi-style model: blend styles, e.g. 0:0.5,3:0.5 or candy:0.7,udnie:0.3")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="0 returns the photo, 1 the full stylisation, in between a blend (default %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="same-size images per model call (default %(default)s)")
    parser.add_argument("--tile", type=int, default=None, help="stylise in tiles of this many px (rounded down to the model's stride)")
    parser.add_argument("--overlap", type=int, default=None, help="px shared by neighbouring tiles (default min(256, tile/4))")
    parser.add_argument("--pixel-budget", type=int, default=DEFAULT_PIXEL_BUDGET, help="tile automatically above this many pixels (default %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="compute precision for checkpoints (default fp32; exports use their own)")
    parser.add_argument("--skip-existing", action="store_true", help="leave existing outputs alone")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.list_styles:
        return list_styles(args.model)
    if args.input is None or args.output is None:
        fail("--input and --output are required (or --list-styles)")
    check_strength(args.strength)
    if args.batch_size < 1:
        fail("--batch-size must be at least 1")
    if args.tile is not None and args.tile < 1:
        fail("--tile must be positive")
    if args.overlap is not None and args.tile is None:
        fail("--overlap needs --tile")
    if args.pixel_budget < 1:
        fail(f"--pixel-budget must be at least 1, got {args.pixel_budget}")
    check_paths(args)
    with process_settings():
        device = resolve_device(args.device)
        with warnings.catch_warnings():
            # torch.export.load and torch.jit.load warn about deprecations and file names: not the user's concern.
            warnings.simplefilter("ignore")
            model = load_model(args.model, device=device, dtype=args.dtype)
        model = model.with_controls(style_index=args.style_index, style_mix=args.style_mix, strength=args.strength)
        if model.styles is not None and args.style_index is None and args.style_mix is None:
            write_line(f"{args.model.name} holds {len(model.styles)} styles; using style 0 ({model.styles[0]}); "
                       "--list-styles lists them, --style-index / --style-mix choose")
        tiles = ProgressBar(desc="tiles", unit="tile", leave=False, disable=args.quiet)
        with ProgressBar(desc="stylize", unit="img") as bar, tiles:
            summary = stylize_path(
                model,
                args.input,
                args.output,
                batch_size=args.batch_size,
                tile=args.tile,
                overlap=args.overlap,
                pixel_budget=args.pixel_budget,
                skip_existing=args.skip_existing,
                progress=None if args.quiet or args.input.is_file() else bar.update_to,
                tile_progress=tiles.update_to,
                log=write_line,
            )
    parts = [f"{len(summary.written)} written"]
    if summary.tiled:
        parts.append(f"{summary.tiled} tiled")
    if summary.skipped_existing:
        parts.append(f"{len(summary.skipped_existing)} existing skipped")
    if summary.failed:
        parts.append(f"{len(summary.failed)} unreadable skipped")
    print(f"{', '.join(parts)} in {summary.seconds:.1f} s with {model!r}", file=sys.stderr)
    return 1 if summary.failed else 0


def list_styles(path: Path) -> int:
    """Print a model's styles from its metadata alone: ``index<TAB>name<TAB>teacher config`` per style
    (the config hash is what ``compare.py --config-hash`` takes to report on that style)."""
    metadata = read_export_metadata(path)
    names = (metadata.get("student") or {}).get("kwargs", {}).get("styles")
    configs = (metadata.get("extra") or {}).get("style_configs") or []
    for index, line in enumerate(describe_styles(tuple(names) if names else None)):
        config = configs[index] if names and index < len(configs) else None
        print(f"{line}\t{config[:16]}" if config else line)
    return 0


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: an input with images, and an output that can be written and is none of them."""
    if not args.input.exists():
        fail(f"--input {args.input}: no such file or folder")
    pairs = output_paths(args.input, args.output)  # refuses an output that is the input
    if not pairs:
        inside = " (outside --output)" if args.output.resolve().is_relative_to(args.input.resolve()) else ""
        fail(
            f"--input {args.input}: the folder has no images{inside}; looked for {' '.join(IMAGE_SUFFIXES)} "
            "files, in sub-folders too"
        )
    inputs = [("--input", args.input), ("--model", args.model)]
    if args.input.is_file():
        check_output_file(pairs[0][1], option="--output", inputs=inputs, suffixes=tuple(OUTPUT_FORMATS))
    else:
        check_output_folder(args.output, option="--output", inputs=inputs)


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 done, 1 some images unreadable or a failure, 2 bad input."""
    run_main(lambda: main(argv, prog=prog), expected=(ModelLoadError, StylizeInputError, StyleControlError))
