"""Tests for exporting students, loading any student file, tiling and scripts/stylize.py.

CPU only, random weights, tiny images.  Each (student, format) export is made once per
module and shared between tests (exports take seconds: torch.export and the dynamo ONNX
exporter trace the whole network).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from distill.cli import export as export_cli
from distill.deploy import export as export_module
from distill.deploy.export import TOLERANCES, ExportCheckError, ExportError, export_model
from distill.deploy.model_files import METADATA_KEY, ModelLoadError, load_model as load_student
from distill.deploy.stylize import output_paths, stylize_path
from distill.deploy.tiling import axis_spans, axis_windows, plan_tiles, stylize_tiled
from students import create_student, list_students, save_student

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("onnx", "pt2", "torchscript")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
# Exports taking more than ~5 s each on 2 shared cores (still run by default).
SLOW_EXPORTS = {("johnson", "onnx"), ("timm_encoder", "onnx"), ("timm_encoder", "pt2"), ("johnson", "pt2")}


pytestmark = [
    pytest.mark.usefixtures("seeded", "single_thread"),
    # The exporters' own chatter (the library leaves the process's warning filters alone).
    pytest.mark.filterwarnings(
        "ignore::torch.jit.TracerWarning", "ignore::FutureWarning", "ignore::DeprecationWarning",
        "ignore:Constant folding:UserWarning", "ignore:ONNX export mode:UserWarning",
    ),
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``exports(name, fmt, dtype="fp32") -> (path, ExportResult, eager model)``, made once."""
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str, str], tuple[Path, object, nn.Module]] = {}

    def get(name: str, fmt: str, dtype: str = "fp32"):
        key = (name, fmt, dtype)
        if key not in cache:
            torch.manual_seed(0)
            model = create_student(name).eval()
            path = folder / f"{name}_{dtype}{SUFFIX[fmt]}"
            result = export_model(model, path, format=fmt, dtype=dtype)
            cache[key] = (path, result, model)
        return cache[key]

    return get


def _combos():
    for name in list_students():
        for fmt in FORMATS:
            marks = [pytest.mark.slow] if (name, fmt) in SLOW_EXPORTS else []
            yield pytest.param(name, fmt, id=f"{name}-{fmt}", marks=marks)


def photo_like(height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """(3, H, W) in [0, 1]: smooth random waves plus a little noise (like a photo, not white noise)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    channels = []
    for _ in range(3):
        value = torch.zeros(height, width)
        for k in range(4):
            fy, fx, phase = (torch.rand(3, generator=generator) * torch.tensor([6.0, 6.0, 6.28])).tolist()
            value += torch.sin(2 * math.pi * (fy * y + fx * x) + phase) / (k + 1)
        channels.append(value)
    image = torch.stack(channels)
    image = (image - image.amin()) / (image.amax() - image.amin())
    return (0.85 * image + 0.15 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)


# --- export parity ---------------------------------------------------------------------


@pytest.mark.parametrize("name,fmt", list(_combos()))
def test_export_matches_eager_at_odd_sizes(exports, name, fmt):
    path, result, model = exports(name, fmt)
    # The export's own check ran at 67x45 (batch 1) and 130x96 (batch 2).
    assert len(result.max_abs_diff) == 2
    assert max(result.max_abs_diff.values()) <= TOLERANCES["fp32"]
    loaded = load_student(path)
    assert loaded.kind == fmt
    assert loaded.metadata["student"] == model.student_spec
    assert loaded.metadata["dtype"] == "fp32" and loaded.stride == model.stride
    if fmt == "onnx":
        # The dynamo exporter works for every built-in student; a fallback would be recorded here.
        assert result.exporter == loaded.metadata["onnx_exporter"] == "dynamo"
    images = torch.rand(3, 3, 41, 57)  # a third odd size and batch size
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(loaded(images), expected, atol=TOLERANCES["fp32"], rtol=0)


@pytest.mark.parametrize(
    "fmt,dtype",
    [
        pytest.param("torchscript", "fp16", id="torchscript-fp16"),
        pytest.param("torchscript", "bf16", id="torchscript-bf16"),
        pytest.param("onnx", "fp16", id="onnx-fp16", marks=pytest.mark.slow),
    ],
)
def test_low_precision_export_keeps_float32_interface(exports, fmt, dtype):
    path, result, model = exports("fast", fmt, dtype)
    assert max(result.max_abs_diff.values()) <= TOLERANCES[dtype]
    loaded = load_student(path)
    assert loaded.dtype == dtype
    images = torch.rand(1, 3, 37, 50)
    output = loaded(images)
    assert output.dtype == torch.float32 and output.shape == images.shape
    assert 0 <= output.min() and output.max() <= 1
    with torch.no_grad():
        assert (output - model(images)).abs().max() <= TOLERANCES[dtype]


def test_onnx_falls_back_to_the_torchscript_exporter_and_records_it(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_breaks(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo exporter failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    model = create_student("fast").eval()
    result = export_model(model, tmp_path / "fast.onnx", format="onnx")
    assert result.exporter == "torchscript"
    assert "simulated dynamo exporter failure" in result.fallback_reason
    loaded = load_student(result.path)
    assert loaded.metadata["onnx_exporter"] == "torchscript"
    assert "simulated" in loaded.metadata["onnx_fallback_reason"]
    images = torch.rand(2, 3, 29, 43)  # dynamic batch, height and width through dynamic_axes
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=TOLERANCES["fp32"], rtol=0)
    with pytest.raises(ExportError, match="dynamo ONNX exporter failed"):
        export_model(model, tmp_path / "strict.onnx", format="onnx", onnx_exporter="dynamo")
    assert not (tmp_path / "strict.onnx").exists()


def test_a_failing_torch_export_is_one_clear_error_and_no_file(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Constraints violated (height, width)!\nmore detail")

    monkeypatch.setattr(torch.export, "export", refuse)
    out = tmp_path / "fast.pt2"
    with pytest.raises(ExportError, match=r"torch.export could not export .*Constraints violated \(height, width\)!.*--format onnx") as caught:
        export_model(create_student("fast"), out, format="pt2")
    assert "\n" not in str(caught.value)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp.*"))


def test_bf16_onnx_is_refused_before_exporting(tmp_path):
    out = tmp_path / "fast.onnx"
    with pytest.raises(ExportError, match="bf16 ONNX is not supported"):
        export_model(create_student("fast"), out, format="onnx", dtype="bf16")
    assert not out.exists()


class ShapeBakingStudent(nn.Module):
    """Exports wrongly with tracing: ``float(width)`` becomes a constant of the example."""

    stride = 1
    min_side = 1

    def __init__(self):
        super().__init__()
        self.student_spec = {"name": "shape_baking", "kwargs": {}}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scale = float(images.shape[-1]) / 128.0
        return (images * scale).clamp(0, 1)


def test_failed_check_leaves_no_file(tmp_path):
    out = tmp_path / "bad.pt"
    with pytest.raises(ExportCheckError, match="differs from the eager student"):
        export_model(ShapeBakingStudent(), out, format="torchscript")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_export_cli_writes_checked_file_with_provenance(tmp_path, capsys):
    checkpoint = save_student(create_student("fast"), tmp_path / "fast.safetensors", extra={"style": "mosaic"})
    out = tmp_path / "fast.pt"
    code = export_cli.main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)])
    assert code == 0 and out.exists()
    err = capsys.readouterr().err
    assert "check 67x45 (batch 1): max |export - eager|" in err and "check 130x96 (batch 2)" in err
    metadata = load_student(out).metadata
    assert metadata["extra"] == {"style": "mosaic"}
    assert metadata["source"]["checkpoint"] == "fast.safetensors"
    assert len(metadata["source"]["sha256"]) == 64


def test_export_cli_exit_codes(tmp_path, monkeypatch, capsys):
    checkpoint = save_student(create_student("fast"), tmp_path / "fast.safetensors")
    # Unsupported combination: exit 2 with one clear line, nothing written.
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--dtype", "bf16", "--out", str(tmp_path / "a.onnx")])
    assert exit_info.value.code == 2
    assert "bf16 ONNX is not supported" in capsys.readouterr().err
    # A failed check: exit 1, nothing written.
    monkeypatch.setattr(export_module, "check_export", lambda *args, **kwargs: {"67x45 (batch 1)": 0.5, "130x96 (batch 2)": 0.0})
    out = tmp_path / "b.pt"
    assert export_cli.main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 1
    assert "67x45 (batch 1): 0.5" in capsys.readouterr().err
    assert not out.exists()


# --- loading: every kind, and bad files ------------------------------------------------


def test_load_checkpoint_matches_eager_and_runs_in_fp16(tmp_path):
    model = create_student("fast").eval()
    path = save_student(model, tmp_path / "fast.safetensors")
    loaded = load_student(path)
    assert loaded.kind == "checkpoint" and loaded.stride == 4 and loaded.min_side == 5
    images = torch.rand(2, 3, 23, 31)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
        half = load_student(path, dtype="fp16")(images)
    assert half.dtype == torch.float32
    assert (half - model(images)).abs().max() <= TOLERANCES["fp16"]
    with pytest.raises(ValueError, match="too small"):
        loaded(torch.rand(1, 3, 4, 40))


def test_checkpoint_whose_header_starts_like_a_pickle_still_loads(tmp_path):
    # The safetensors header length is little-endian; a low byte of 0x80 is pickle's
    # PROTO opcode, which must not make a valid checkpoint look like a pickle.
    model = create_student("fast")
    for padding in range(256):
        path = save_student(model, tmp_path / "fast.safetensors", extra={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert load_student(path).kind == "checkpoint"


def test_export_refuses_another_dtype(exports):
    path, _, _ = exports("fast", "torchscript")
    with pytest.raises(ModelLoadError, match="exported in fp32"):
        load_student(path, dtype="fp16")


class Marker:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename, old.read(info.filename)))


def test_pickle_checkpoints_are_never_unpickled(tmp_path, exports):
    marker = tmp_path / "UNPICKLED"
    evil = Marker(marker)
    files = {}
    files["legacy.pt"] = pickle.dumps({"state_dict": evil}, protocol=2)
    files["plain.ckpt"] = pickle.dumps(evil)
    buffer = io.BytesIO()
    torch.save({"model": evil}, buffer)  # zip format with data.pkl
    files["zip.pth"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save({"model": evil}, buffer, _use_new_zipfile_serialization=False)
    files["old.pth"] = buffer.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    # A TorchScript-shaped zip whose data.pkl would open the marker: torch.jit.load's
    # restricted unpickler must refuse it.
    fake = tmp_path / "fake_ts.pt"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("fake_ts/code/__torch__.py", "")
        archive.writestr("fake_ts/constants.pkl", pickle.dumps(()))
        archive.writestr("fake_ts/data.pkl", pickle.dumps(evil))
        archive.writestr("fake_ts/extra/" + METADATA_KEY, json.dumps({"format_version": "1"}))
    files[fake.name] = b""

    # A real .pt2 export whose sample inputs were replaced by a malicious pickle, and one
    # whose weights are flagged as pickled: torch.export.load would unpickle both.
    pt2, _, _ = exports("fast", "pt2")
    with zipfile.ZipFile(pt2) as archive:
        names = archive.namelist()
        weights_config_name = next(n for n in names if n.endswith("model_weights_config.json"))
        weights_config = json.loads(archive.read(weights_config_name))
    sample_name = next(n for n in names if "/data/sample_inputs/" in n)
    buffer = io.BytesIO()
    torch.save((evil,), buffer)
    _rewrite_zip(pt2, tmp_path / "evil_inputs.pt2", {sample_name: buffer.getvalue()})
    first = next(iter(weights_config["config"]))
    weights_config["config"][first]["use_pickle"] = True
    _rewrite_zip(pt2, tmp_path / "evil_weights.pt2", {weights_config_name: json.dumps(weights_config).encode()})
    files["evil_inputs.pt2"] = files["evil_weights.pt2"] = b""

    for name in files:
        path = tmp_path / name
        with pytest.raises(ModelLoadError) as error:
            load_student(path)
        assert str(path) in str(error.value)
        assert not marker.exists(), f"{name} was unpickled"
    for name in ("legacy.pt", "plain.ckpt", "zip.pth", "old.pth"):
        with pytest.raises(ModelLoadError, match="never unpickled"):
            load_student(tmp_path / name)


def test_bad_model_files_give_one_clear_error(tmp_path, exports):
    random_bytes = np.random.default_rng(0).bytes(4096)
    cases = {
        "missing.onnx": None,
        "empty.safetensors": b"",
        "random.onnx": random_bytes,
        "random.pt": random_bytes,
        "random.pt2": random_bytes,
        "random.safetensors": random_bytes,
        "random.bin": random_bytes,
        "noext": random_bytes,
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, plain)
    cases[plain.name] = b""
    # An ONNX export whose distill metadata was stripped.
    import onnx

    source, _, _ = exports("fast", "onnx")
    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    cases["foreign.onnx"] = b""

    for name in cases:
        path = tmp_path / name
        with pytest.raises(ModelLoadError) as error:
            load_student(path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, message
    with pytest.raises(ModelLoadError, match="no distill metadata"):
        load_student(plain)
    with pytest.raises(ModelLoadError, match="no distill metadata"):
        load_student(tmp_path / "foreign.onnx")
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_student(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_student(tmp_path / "empty.safetensors")


# --- tiling ----------------------------------------------------------------------------


@pytest.mark.parametrize("length,tile,overlap,align", [(420, 128, 32, 4), (300, 256, 128, 4), (1000, 96, 0, 32), (97, 64, 32, 32), (50, 64, 16, 4)])
def test_tile_spans_cover_align_and_overlap(length, tile, overlap, align):
    spans = axis_spans(length, tile=tile, overlap=overlap, align=align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 > a0 and a1 - b0 >= overlap  # no gap, enough shared context
    assert all(start % align == 0 for start, _ in spans)
    if len(spans) > 1:
        assert all(tile <= end - start < tile + align for start, end in spans)
    windows = axis_windows(spans, length, overlap=overlap)
    total = torch.zeros(length)
    for (start, end), window in zip(spans, windows):
        total[start:end] += window
        if start > 0:  # the outer overlap // 4 px at a shared edge are context only
            assert bool((window[: overlap // 4] == 0).all())
    torch.testing.assert_close(total, torch.ones(length))


class FrozenInstanceNorm(nn.Module):
    """Instance norm with fixed (whole-image) statistics: a purely local operation."""

    def __init__(self, norm: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        normalised = (features - self.mean) / torch.sqrt(self.var + self.norm.eps)
        return normalised * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]


def freeze_instance_norm(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """Replace every InstanceNorm2d by its statistics on ``image`` (whole-image run).

    On ``image`` itself the frozen model gives the same output as ``model``; it has a
    finite receptive field, so tiling it is exact given enough context.
    """
    stats = {}

    def hook(name):
        def record(module, inputs, output):
            features = inputs[0]
            stats[name] = (features.mean((0, 2, 3))[:, None, None], features.var((0, 2, 3), unbiased=False)[:, None, None])
        return record

    norms = {name: module for name, module in model.named_modules() if isinstance(module, nn.InstanceNorm2d)}
    handles = [module.register_forward_hook(hook(name)) for name, module in norms.items()]
    with torch.no_grad():
        model(image[None])
    for handle in handles:
        handle.remove()
    for name, module in norms.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, FrozenInstanceNorm(module, *stats[name]))
    return model


def receptive_radius(model: nn.Module, side: int = 160) -> int:
    """Largest distance from an output pixel to an input pixel that influences it."""
    images = torch.rand(1, 3, side, side, requires_grad=True)
    model(images)[0, :, side // 2, side // 2].sum().backward()
    rows, cols = torch.nonzero(images.grad[0].abs().sum(0) > 0, as_tuple=True)
    return int(max((rows - side // 2).abs().max(), (cols - side // 2).abs().max()))


def border_mask(plan, radius: int) -> torch.Tensor:
    """True within ``radius`` px of a tile edge that is not an image edge."""
    mask = torch.zeros(plan.height, plan.width, dtype=torch.bool)
    for start, end in plan.rows:
        for edge in (start, end):
            if 0 < edge < plan.height:
                mask[max(0, edge - radius) : edge + radius, :] = True
    for start, end in plan.cols:
        for edge in (start, end):
            if 0 < edge < plan.width:
                mask[:, max(0, edge - radius) : edge + radius] = True
    return mask


@pytest.fixture(scope="module")
def local_fast():
    """``fast`` with instance norm frozen to a test image's statistics, and that image."""
    torch.manual_seed(0)
    image = photo_like(300, 420)
    model = freeze_instance_norm(create_student("fast").eval(), image)
    return model, image


def test_tiling_is_exact_for_a_local_network_given_enough_context(local_fast):
    model, image = local_fast
    radius = receptive_radius(model)  # 32 px for fast
    with torch.no_grad():
        whole = model(image[None])[0]
    overlap = 4 * radius  # overlap // 4 px of context >= the receptive radius
    tiled = stylize_tiled(model, image, tile=2 * overlap, overlap=overlap, align=model.stride)
    assert plan_tiles(300, 420, tile=2 * overlap, overlap=overlap, align=4).num_tiles > 1
    # Exact up to float rounding, at tile borders too.
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("overlap,border_tolerance", [(64, 1e-2), (0, None)])
def test_tiling_is_exact_away_from_tile_borders(local_fast, overlap, border_tolerance):
    model, image = local_fast
    radius = receptive_radius(model)
    with torch.no_grad():
        whole = model(image[None])[0]
    plan = plan_tiles(300, 420, tile=128, overlap=overlap, align=model.stride)
    tiled = stylize_tiled(model, image, tile=128, overlap=overlap, align=model.stride)
    difference = (tiled - whole).abs().amax(0)
    near_border = border_mask(plan, radius)
    assert difference[~near_border].max() <= 1e-5  # interior: exact
    if border_tolerance is not None:
        # 16 px of context < the 32 px receptive radius: not exact at borders, but the
        # blend keeps it close (measured ~3e-3).
        assert difference[near_border].max() <= border_tolerance
    else:
        # Hard cuts (no overlap) leave visible errors along tile borders (measured ~0.4).
        assert difference[near_border].max() > 0.05


def test_tiling_with_instance_norm_differs_by_tile_statistics_only():
    """Real students normalise each tile by its own statistics (documented in distill.deploy.tiling)."""
    model = create_student("fast").eval()
    image = photo_like(192, 320)
    with torch.no_grad():
        whole = model(image[None])[0]
    # One tile covering the image is the untiled run.
    torch.testing.assert_close(stylize_tiled(model, image, tile=320, overlap=0, align=4), whole, atol=1e-6, rtol=0)
    # 128 px tiles: different statistics per tile, so a small difference everywhere
    # (measured mean ~0.02-0.05 with random weights); bounded, in range, no NaN.
    tiled = stylize_tiled(model, image, tile=128, overlap=64, align=4)
    difference = (tiled - whole).abs()
    assert 0 < difference.mean() < 0.1
    assert 0 <= tiled.min() and tiled.max() <= 1


def test_tiling_runs_one_tile_at_a_time():
    calls = []

    def model(images):
        calls.append(tuple(images.shape))
        return images.clone()

    image = torch.rand(3, 300, 500)
    plan = plan_tiles(300, 500, tile=128, overlap=32, align=4)
    tiled = stylize_tiled(model, image, tile=128, overlap=32, align=4)
    torch.testing.assert_close(tiled, image)  # identity model: blending is a partition of unity
    assert len(calls) == plan.num_tiles
    assert all(shape[0] == 1 and shape[2] * shape[3] <= plan.max_tile_pixels for shape in calls)


# --- stylize ---------------------------------------------------------------------------


def test_output_paths_mirror_folders_and_resolve_collisions(tmp_path):
    for rel in ("a.jpg", "a.png", "sub/b.webp", "out/old.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    pairs = {src.relative_to(tmp_path).as_posix(): dst.relative_to(tmp_path).as_posix() for src, dst in output_paths(tmp_path, tmp_path / "out")}
    assert pairs == {"a.jpg": "out/a.jpg.png", "a.png": "out/a.png.png", "sub/b.webp": "out/sub/b.png"}


def test_stylize_script_end_to_end(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_student(create_student("fast"), tmp_path / "fast.safetensors")
    content = tmp_path / "photos"
    (content / "nested").mkdir(parents=True)
    Image.fromarray((photo_like(40, 52).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(content / "one.png")
    # EXIF orientation 6 (rotate 90 degrees): stored 30x20, shown (and stylised) 20x30.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20), (200, 50, 50)).save(content / "nested" / "rotated.jpg", exif=exif)
    Image.new("RGB", (96, 80), (20, 120, 200)).save(content / "nested" / "large.png")
    (content / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    output = tmp_path / "styled"
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "stylize.py"),
        "--model", str(checkpoint), "--input", str(content), "--output", str(output),
        "--device", "cpu", "--batch-size", "2", "--pixel-budget", "5000",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1, run.stderr  # 1: some images were unreadable
    assert run.stderr.count("broken.jpg") == 1
    assert "3 written, 1 tiled, 1 unreadable skipped" in run.stderr
    assert Image.open(output / "one.png").size == (52, 40)
    assert Image.open(output / "nested" / "rotated.png").size == (20, 30)
    assert Image.open(output / "nested" / "large.png").size == (96, 80)
    assert not (output / "broken.png").exists()

    # Rerun in-process (the library behind the script): existing outputs are skipped.
    summary = stylize_path(load_student(checkpoint), content, output, skip_existing=True)
    assert summary.written == [] and len(summary.skipped_existing) == 3 and len(summary.failed) == 1
