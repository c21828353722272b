"""Load any student model file: a checkpoint or an export, detected by content.

:func:`load_model` is the public entry point.  It accepts

* a student checkpoint (``.safetensors`` written by :func:`students.save_student`),
* an ONNX export (run by onnxruntime),
* a ``torch.export`` program (``.pt2``),
* a TorchScript module (``.pt``),

detects which one by content (the suffix only breaks ties), and returns a
:class:`StyleModel`: a callable mapping (B, 3, H, W) float RGB in [0, 1] to the same
shape in [0, 1], whatever runs underneath. A multi-style student (a checkpoint, or an export
with a ``style_weights`` input) runs in the style :meth:`StyleModel.with_controls` picks.

Safety: a model file is never unpickled.  Plain ``torch.save`` pickles (``.pt``,
``.pth``, ``.ckpt``, zip or legacy) are refused; TorchScript archives are recognised
by their ``code/`` + ``constants.pkl`` layout before ``torch.jit.load`` (whose own
restricted unpickler only rebuilds tensors and TorchScript classes); ``.pt2`` archives
are checked to hold no pickled payloads, no compiled (AOTInductor) libraries and
sample inputs that load with ``torch.load(weights_only=True)`` before
``torch.export.load`` is called (it would otherwise fall back to full unpickling).

Loading a ``.pt2`` or TorchScript file makes torch warn (deprecations, names); this module
leaves the process's warning filters alone, and the command line silences them.
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from distill.core.errors import ModelFileError, load_error_reason, one_line
from distill.deploy.controls import apply_strength, check_strength, style_weights
from students import StudentCheckpointError, read_student_metadata
from students import load_student as load_checkpoint_model

#: Key of the JSON metadata in every export (ONNX metadata_props key, and the
#: file name inside pt2 ``extra/`` and TorchScript ``extra/``).
METADATA_KEY = "distill.json"
#: Version of that metadata's layout.
METADATA_VERSION = "1"

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

KINDS = ("checkpoint", "onnx", "pt2", "torchscript")

_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")


class ModelLoadError(ModelFileError):
    """A file is not a loadable student model; the message names the file and why."""


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

    def forward(self, images: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) float32 -> (B, 3, H, W) float32, computed in ``compute_dtype``.

        ``style_weights`` (1 or B, K) float32, for a multi-style student only.
        """
        if style_weights is None:
            return self.model(images.to(self.compute_dtype)).to(torch.float32)
        return self.model(images.to(self.compute_dtype), style_weights.to(self.compute_dtype)).to(torch.float32)


class StyleModel:
    """A loaded student of any kind: ``model(images)`` with images (B, 3, H, W) in [0, 1].

    A multi-style student (``styles`` is its style names) runs with the style mix of
    ``style_weights`` (1, K), its first style unless :meth:`with_controls` chose others;
    ``strength`` < 1 moves every result toward its input (:mod:`distill.deploy.controls`).

    Attributes:
        path: the file it was loaded from.
        kind: one of ``checkpoint``, ``onnx``, ``pt2``, ``torchscript``.
        metadata: the distill metadata (student spec, provenance, export settings).
        device: where it computes; inputs are moved there and outputs returned on the
            input's device.
        dtype: ``fp32``, ``fp16`` or ``bf16``: the precision it computes in.
        stride: total stride of the network; tiles are aligned to it.
        min_side: smallest H and W it accepts.
        session: for ONNX files, the onnxruntime session (for benchmarks and
            introspection); None otherwise.
        styles: the style names of a multi-style student, else None.
        style_weights: (1, K) float32, the mix every call uses (multi-style only).
        strength: in [0, 1], how far results go from the input toward the stylisation.
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
        self.session: ort.InferenceSession | None = None
        names = (metadata.get("student") or {}).get("kwargs", {}).get("styles")
        self.styles: tuple[str, ...] | None = tuple(names) if names else None
        self.style_weights: torch.Tensor | None = style_weights(self.styles)
        self.strength = 1.0

    def with_controls(
        self, *, style_index: int | str | None = None, style_mix: str | dict[int, float] | None = None,
        strength: float | None = None,
    ) -> "StyleModel":
        """A copy of this model with its style (``style_index`` or ``style_mix``) and/or ``strength`` set;
        a control that is not given keeps this model's.

        Raises :class:`distill.deploy.controls.StyleControlError` for controls that do
        not fit the model (see :func:`distill.deploy.controls.style_weights`).
        """
        controlled = copy.copy(self)
        if style_index is not None or style_mix is not None:
            controlled.style_weights = style_weights(self.styles, index=style_index, mix=style_mix)
        if strength is not None:
            controlled.strength = check_strength(strength)
        return controlled

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
        inputs = images.to(device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            if self.style_weights is None:
                result = self._run(inputs)
            else:
                result = self._run(inputs, self.style_weights.to(self.device))
            result = apply_strength(inputs, result.to(device=self.device, dtype=torch.float32), self.strength)
        return result.to(device=source_device, dtype=torch.float32)

    def __repr__(self) -> str:
        student = self.metadata.get("student", {}).get("name", "?")
        styles = f", {len(self.styles)} styles" if self.styles else ""
        return f"StyleModel({self.kind}, {student}{styles}, {self.dtype}, {self.device}, path={str(self.path)!r})"


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


def load_model(
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
        raise ModelLoadError(f"{path}: cannot load {kind} model ({type(error).__name__}: {load_error_reason(error, limit=400)})") from error


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The distill metadata of a model file, without building the model.

    For checkpoints this is :func:`students.read_student_metadata`'s result; for exports
    the JSON written by :mod:`distill.deploy.export`.
    """
    path = Path(path)
    kind = detect_model_kind(path)
    if kind == "checkpoint":
        try:
            return read_student_metadata(path)
        except StudentCheckpointError as error:
            raise ModelLoadError(str(error)) from error
    if kind == "onnx":
        return _onnx_metadata(path, _read_onnx(path))
    names = _zip_names(path)
    root = _zip_root(names)
    return _parse_metadata(path, _zip_read_text(path, f"{root}extra/{METADATA_KEY}"))


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """A student checkpoint's model (eval mode, CPU) and metadata (see :func:`students.load_student`).

    Raises:
        ModelLoadError: the file is not a loadable student checkpoint (a pickle or an
            export is named as such).
    """
    kind = detect_model_kind(path)  # a pickle is refused as one, never unpickled
    if kind != "checkpoint":
        raise ModelLoadError(
            f"{path}: is a {kind} export, not a student checkpoint; give the .safetensors checkpoint it came from"
        )
    try:
        return load_checkpoint_model(path, device="cpu")
    except StudentCheckpointError as error:
        raise ModelLoadError(str(error)) from error


def _load_checkpoint(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    model, metadata = read_checkpoint(path)
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


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        # External data is not needed for the metadata, and not loading it keeps this cheap.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"{path}: not a valid ONNX file ({type(error).__name__}: {one_line(error, limit=400)})") from None
    if not proto.graph.node or not proto.graph.input:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph)")
    return proto


def _onnx_metadata(path: Path, proto) -> dict[str, Any]:
    props = {prop.key: prop.value for prop in proto.metadata_props}
    return _parse_metadata(path, props.get(METADATA_KEY))


def _load_onnx(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
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
            f"{path}: onnxruntime cannot run this model on {device} ({one_line(error, limit=400)})"
        ) from None
    input_names = [entry.name for entry in session.get_inputs()]
    output_name = session.get_outputs()[0].name

    def run(images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        # ORT takes host numpy arrays here; the copies are small next to the convolutions.
        feeds = {input_names[0]: images.detach().cpu().contiguous().numpy()}
        if weights is not None:
            feeds[input_names[1]] = weights.detach().cpu().float().contiguous().numpy()
        (result,) = session.run([output_name], feeds)
        return torch.from_numpy(result)

    style_model = _export_style_model(run, path, "onnx", metadata, device, dtype)
    style_model.session = session
    return style_model


def _load_pt2(path: Path, *, device: torch.device, dtype: str | None, threads: int | None) -> StyleModel:
    names = _zip_names(path)
    root = _zip_root(names)
    metadata = _parse_metadata(path, _zip_read_text(path, f"{root}extra/{METADATA_KEY}"))
    dtype = _check_export_dtype(path, metadata, dtype)
    _check_pt2_is_pickle_free(path, names, root)
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
        raise ModelLoadError(f"{path}: corrupt zip archive ({one_line(error, limit=400)})") from None


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
                        f"{path}: sample inputs {name} are not plain tensors ({load_error_reason(error)}); refused"
                    ) from None
