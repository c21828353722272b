"""Export a trained student to ONNX, torch.export (.pt2) or TorchScript, and check it.

Every export:

* has dynamic batch, height and width (H, W >= the student's minimum side; for
  ``timm_encoder`` that is ``stride + 1`` = 33 px, because ``torch.export``
  specialises the size-1 deepest feature map of smaller inputs);
* takes and returns float32 RGB in [0, 1], (B, 3, H, W), also when it computes in
  fp16/bf16 (a :class:`distill.inference.PrecisionWrapper` casts inside the graph);
* carries the student spec and provenance as JSON (key :data:`METADATA_KEY`) in ONNX
  ``metadata_props``, pt2 ``extra_files`` or TorchScript ``_extra_files``;
* is written to a temporary file, **loaded back through**
  :func:`distill.inference.load_student` (ONNX via onnxruntime's CPUExecutionProvider)
  and compared with the eager float32 student on :data:`DEFAULT_CHECK_SIZES` (odd
  sizes other than the export example, batch 1 and 2).  Only if every max absolute
  difference is within :data:`TOLERANCES` is it renamed onto the output path.

Tolerances (max |export - eager fp32| over all pixels of a random [0, 1] input):
fp32 1e-4 (measured ~1e-6), fp16 1e-2 (measured ~2e-3), bf16 5e-2 (bf16 keeps 8
significant bits, 8x coarser than fp16; measured ~1.6e-2 for ``timm_encoder``).

Precision support: fp16/bf16 pt2 and TorchScript run in that precision in PyTorch
(CPU and CUDA).  fp16 ONNX is a genuinely fp16 graph; onnxruntime's CPU provider runs
the ops it has no fp16 kernel for in fp32 (it inserts casts), the CUDA provider in
fp16.  bf16 ONNX is refused up front: onnxruntime has no bfloat16 Conv kernel and
refuses to load such a graph, so the file could not be run or checked.

ONNX exporter: the dynamo exporter (``torch.onnx.export(..., dynamo=True,
dynamic_shapes=...)``) first; if it fails, the TorchScript-based exporter with
``dynamic_axes``.  The one used is in the metadata (``onnx_exporter``) and the result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.fileio import atomic_path, sha256_file
from distill.inference import (
    DTYPES,
    METADATA_KEY,
    METADATA_VERSION,
    ModelLoadError,
    PrecisionWrapper,
    StyleModel,
    load_student,
)

FORMATS = ("onnx", "pt2", "torchscript")
#: Conventional suffix per format (files are recognised by content, so others work too).
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
#: Max |export - eager fp32| allowed by the check, per export dtype.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
#: (H, W) of the check inputs: odd, non-square, neither equal to the example size.
DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((67, 45), (130, 96))
#: The example input traced by the exporters: batch 2 (batch 1 would be specialised),
#: 64 x 64 (a multiple of every student's stride up to 32, and >= stride + 1).
EXAMPLE_SHAPE = (2, 3, 64, 64)
DEFAULT_OPSET = 18
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportError(ValueError):
    """The export cannot be made: bad arguments or an unsupported format/dtype combination."""


class ExportCheckError(ExportError):
    """The exported file does not reproduce the eager student within the tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how it checked it."""

    path: Path
    format: str
    dtype: str
    exporter: str  # "dynamo" / "torchscript" (ONNX), "torch.export", "jit.trace"
    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "HxW (batch B)" -> diff
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    fallback_reason: str | None = None  # why the dynamo ONNX exporter was not used


def export_student(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str,
    dtype: str = "fp32",
    opset: int | None = None,
    onnx_exporter: str = "auto",
    check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
    tolerance: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the student in ``checkpoint`` (a ``.safetensors`` file) to ``out``.

    See :func:`export_model` for the arguments; the checkpoint's name, SHA-256 and
    ``extra`` metadata are recorded as provenance.

    Raises:
        ModelLoadError: the checkpoint cannot be loaded.
        ExportError, ExportCheckError: see :func:`export_model`.
    """
    from students import StudentCheckpointError
    from students import load_student as load_checkpoint

    checkpoint = Path(checkpoint)
    try:
        model, metadata = load_checkpoint(checkpoint, device="cpu")
    except StudentCheckpointError as error:
        raise ModelLoadError(str(error)) from error
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint)}
    return export_model(
        model,
        out,
        format=format,
        dtype=dtype,
        opset=opset,
        onnx_exporter=onnx_exporter,
        check_sizes=check_sizes,
        tolerance=tolerance,
        source=source,
        extra=metadata.get("extra") or {},
        log=log,
    )


def export_model(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    format: str,
    dtype: str = "fp32",
    opset: int | None = None,
    onnx_exporter: str = "auto",
    check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
    tolerance: float | None = None,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (built by :func:`students.create_student`) and check the file.

    Args:
        model: a student mapping (B, 3, H, W) [0, 1] -> same; it needs
            ``student_spec``, ``stride`` and ``min_side`` (every built-in student has them).
            It is not modified (the export works on a copy).
        out: destination file; written only if the check passes.
        format: ``onnx``, ``pt2`` or ``torchscript``.
        dtype: ``fp32``, ``fp16`` or ``bf16``: the precision the export computes in.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`); ONNX only.
        onnx_exporter: ``auto`` (dynamo, falling back to TorchScript-based), ``dynamo``
            or ``torchscript``; ONNX only.
        check_sizes: (H, W) of the check inputs.
        tolerance: override :data:`TOLERANCES` for ``dtype``.
        source, extra: provenance stored in the metadata.
        log: receives one line per check size (default: nothing).

    Returns:
        An :class:`ExportResult` (path, exporter used, max abs difference per size).

    Raises:
        ExportError: bad arguments or an unsupported combination (e.g. bf16 ONNX),
            or the exported file cannot be loaded back.
        ExportCheckError: the check failed; nothing is written at ``out``.
    """
    started = time.perf_counter()
    out = Path(out)
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {onnx_exporter!r}; use one of {', '.join(ONNX_EXPORTERS)}")
    if format != "onnx" and opset is not None:
        raise ExportError("--opset applies to ONNX only")
    if format == "onnx" and dtype == "bf16":
        raise ExportError(
            "bf16 ONNX is not supported: onnxruntime has no bfloat16 Conv kernel (it refuses to load such a "
            "graph: \"Type 'tensor(bfloat16)' of input parameter ... of operator (Conv) ... is invalid\"), so "
            "the file could not be run or checked; "
            "use --dtype fp16 for ONNX, or --format pt2 / torchscript for bf16"
        )
    spec = getattr(model, "student_spec", None)
    if spec is None:
        raise ExportError("the model has no student_spec; build it with students.create_student()")
    tolerance = TOLERANCES[dtype] if tolerance is None else float(tolerance)
    stride = int(getattr(model, "stride", 1))
    # Below stride + 1 the deepest feature map can be 1x1, which torch.export specialises.
    min_side = max(int(getattr(model, "min_side", 1)), stride + 1)
    check_sizes = [tuple(int(v) for v in size) for size in check_sizes]
    if len(check_sizes) < 2:
        raise ExportError("give at least two check sizes")
    for height, width in check_sizes:
        if min(height, width) < min_side:
            raise ExportError(f"check size {height}x{width} is below the export's minimum side ({min_side} px)")
        if (height, width) == EXAMPLE_SHAPE[2:]:
            raise ExportError(f"check size {height}x{width} equals the export example; use other sizes")

    reference = copy.deepcopy(model).cpu().float().eval()
    exported: nn.Module = copy.deepcopy(reference)
    if dtype != "fp32":
        exported = PrecisionWrapper(exported, DTYPES[dtype]).eval()
    metadata: dict[str, Any] = {
        "format_version": METADATA_VERSION,
        "student": spec,
        "extra": extra or {},
        "source": source,
        "format": format,
        "dtype": dtype,
        "stride": stride,
        "min_side": min_side,
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "range": [0, 1]},
        "output": {"name": "stylized", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "range": [0, 1]},
        "check": {"sizes": [list(size) for size in check_sizes], "tolerance": tolerance, "reference": "eager fp32"},
        "versions": _versions(format),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    example = torch.rand(*EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))

    fallback_reason = None
    with atomic_path(out, suffix=SUFFIXES[format]) as temp:
        if format == "onnx":
            exporter, fallback_reason = _write_onnx(
                exported, temp, example=example, min_side=min_side, opset=opset or DEFAULT_OPSET,
                choice=onnx_exporter, metadata=metadata,
            )
        elif format == "pt2":
            exporter = _write_pt2(exported, temp, example=example, min_side=min_side, metadata=metadata)
        else:
            exporter = _write_torchscript(exported, temp, example=example, metadata=metadata)

        try:
            loaded = load_student(temp)
        except ModelLoadError as error:
            raise ExportError(f"the exported {format} ({dtype}) file cannot be loaded back: {error}") from error
        diffs = check_export(reference, loaded, sizes=check_sizes)
        for label, diff in diffs.items():
            if log is not None:
                verdict = "ok" if diff <= tolerance else "FAILED"
                log(f"check {label}: max |export - eager| = {diff:.3g} (tolerance {tolerance:g}) {verdict}")
        bad = {label: diff for label, diff in diffs.items() if not diff <= tolerance}  # NaN fails too
        if bad:
            details = ", ".join(f"{label}: {diff:.3g}" for label, diff in bad.items())
            raise ExportCheckError(
                f"the {format} export ({dtype}, {exporter}) differs from the eager student by more than "
                f"{tolerance:g} ({details}); {out} was not written"
            )
    return ExportResult(
        path=out,
        format=format,
        dtype=dtype,
        exporter=exporter,
        tolerance=tolerance,
        max_abs_diff=diffs,
        metadata=metadata,
        seconds=time.perf_counter() - started,
        fallback_reason=fallback_reason,
    )


def check_export(
    reference: Callable[[torch.Tensor], torch.Tensor],
    loaded: StyleModel | Callable[[torch.Tensor], torch.Tensor],
    *,
    sizes: Sequence[tuple[int, int]],
    seed: int = 0,
) -> dict[str, float]:
    """Max |loaded(x) - reference(x)| for random x of each size (batch 1, 2, 1, ...).

    Returns:
        ``{"HxW (batch B)": diff}``; ``inf`` where the output shape is wrong or the
        exported model raises at that size.
    """
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for index, (height, width) in enumerate(sizes):
        batch = 1 + index % 2  # both batch sizes, so a specialised batch dimension is caught
        images = torch.rand(batch, 3, height, width, generator=generator)
        label = f"{height}x{width} (batch {batch})"
        with torch.inference_mode():
            expected = reference(images).float()
            try:
                got = loaded(images).float()
            except Exception:  # e.g. a traced size that no longer broadcasts: a failed check
                diffs[label] = math.inf
                continue
        diffs[label] = float((got - expected).abs().max()) if got.shape == expected.shape else math.inf
    return diffs


def _dims(min_side: int) -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    batch = Dim("batch", min=1)
    height = Dim("height", min=min_side)
    width = Dim("width", min=min_side)
    return ({0: batch, 2: height, 3: width},)


def _write_onnx(
    module: nn.Module,
    path: Path,
    *,
    example: torch.Tensor,
    min_side: int,
    opset: int,
    choice: str,
    metadata: dict[str, Any],
) -> tuple[str, str | None]:
    import onnx

    proto = None
    fallback_reason = None
    if choice in ("auto", "dynamo"):
        try:
            with _quiet():
                program = torch.onnx.export(
                    module,
                    (example,),
                    None,
                    dynamo=True,
                    dynamic_shapes=_dims(min_side),
                    input_names=["images"],
                    output_names=["stylized"],
                    opset_version=opset,
                    optimize=True,
                    verbose=False,
                )
            proto = program.model_proto
        except Exception as error:  # the exporter raises many types; any failure means fall back
            if choice == "dynamo":
                raise ExportError(f"the dynamo ONNX exporter failed: {type(error).__name__}: {_one_line(error)}") from error
            fallback_reason = f"{type(error).__name__}: {_one_line(error)}"
    exporter = "dynamo"
    if proto is None:
        exporter = "torchscript"
        buffer = io.BytesIO()
        with _quiet():
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=["images"],
                output_names=["stylized"],
                dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("images", "stylized")},
                opset_version=opset,
            )
        proto = onnx.load_from_string(buffer.getvalue())
    metadata["onnx_exporter"] = exporter
    metadata["opset"] = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), opset)
    if fallback_reason:
        metadata["onnx_fallback_reason"] = fallback_reason
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    proto.producer_name = "distill.export"
    # One self-contained file (weights inline): external-data files would not follow a rename.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return exporter, fallback_reason


def _write_pt2(module: nn.Module, path: Path, *, example: torch.Tensor, min_side: int, metadata: dict[str, Any]) -> str:
    metadata["exporter"] = "torch.export"
    with _quiet():
        program = torch.export.export(module, (example,), dynamic_shapes=_dims(min_side))
        torch.export.save(program, str(path), extra_files={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return "torch.export"


def _write_torchscript(module: nn.Module, path: Path, *, example: torch.Tensor, metadata: dict[str, Any]) -> str:
    metadata["exporter"] = "jit.trace"
    with _quiet():
        # Tracing, not scripting: the students' Python-level attributes (stride, timm's
        # feature hooks) are not scriptable.  Sizes are traced as tensor ops, so the graph
        # stays dynamic; check_export proves it at sizes other than the example's.
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return "jit.trace"


@contextlib.contextmanager
def _quiet():
    """Silence exporter chatter (progress lines on stdout, tracer warnings); errors still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _versions(format: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if format == "onnx":
        with contextlib.suppress(ImportError):
            import onnx
            import onnxruntime

            versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + " ..."


# --- command line -----------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 67x45, got {text!r}") from None
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_student",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/export_student.py``: returns the exit code (errors raise SystemExit via ``fail``)."""
    from distill.cli import fail

    args = build_parser().parse_args(argv)
    expected = SUFFIXES[args.format]
    if args.out.suffix.lower() != expected:
        print(f"note: {args.format} files are conventionally named *{expected}; writing {args.out} anyway", file=sys.stderr)

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    try:
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
