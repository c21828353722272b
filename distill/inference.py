"""Run a trained student on images: load any student file, stylise files and folders.

:func:`load_student` is the public entry point.  It accepts

* a student checkpoint (``.safetensors`` written by :func:`students.save_student`),
* an ONNX export (run by onnxruntime),
* a ``torch.export`` program (``.pt2``),
* a TorchScript module (``.pt``),

detects which one by content (the suffix only breaks ties), and returns a
:class:`StyleModel`: a callable mapping (B, 3, H, W) float RGB in [0, 1] to the same
shape in [0, 1], whatever runs underneath.

Safety: a model file is never unpickled.  Plain ``torch.save`` pickles (``.pt``,
``.pth``, ``.ckpt``, zip or legacy) are refused; TorchScript archives are recognised
by their ``code/`` + ``constants.pkl`` layout before ``torch.jit.load`` (whose own
restricted unpickler only rebuilds tensors and TorchScript classes); ``.pt2`` archives
are checked to hold no pickled payloads, no compiled (AOTInductor) libraries and
sample inputs that load with ``torch.load(weights_only=True)`` before
``torch.export.load`` is called (it would otherwise fall back to full unpickling).

:func:`stylize_path` stylises one image or a whole folder (recursively), tiling images
above a pixel budget with :mod:`distill.tiling`.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.imaging import ImageLoadError, _pil_format, list_images, load_image, save_image
from distill.tiling import DEFAULT_OVERLAP, DEFAULT_PIXEL_BUDGET, DEFAULT_TILE, stylize_tiled

#: Key of the JSON metadata in every export (ONNX metadata_props key, and the
#: file name inside pt2 ``extra/`` and TorchScript ``extra/``).
METADATA_KEY = "distill.json"
#: Version of that metadata's layout.
METADATA_VERSION = "1"

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

KINDS = ("checkpoint", "onnx", "pt2", "torchscript")

_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")


class ModelLoadError(ValueError):
    """A file is not a loadable student model; the message names the file and why."""


class StylizeInputError(ValueError):
    """Bad arguments to :func:`stylize_path` (tile/overlap/batch size, output kind)."""


class PrecisionWrapper(nn.Module):
    """Run ``model`` in ``dtype`` but take and return float32 images.

    The weights are cast once; the input is cast on the way in and the result back
    to float32 on the way out, so callers (and exported graphs) keep a float32
    (B, 3, H, W) [0, 1] interface whatever precision computes inside.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.compute_dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 -> (B, 3, H, W) float32, computed in ``compute_dtype``."""
        return self.model(images.to(self.compute_dtype)).to(torch.float32)


class StyleModel:
    """A loaded student of any kind: ``model(images)`` with images (B, 3, H, W) in [0, 1].

    Attributes:
        path: the file it was loaded from.
        kind: one of ``checkpoint``, ``onnx``, ``pt2``, ``torchscript``.
        metadata: the distill metadata (student spec, provenance, export settings).
        device: where it computes; inputs are moved there and outputs returned on the
            input's device.
        dtype: ``fp32``, ``fp16`` or ``bf16``: the precision it computes in.
        stride: total stride of the network; tiles are aligned to it.
        min_side: smallest H and W it accepts.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        *,
        path: Path,
        kind: str,
        metadata: dict[str, Any],
        device: torch.device,
        dtype: str,
        stride: int,
        min_side: int,
    ):
        self._run = run
        self.path = path
        self.kind = kind
        self.metadata = metadata
        self.device = device
        self.dtype = dtype
        self.stride = int(stride)
        self.min_side = int(min_side)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Stylise (B, 3, H, W) float RGB in [0, 1] -> (B, 3, H, W) float32 in [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape (B, 3, H, W), got {shape}")
        height, width = images.shape[-2:]
        if min(height, width) < self.min_side:
            raise ValueError(
                f"input of size {height}x{width} is too small for {self.path.name}: "
                f"both sides must be at least {self.min_side} px"
            )
        source_device = images.device
        with torch.inference_mode():
            result = self._run(images.to(device=self.device, dtype=torch.float32))
        return result.to(device=source_device, dtype=torch.float32)

    def __repr__(self) -> str:
        student = self.metadata.get("student", {}).get("name", "?")
        return f"StyleModel({self.kind}, {student}, {self.dtype}, {self.device}, path={str(self.path)!r})"


# --- loading ----------------------------------------------------------------------


def detect_model_kind(path: str | os.PathLike[str]) -> str:
    """Which kind of model file ``path`` is, by content: one of :data:`KINDS`.

    Raises:
        ModelLoadError: missing, empty, a folder, a pickle checkpoint, or unrecognised.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: empty file")
    with open(path, "rb") as handle:
        head = handle.read(16)

    if zipfile.is_zipfile(path):
        return _zip_kind(path)
    if len(head) >= 9:
        # safetensors: little-endian u64 header length, then the JSON header.  Checked
        # before the pickle test: a header length's low byte can be 0x80.  (Whatever
        # passes here is only ever parsed by safetensors, which never unpickles.)
        (header_length,) = struct.unpack("<Q", head[:8])
        if 0 < header_length <= size - 8 and head[8:9] == b"{":
            return "checkpoint"
    if head[:1] == b"\x80" or (path.suffix.lower() in _PICKLE_SUFFIXES and head[:1] in (b"(", b"]", b"}")):
        # Pickle protocol 2+ starts with PROTO (0x80): legacy torch.save or plain pickle.
        raise ModelLoadError(_pickle_refusal(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "checkpoint"  # the checkpoint reader gives the precise complaint
    if suffix == ".onnx":
        return "onnx"
    if suffix in _PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path}: not a TorchScript archive, and not a format this toolkit reads "
            "(.safetensors checkpoint, .onnx, .pt2 or TorchScript .pt)"
        )
    raise ModelLoadError(
        f"{path}: unrecognised model file; expected a student checkpoint (.safetensors) or an export "
        "from scripts/export_student.py (.onnx, .pt2, TorchScript .pt)"
    )


def load_student(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    threads: int | None = None,
) -> StyleModel:
    """Load a student checkpoint or export as a callable (B, 3, H, W) [0, 1] -> same.

    Args:
        path: ``.safetensors`` checkpoint, ``.onnx``, ``.pt2`` or TorchScript ``.pt``
            (detected by content).
        device: ``cpu`` or ``cuda[:N]``.  ONNX uses onnxruntime's CUDA provider for cuda.
        dtype: ``fp32``, ``fp16`` or ``bf16`` to run a checkpoint in that precision
            (float32 in and out).  Exports compute in the precision they were exported
            with; asking an export for another one is an error.  ``None``: fp32 for
            checkpoints, the export's own precision otherwise.
        threads: onnxruntime intra-op threads (default: ``torch.get_num_threads()``,
            which follows ``OMP_NUM_THREADS``).

    Returns:
        A :class:`StyleModel`.

    Raises:
        ModelLoadError: the file cannot be loaded (missing, empty, random bytes, a
            pickle checkpoint, a safetensors file without distill metadata, an export
            without distill metadata, ...) or the requested dtype/device cannot be used.
    """
    path = Path(path)
    device = torch.device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    kind = detect_model_kind(path)
    loader = {
        "checkpoint": _load_checkpoint,
        "onnx": _load_onnx,
        "pt2": _load_pt2,
        "torchscript": _load_torchscript,
    }[kind]
    try:
        return loader(path, device=device, dtype=dtype, threads=threads)
    except ModelLoadError:
        raise
    except Exception as error:  # a runtime's own error types vary; name the file once
        raise ModelLoadError(f"{path}: cannot load {kind} model ({type(error).__name__}: {_one_line(error)})") from error


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The distill metadata of a model file, without building the model.

    For checkpoints this is :func:`students.read_student_metadata`'s result; for exports
    the JSON written by :mod:`distill.export`.
    """
    path = Path(path)
    kind = detect_model_kind(path)
    if kind == "checkpoint":
        from students import StudentCheckpointError, read_student_metadata

        try:
            return read_student_metadata(path)
        except StudentCheckpointError as error:
            raise ModelLoadError(str(error)) from error
    if kind == "onnx":
        return _onnx_metadata(path, _read_onnx(path))
    names = _zip_names(path)
    root = _zip_root(names)
    return _parse_metadata(path, _zip_read_text(path, f"{root}extra/{METADATA_KEY}"))


def _load_checkpoint(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    from students import StudentCheckpointError
    from students import load_student as load_checkpoint

    try:
        model, metadata = load_checkpoint(path, device="cpu")
    except StudentCheckpointError as error:
        raise ModelLoadError(str(error)) from error
    dtype = dtype or "fp32"
    if dtype != "fp32":
        model = PrecisionWrapper(model, DTYPES[dtype]).eval()
    model = model.to(device)
    inner = model.model if isinstance(model, PrecisionWrapper) else model
    return StyleModel(
        model,
        path=path,
        kind="checkpoint",
        metadata=metadata,
        device=device,
        dtype=dtype,
        stride=int(getattr(inner, "stride", 1)),
        min_side=int(getattr(inner, "min_side", 1)),
    )


def _check_export_dtype(path: Path, metadata: dict[str, Any], dtype: str | None) -> str:
    stored = metadata.get("dtype", "fp32")
    if dtype is not None and dtype != stored:
        raise ModelLoadError(
            f"{path}: was exported in {stored}; an export cannot be run in {dtype} "
            f"(re-export with --dtype {dtype}, or pass the .safetensors checkpoint)"
        )
    return stored


def _export_style_model(
    run: Callable[[torch.Tensor], torch.Tensor], path: Path, kind: str, metadata: dict[str, Any], device: torch.device, dtype: str
) -> StyleModel:
    return StyleModel(
        run,
        path=path,
        kind=kind,
        metadata=metadata,
        device=device,
        dtype=dtype,
        stride=int(metadata.get("stride", 1)),
        min_side=int(metadata.get("min_side", 1)),
    )


def _read_onnx(path: Path):
    import onnx

    try:
        # External data is not needed for the metadata, and not loading it keeps this cheap.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"{path}: not a valid ONNX file ({type(error).__name__}: {_one_line(error)})") from None
    if not proto.graph.node or not proto.graph.input:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph)")
    return proto


def _onnx_metadata(path: Path, proto) -> dict[str, Any]:
    props = {prop.key: prop.value for prop in proto.metadata_props}
    return _parse_metadata(path, props.get(METADATA_KEY))


def _load_onnx(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    import onnxruntime as ort

    metadata = _onnx_metadata(path, _read_onnx(path))
    dtype = _check_export_dtype(path, metadata, dtype)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelLoadError(
                f"{path}: onnxruntime on this machine has no CUDAExecutionProvider "
                "(install onnxruntime-gpu, or use --device cpu)"
            )
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    elif device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ModelLoadError(f"{path}: onnxruntime cannot run on device {device}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:
        raise ModelLoadError(
            f"{path}: onnxruntime cannot run this model on {device} ({_one_line(error)})"
        ) from None
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        # ORT takes host numpy arrays here; the copies are small next to the convolutions.
        array = images.detach().cpu().contiguous().numpy()
        (result,) = session.run([output_name], {input_name: array})
        return torch.from_numpy(result)

    style_model = _export_style_model(run, path, "onnx", metadata, device, dtype)
    style_model.session = session  # for benchmarks and introspection
    return style_model


def _load_pt2(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    names = _zip_names(path)
    root = _zip_root(names)
    metadata = _parse_metadata(path, _zip_read_text(path, f"{root}extra/{METADATA_KEY}"))
    dtype = _check_export_dtype(path, metadata, dtype)
    _check_pt2_is_pickle_free(path, names, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(path, "rb") as handle:
            # A seekable handle, not the path: load_pt2 warns about names not ending in .pt2.
            program = torch.export.load(io.BytesIO(handle.read()))
    module = program.module().to(device)
    return _export_style_model(module, path, "pt2", metadata, device, dtype)


def _load_torchscript(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    names = _zip_names(path)
    root = _zip_root(names)
    metadata = _parse_metadata(path, _zip_read_text(path, f"{root}extra/{METADATA_KEY}"))
    dtype = _check_export_dtype(path, metadata, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return _export_style_model(module, path, "torchscript", metadata, device, dtype)


def _parse_metadata(path: Path, text: str | None) -> dict[str, Any]:
    if text is None:
        raise ModelLoadError(
            f"{path}: has no distill metadata; it was not exported by scripts/export_student.py "
            "(only student exports with a known input contract are loaded)"
        )
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: corrupt distill metadata ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != METADATA_VERSION:
        version = metadata.get("format_version") if isinstance(metadata, dict) else None
        raise ModelLoadError(f"{path}: unsupported distill metadata version {version!r} (expected {METADATA_VERSION!r})")
    return metadata


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"{path}: corrupt zip archive ({_one_line(error)})") from None


def _zip_root(names: list[str]) -> str:
    """The common top folder of a torch zip archive, with its trailing slash ('' if none)."""
    first = names[0] if names else ""
    root = first.split("/", 1)[0] + "/" if "/" in first else ""
    return root if all(name.startswith(root) for name in names) else ""


def _zip_read_text(path: Path, name: str) -> str | None:
    with zipfile.ZipFile(path) as archive:
        try:
            return archive.read(name).decode("utf-8")
        except KeyError:
            return None


def _zip_kind(path: Path) -> str:
    """TorchScript or pt2 by archive layout; refuse torch.save pickles and other zips."""
    names = _zip_names(path)
    root = _zip_root(names)
    inner = {name[len(root):] for name in names}
    if "archive_format" in inner:
        if (_zip_read_text(path, f"{root}archive_format") or "").strip() == "pt2":
            return "pt2"
        raise ModelLoadError(f"{path}: a PT2 archive of an unsupported kind")
    has_code = any(name.startswith("code/") for name in inner)
    if has_code and "constants.pkl" in inner and "data.pkl" in inner:
        return "torchscript"
    if "data.pkl" in inner or any(name.endswith(".pkl") for name in inner):
        raise ModelLoadError(_pickle_refusal(path))
    if "serialized_exported_program.json" in inner:
        raise ModelLoadError(f"{path}: torch.export archive in the pre-2.7 format, which stores pickles; re-export it")
    raise ModelLoadError(f"{path}: a zip archive that is neither TorchScript nor a torch.export .pt2")


def _pickle_refusal(path: Path) -> str:
    return (
        f"{path}: is a pickle checkpoint (torch.save); it is never unpickled, because unpickling runs "
        "arbitrary code. Save students with students.save_student (.safetensors) or export them with "
        "scripts/export_student.py"
    )


def _check_pt2_is_pickle_free(path: Path, names: list[str], root: str) -> None:
    """Refuse .pt2 archives on which torch.export.load would unpickle or load native code."""
    inner = [name[len(root):] for name in names]
    unsafe = [name for name in inner if name.startswith("data/aotinductor/")]
    if unsafe:
        raise ModelLoadError(f"{path}: contains AOTInductor-compiled code ({unsafe[0]}); refused")
    with zipfile.ZipFile(path) as archive:
        for name in inner:
            if name.startswith(("data/weights/", "data/constants/")) and name.endswith(".pt"):
                raise ModelLoadError(f"{path}: legacy pickled weights ({name}); refused, re-export it")
            if name.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
                config = json.loads(archive.read(root + name)).get("config", {})
                for key, payload in config.items():
                    pickled = payload.get("use_pickle") or not str(payload.get("path_name", "")).startswith(
                        ("weight_", "tensor_")
                    )
                    if pickled:
                        raise ModelLoadError(f"{path}: pickled payload {key!r} in {name}; refused, never unpickled")
            if name.startswith("data/sample_inputs/"):
                # torch.export.load tries weights_only=True and then falls back to a full
                # unpickle; make sure the safe load succeeds so the fallback never runs.
                try:
                    torch.load(io.BytesIO(archive.read(root + name)), weights_only=True)
                except Exception as error:
                    raise ModelLoadError(
                        f"{path}: sample inputs {name} are not plain tensors ({_one_line(error)}); refused"
                    ) from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 400 else text[:400] + " ..."


# --- stylising files and folders -----------------------------------------------------


@dataclass
class StylizeSummary:
    """What one :func:`stylize_path` call did."""

    written: list[Path] = field(default_factory=list)
    skipped_existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)
    tiled: int = 0  # images that were stylised in tiles
    seconds: float = 0.0


def output_paths(input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input image, output image) pairs for a file or a folder.

    A file maps to ``output`` itself when that has a suffix (which picks the format:
    .png, .jpg, .webp, .tif, .bmp), else (or when ``output`` is a folder) to
    ``output/<stem>.png``.  A folder's images (recursively) map to the same relative
    paths under ``output`` with a ``.png`` suffix; names that would collide
    (``a.jpg`` and ``a.png``) keep their original suffix too (``a.jpg.png``).  Files
    inside ``output`` are not inputs, so rerunning with the output inside the input
    folder does not stylise earlier results.
    """
    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    if input_path.is_file():
        if output.suffix and not output.is_dir():
            try:
                _pil_format(output)  # an unsupported suffix fails now, not after the work
            except ValueError as error:
                raise StylizeInputError(str(error)) from None
            return [(input_path, output)]
        return [(input_path, output / f"{input_path.stem}.png")]
    if output.exists() and not output.is_dir():
        raise StylizeInputError(f"{output}: the input is a folder, so the output must be a folder too")
    resolved_output = output.resolve()
    images = [
        path for path in list_images(input_path)
        if not path.resolve().is_relative_to(resolved_output)
    ]
    relative = [path.relative_to(input_path) for path in images]
    counts: dict[Path, int] = {}
    for rel in relative:
        counts[rel.with_suffix(".png")] = counts.get(rel.with_suffix(".png"), 0) + 1
    pairs = []
    for path, rel in zip(images, relative):
        target = rel.with_suffix(".png")
        if counts[target] > 1:
            target = rel.with_name(rel.name + ".png")
        pairs.append((path, output / target))
    return pairs


def stylize_path(
    model: StyleModel,
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 1,
    tile: int | None = None,
    overlap: int | None = None,
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
    skip_existing: bool = False,
    progress: Callable[[int, int], None] | None = None,
    tile_progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> StylizeSummary:
    """Stylise one image or a folder of images (recursively) with ``model``.

    Every image keeps its size (EXIF orientation applied by :func:`load_image`).
    Images of equal size are batched up to ``batch_size``.  An image is tiled when
    ``tile`` is given, or automatically when it has more than ``pixel_budget`` pixels
    (``DEFAULT_TILE`` px tiles, ``DEFAULT_OVERLAP`` px overlap); see :mod:`distill.tiling`.

    Args:
        model: from :func:`load_student`.
        input_path: an image file or a folder.
        output: output file or folder (see :func:`output_paths`).
        batch_size: images per model call (same-size images only).
        tile, overlap: force tiling with this tile side / overlap in px.
        pixel_budget: automatic tiling above this many pixels per image.
        skip_existing: leave outputs that already exist alone.
        progress: ``progress(done_images, total_images)`` after each image.
        tile_progress: ``tile_progress(done_tiles, total_tiles)`` inside a tiled image.
        log: receives one line per unreadable image (default: nothing; they are in
            the summary either way).

    Returns:
        A :class:`StylizeSummary`.  Unreadable images are skipped and listed in
        ``failed``; a single unreadable input file raises :class:`ImageLoadError`.
    """
    if batch_size < 1:
        raise StylizeInputError(f"batch size must be >= 1, got {batch_size}")
    if tile is not None and tile // model.stride * model.stride < max(model.min_side, model.stride):
        raise StylizeInputError(
            f"tile ({tile}, rounded down to a multiple of the model's stride {model.stride}) must be at least "
            f"the model's minimum side ({max(model.min_side, model.stride)} px)"
        )
    if overlap is not None and tile is None:
        raise StylizeInputError("an overlap needs a tile size")
    if tile is not None and overlap is not None:
        aligned = tile // model.stride * model.stride
        if not 0 <= overlap <= aligned // 2:
            raise StylizeInputError(
                f"overlap ({overlap}) must be between 0 and half the tile ({aligned // 2}; "
                f"the tile is rounded down to a multiple of the model's stride, {model.stride})"
            )
    started = time.perf_counter()
    input_path = Path(input_path)
    single = input_path.is_file()
    pairs = output_paths(input_path, Path(output))
    summary = StylizeSummary()
    todo = []
    for source, target in pairs:
        if skip_existing and target.exists():
            summary.skipped_existing.append(target)
        else:
            todo.append((source, target))
    done = 0
    total = len(todo)

    def finish(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    def run_batch(batch: list[tuple[Path, Path, torch.Tensor]]) -> None:
        images = torch.stack([image for _, _, image in batch])
        results = model(images)
        for (_, target, _), result in zip(batch, results):
            save_image(result, target)
            summary.written.append(target)
        finish(len(batch))

    pending: list[tuple[Path, Path, torch.Tensor]] = []
    for source, target in todo:
        try:
            image = load_image(source)
        except ImageLoadError as error:
            if single:
                raise
            summary.failed.append((source, str(error)))
            if log is not None:
                log(f"skipped {error}")
            finish(1)
            continue
        height, width = image.shape[-2:]
        if min(height, width) < model.min_side:
            reason = f"{source}: {width}x{height} is smaller than the model's minimum side ({model.min_side} px)"
            if single:
                raise ImageLoadError(reason)
            summary.failed.append((source, reason))
            if log is not None:
                log(f"skipped {reason}")
            finish(1)
            continue
        if tile is not None or height * width > pixel_budget:
            if pending:
                run_batch(pending)
                pending = []
            tile_side = tile or DEFAULT_TILE
            result = stylize_tiled(
                model,
                image,
                tile=tile_side,
                overlap=min(DEFAULT_OVERLAP, tile_side // 4) if overlap is None else overlap,
                align=model.stride,
                progress=tile_progress,
            )
            del image  # the input is no longer needed while the output is encoded
            save_image(result, target)
            summary.written.append(target)
            summary.tiled += 1
            finish(1)
            continue
        if pending and (pending[0][2].shape != image.shape or len(pending) >= batch_size):
            run_batch(pending)
            pending = []
        pending.append((source, target, image))
    if pending:
        run_batch(pending)
    summary.seconds = time.perf_counter() - started
    return summary
