"""Export a trained student to ONNX, torch.export (.pt2) or TorchScript, and check it.

Every export:

* has dynamic batch, height and width (H, W >= the student's minimum side; for
  ``timm_encoder`` that is ``stride + 1`` = 33 px, because ``torch.export``
  specialises the size-1 deepest feature map of smaller inputs);
* takes and returns float32 RGB in [0, 1], (B, 3, H, W), also when it computes in
  fp16/bf16 (a :class:`distill.deploy.model_files.PrecisionWrapper` casts inside the graph);
* of a multi-style student takes a second input ``style_weights``, float32 (1, K), one
  column per style in the order of the metadata's ``style_weights.styles`` (a one-hot
  row picks a style, a convex one blends them), and is checked with a mix of every style;
* carries the student spec and provenance as JSON (key :data:`METADATA_KEY`) in ONNX
  ``metadata_props``, pt2 ``extra_files`` or TorchScript ``_extra_files``;
* is written to a temporary file, **loaded back through**
  :func:`distill.deploy.model_files.load_model` (ONNX via onnxruntime's CPUExecutionProvider)
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

The exporters print progress on stdout and warn a lot; this module leaves ``sys.stdout``
and the warning filters alone (they are process-wide), and the command line quiets them.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from torch import nn
from torch.export import Dim

from distill.core.errors import ConfigError, one_line
from distill.core.files import atomic_path, sha256_file
from distill.deploy.controls import StyleControlError, style_weights
from distill.deploy.model_files import (
    DTYPES,
    METADATA_KEY,
    METADATA_VERSION,
    ModelLoadError,
    PrecisionWrapper,
    StyleModel,
    load_model,
    read_checkpoint,
)
from students.styles import StyleBound, style_names_of

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


class ExportError(ConfigError):
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


def export_student(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], **settings: Any) -> ExportResult:
    """Export the student in ``checkpoint`` (a ``.safetensors`` file) to ``out``.

    ``settings``: :func:`export_model`'s keyword arguments (``format``, ``dtype``,
    ``opset``, ``onnx_exporter``, ``check_sizes``, ``tolerance``, ``log``), passed on
    as they are; the checkpoint's name, SHA-256 and ``extra`` metadata are recorded as
    provenance (``source`` and ``extra``).

    Raises:
        ModelLoadError: the checkpoint cannot be loaded.
        ExportError, ExportCheckError: see :func:`export_model`.
    """
    checkpoint = Path(checkpoint)
    model, metadata = read_checkpoint(checkpoint)
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint)}
    return export_model(model, out, source=source, extra=metadata.get("extra") or {}, **settings)


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
    style_index: int | str | None = None,
    style_mix: str | dict[int, float] | None = None,
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
        style_index, style_mix: for a multi-style student, export one style (or one mix) as a
            single-input model (see :mod:`distill.deploy.controls`); without them the export
            takes the style weights as its second input.

    Returns:
        An :class:`ExportResult` (path, exporter used, max abs difference per size).

    Raises:
        ExportError: bad arguments or an unsupported combination (e.g. bf16 ONNX),
            or the exported file cannot be loaded back.
        ExportCheckError: the check failed; nothing is written at ``out``.
    """
    started = time.perf_counter()
    out = Path(out)
    _check_format(format=format, dtype=dtype, opset=opset, onnx_exporter=onnx_exporter)
    spec = getattr(model, "student_spec", None)
    if spec is None:
        raise ExportError("the model has no student_spec; build it with students.create_student()")
    bound = None
    if style_index is not None or style_mix is not None:
        model, spec, bound = _bind_style(model, spec, style_index=style_index, style_mix=style_mix)
    tolerance = TOLERANCES[dtype] if tolerance is None else float(tolerance)
    if not (math.isfinite(tolerance) and tolerance > 0):  # NaN would fail every check, inf pass any export
        raise ExportError(f"--tolerance must be a finite number > 0, got {tolerance}")
    stride = int(getattr(model, "stride", 1))
    # Below stride + 1 the deepest feature map can be 1x1, which torch.export specialises.
    min_side = max(int(getattr(model, "min_side", 1)), stride + 1)
    check_sizes = _checked_sizes(check_sizes, min_side=min_side)

    reference = copy.deepcopy(model).cpu().float().eval()
    exported: nn.Module = copy.deepcopy(reference)
    if dtype != "fp32":
        exported = PrecisionWrapper(exported, DTYPES[dtype]).eval()
    styles = style_names_of(model)
    metadata = _metadata(spec, format=format, dtype=dtype, stride=stride, min_side=min_side, check_sizes=check_sizes,
                         tolerance=tolerance, source=source, extra=extra, styles=styles)
    if bound is not None:
        metadata["bound_style"] = bound
    with atomic_path(out, suffix=SUFFIXES[format]) as temp:
        exporter, fallback_reason = _write(exported, temp, format=format, example=_example(styles), min_side=min_side,
                                           opset=opset, onnx_exporter=onnx_exporter, metadata=metadata)
        diffs = _check_written(reference, temp, format=format, dtype=dtype, exporter=exporter, sizes=check_sizes,
                               tolerance=tolerance, out=out, log=log, styles=styles)
    return ExportResult(path=out, format=format, dtype=dtype, exporter=exporter, tolerance=tolerance, max_abs_diff=diffs,
                        metadata=metadata, seconds=time.perf_counter() - started, fallback_reason=fallback_reason)


def _example(styles: Sequence[str] | None) -> tuple[torch.Tensor, ...]:
    """The traced inputs: images of :data:`EXAMPLE_SHAPE`, and for a multi-style student one row of style weights."""
    generator = torch.Generator().manual_seed(0)
    example: tuple[torch.Tensor, ...] = (torch.rand(*EXAMPLE_SHAPE, generator=generator),)
    if styles is not None:
        example += (torch.softmax(torch.randn(1, len(styles), generator=generator), dim=1),)
    return example


def _bind_style(
    model: nn.Module, spec: dict[str, Any], *, style_index: int | str | None, style_mix: str | dict[int, float] | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(single-input model, its spec, what it was bound to) for one style or mix of a multi-style student.

    The spec loses ``styles`` (the export takes images only, like a single-style student's);
    the metadata's ``bound_style`` keeps the style names and the weights it runs with.
    """
    names = style_names_of(model)
    try:
        weights = style_weights(names, index=style_index, mix=style_mix)
    except StyleControlError as error:
        raise ExportError(str(error)) from None
    bound = StyleBound(model, weights)
    bound_spec = {"name": spec["name"], "kwargs": {k: v for k, v in spec["kwargs"].items() if k != "styles"}}
    bound.student_spec = bound_spec
    chosen = {name: round(float(w), 6) for name, w in zip(names, weights[0]) if w > 0}
    return bound, bound_spec, {"styles": list(names), "weights": [float(w) for w in weights[0]], "chosen": chosen}


def _metadata(
    spec: dict[str, Any],
    *,
    format: str,
    dtype: str,
    stride: int,
    min_side: int,
    check_sizes: Sequence[tuple[int, int]],
    tolerance: float,
    source: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    styles: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON every export carries: the student, its provenance, the I/O contract and how it was checked."""
    inputs = {}
    if styles is not None:
        # The second graph input of a multi-style student: one row of style weights, convex
        # (a one-hot row picks a style); the names say which column is which style.
        inputs["style_weights"] = {"name": "style_weights", "shape": [1, len(styles)], "dtype": "float32",
                                   "styles": list(styles)}
    return {
        "format_version": METADATA_VERSION,
        "student": spec,
        "extra": extra or {},
        "source": source,
        "format": format,
        "dtype": dtype,
        "stride": stride,
        "min_side": min_side,
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "range": [0, 1]},
        **inputs,
        "output": {"name": "stylized", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "range": [0, 1]},
        "check": {"sizes": [list(size) for size in check_sizes], "tolerance": tolerance, "reference": "eager fp32"},
        "versions": _versions(format),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _write(
    module: nn.Module,
    path: Path,
    *,
    format: str,
    example: tuple[torch.Tensor, ...],
    min_side: int,
    opset: int | None,
    onnx_exporter: str,
    metadata: dict[str, Any],
) -> tuple[str, str | None]:
    """Write ``module`` in ``format`` to ``path``; returns (exporter used, why the dynamo ONNX exporter was not)."""
    if format == "onnx":
        return _write_onnx(
            module, path, example=example, min_side=min_side, opset=opset or DEFAULT_OPSET, choice=onnx_exporter,
            metadata=metadata,
        )
    if format == "pt2":
        return _write_pt2(module, path, example=example, min_side=min_side, metadata=metadata), None
    return _write_torchscript(module, path, example=example, metadata=metadata), None


def _check_format(*, format: str, dtype: str, opset: int | None, onnx_exporter: str) -> None:
    """:class:`ExportError` for an unknown setting or a combination that cannot be exported and checked."""
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


def _checked_sizes(check_sizes: Sequence[tuple[int, int]], *, min_side: int) -> list[tuple[int, int]]:
    sizes = [tuple(int(v) for v in size) for size in check_sizes]
    if len(sizes) < 2:
        raise ExportError("give at least two check sizes")
    for height, width in sizes:
        if min(height, width) < min_side:
            raise ExportError(f"check size {height}x{width} is below the export's minimum side ({min_side} px)")
        if (height, width) == EXAMPLE_SHAPE[2:]:
            raise ExportError(f"check size {height}x{width} equals the export example; use other sizes")
    return sizes


def _check_written(
    reference: nn.Module,
    path: Path,
    *,
    format: str,
    dtype: str,
    exporter: str,
    sizes: Sequence[tuple[int, int]],
    tolerance: float,
    out: Path,
    log: Callable[[str], None] | None,
    styles: Sequence[str] | None = None,
) -> dict[str, float]:
    """Load the written file back and compare it with the eager ``reference``; :class:`ExportCheckError` if it differs.

    A multi-style student is compared with a mix of all its styles (every style's
    normalisation parameters enter the result), passed to both as style weights.
    """
    try:
        loaded = load_model(path)
    except ModelLoadError as error:
        raise ExportError(f"the exported {format} ({dtype}) file cannot be loaded back: {error}") from error
    if styles is not None:
        mix = torch.softmax(torch.randn(1, len(styles), generator=torch.Generator().manual_seed(1)), dim=1)
        loaded = loaded.with_controls(style_mix={index: float(weight) for index, weight in enumerate(mix[0])})
        model, weights = reference, loaded.style_weights

        def reference(images: torch.Tensor) -> torch.Tensor:
            return model(images, weights)
    diffs = check_export(reference, loaded, sizes=sizes)
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
    return diffs


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


def _dims(min_side: int, inputs: int = 1) -> tuple[dict[int, Any] | None, ...]:
    """Dynamic batch, height and width of the images; a second input (style weights) is static (1, K)."""
    batch = Dim("batch", min=1)
    height = Dim("height", min=min_side)
    width = Dim("width", min=min_side)
    return ({0: batch, 2: height, 3: width},) + (None,) * (inputs - 1)


def _write_onnx(
    module: nn.Module,
    path: Path,
    *,
    example: tuple[torch.Tensor, ...],
    min_side: int,
    opset: int,
    choice: str,
    metadata: dict[str, Any],
) -> tuple[str, str | None]:
    input_names = ["images", "style_weights"][: len(example)]
    proto = None
    fallback_reason = None
    if choice in ("auto", "dynamo"):
        try:
            program = torch.onnx.export(
                module,
                example,
                None,
                dynamo=True,
                dynamic_shapes=_dims(min_side, len(example)),
                input_names=input_names,
                output_names=["stylized"],
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
            proto = program.model_proto
        except Exception as error:  # the exporter raises many types; any failure means fall back
            if choice == "dynamo":
                raise ExportError(f"the dynamo ONNX exporter failed: {type(error).__name__}: {one_line(error, limit=300)}") from error
            fallback_reason = f"{type(error).__name__}: {one_line(error, limit=300)}"
    exporter = "dynamo"
    if proto is None:
        exporter = "torchscript"
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            example,
            buffer,
            dynamo=False,
            input_names=input_names,
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
    proto.producer_name = "distill.export"  # the name every earlier export carries; kept across module moves
    # One self-contained file (weights inline): external-data files would not follow a rename.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return exporter, fallback_reason


def _write_pt2(module: nn.Module, path: Path, *, example: tuple[torch.Tensor, ...], min_side: int,
               metadata: dict[str, Any]) -> str:
    metadata["exporter"] = "torch.export"
    try:
        program = torch.export.export(module, example, dynamic_shapes=_dims(min_side, len(example)))
    except Exception as error:  # torch.export raises many types (constraint violations, unsupported ops, ...)
        # Seen on torch 2.11 with timm_encoder: its padding to a multiple of 32 gave a
        # dynamic-size constraint violation that the pinned torch accepts.
        raise ExportError(
            f"torch.export could not export this student for any image size on torch {torch.__version__} "
            f"({type(error).__name__}: {one_line(error, limit=300)}); use --format onnx or --format torchscript, "
            "or the torch version that constraints.txt pins"
        ) from error
    torch.export.save(program, str(path), extra_files={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return "torch.export"


def _write_torchscript(module: nn.Module, path: Path, *, example: tuple[torch.Tensor, ...], metadata: dict[str, Any]) -> str:
    metadata["exporter"] = "jit.trace"
    # Tracing, not scripting: the students' Python-level attributes (stride, timm's
    # feature hooks) are not scriptable.  Sizes are traced as tensor ops, so the graph
    # stays dynamic; check_export proves it at sizes other than the example's.
    traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return "jit.trace"


def _versions(format: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if format == "onnx":
        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions
