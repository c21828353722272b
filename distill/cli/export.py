"""Export a student checkpoint to ONNX, torch.export (.pt2) or TorchScript, checked against eager PyTorch.

    python scripts/export_student.py --checkpoint fast.safetensors --format onnx --out fast.onnx
    python scripts/export_student.py --checkpoint fast.safetensors --format pt2 --out fast_fp16.pt2 --dtype fp16
    python scripts/export_student.py --checkpoint multi.safetensors --format onnx --out udnie.onnx --style-index udnie

A multi-style student exports with a second input, style_weights [1, K]; --style-index or
--style-mix exports one style (or mix) as a model that takes images only.

Prints the max absolute difference to the eager student at each check size; exit 1 (and no
output file) when one is above the tolerance (fp32 1e-4, fp16 1e-2, bf16 5e-2).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import CommandParser, fail, process_settings, run_main
from distill.core.outputs import check_output_file
from distill.deploy.export import (
    DEFAULT_CHECK_SIZES,
    DEFAULT_OPSET,
    FORMATS,
    ONNX_EXPORTERS,
    SUFFIXES,
    ExportCheckError,
    ExportError,
    export_student,
)
from distill.deploy.model_files import DTYPES, ModelLoadError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=prog or "export_student",
        description="Export a student checkpoint to ONNX, torch.export (.pt2) or TorchScript, "
        "with dynamic batch/height/width, and check it against the eager student.",
        epilog="Exit codes: 0 written and checked, 1 check failed (nothing written), 2 bad input or unsupported.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="student checkpoint (.safetensors)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, type=Path, help="output file (.onnx, .pt2 or .pt by convention)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="compute precision (default %(default)s); I/O stays float32")
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--onnx-exporter", choices=ONNX_EXPORTERS, default="auto", help="auto: dynamo, falling back to the TorchScript-based exporter")
    parser.add_argument("--check-sizes", type=_size, nargs="+", default=list(DEFAULT_CHECK_SIZES), metavar="HxW", help="check input sizes (default 67x45 130x96)")
    parser.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed (default: fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    parser.add_argument("--style-index", help="multi-style student: export this style alone (index or name), images-only input")
    parser.add_argument("--style-mix", help="multi-style student: export this mix alone, e.g. candy:0.5,udnie:0.5")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Returns the exit code; bad input raises SystemExit(2) with one ``error:`` line."""
    args = build_parser(prog).parse_args(argv)
    if not args.checkpoint.is_file():
        fail(f"--checkpoint {args.checkpoint}: no such checkpoint file" if not args.checkpoint.exists() else
             f"--checkpoint {args.checkpoint}: is a folder; give the .safetensors file")
    check_output_file(args.out, option="--out", inputs=[("--checkpoint", args.checkpoint)])
    expected = SUFFIXES[args.format]
    if args.out.suffix.lower() != expected:
        print(f"note: {args.format} files are conventionally named *{expected}; writing {args.out} anyway", file=sys.stderr)

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        with process_settings(), _quiet_exporters():
            result = export_student(
                args.checkpoint,
                args.out,
                format=args.format,
                dtype=args.dtype,
                opset=args.opset,
                onnx_exporter=args.onnx_exporter,
                check_sizes=args.check_sizes,
                tolerance=args.tolerance,
                log=log,
                style_index=args.style_index,
                style_mix=args.style_mix,
            )
    except ExportCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ExportError, ModelLoadError) as error:
        fail(str(error))
    if result.fallback_reason:
        print(f"note: the dynamo ONNX exporter failed ({result.fallback_reason}); used the TorchScript-based exporter", file=sys.stderr)
    size_mb = result.path.stat().st_size / 1e6
    print(
        f"wrote {result.path} ({result.format}, {result.dtype}, exporter {result.exporter}, {size_mb:.1f} MB) "
        f"in {result.seconds:.1f} s; checked against eager fp32 at {len(result.max_abs_diff)} sizes",
        file=sys.stderr,
    )
    return 0


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 written and checked, 1 check failed, 2 bad input or unsupported."""
    run_main(lambda: main(argv, prog=prog))


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence exporter chatter (progress lines on stdout, tracer warnings); errors still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 67x45, got {text!r}") from None
    return height, width
