"""Tests for the students package: shapes, ranges, gradients, export, checkpoints.

CPU only, random weights (pretrained=False), tiny images.
"""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from students import (
    StudentCheckpointError,
    create_student,
    list_students,
    load_student,
    read_student_metadata,
    save_student,
)

ODD_SIZES = [(33, 47), (64, 64), (65, 31)]


pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


@pytest.fixture(params=list_students())
def student_name(request) -> str:
    return request.param


# --- registry -------------------------------------------------------------


def test_builtin_students_are_registered():
    assert {"johnson", "fast", "timm_encoder"} <= set(list_students())


def test_unknown_student_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown student 'nope'") as error:
        create_student("nope")
    for name in list_students():
        assert name in str(error.value)


def test_create_student_records_json_spec():
    model = create_student("johnson", num_residual_blocks=2)
    assert model.student_spec == {"name": "johnson", "kwargs": {"num_residual_blocks": 2}}
    json.dumps(model.student_spec)


def test_non_json_kwargs_are_rejected():
    with pytest.raises(ValueError, match="JSON"):
        create_student("johnson", num_residual_blocks=object())


# --- every student ----------------------------------------------------------


@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_has_input_shape_and_unit_range(student_name, size):
    model = create_student(student_name).eval()
    images = torch.rand(2, 3, *size)
    original = images.clone()
    with torch.no_grad():
        stylised = model(images)
    assert stylised.shape == images.shape
    assert stylised.dtype == torch.float32
    assert 0.0 <= stylised.min() and stylised.max() <= 1.0
    assert torch.equal(images, original), "forward must not modify its input"


def test_smallest_supported_input(student_name):
    model = create_student(student_name).eval()
    side = model.min_side
    with torch.no_grad():
        assert model(torch.rand(1, 3, side, side + 1)).shape == (1, 3, side, side + 1)
        with pytest.raises(ValueError, match="too small"):
            model(torch.rand(1, 3, side - 1, side + 1))


def test_gradients_reach_every_trainable_parameter(student_name):
    model = create_student(student_name).train()
    images = torch.rand(2, 3, 40, 36)
    loss = (model(images) - images.flip(-1)).abs().mean()
    loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    without_grad = [name for name, p in trainable.items() if p.grad is None]
    assert not without_grad
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    assert sum(p.grad.abs().sum() for p in trainable.values()) > 0


def test_torch_export_with_dynamic_height_and_width(student_name):
    model = create_student(student_name).eval()
    # Below stride + 1 the deepest feature map can be 1x1, which export specialises.
    smallest = max(model.min_side, model.stride + 1)
    height = Dim("height", min=smallest, max=1024)
    width = Dim("width", min=smallest, max=1024)
    exported = torch.export.export(
        model, (torch.rand(1, 3, 64, 64),), dynamic_shapes={"images": {2: height, 3: width}}
    )
    images = torch.rand(1, 3, 65, smallest + 2)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(images), model(images))


# --- johnson ----------------------------------------------------------------


def test_johnson_has_reference_parameter_count():
    model = create_student("johnson")
    assert 1.6e6 <= sum(p.numel() for p in model.parameters()) <= 1.8e6


# --- fast ---------------------------------------------------------------------


def _conv_flops(name: str, side: int) -> int:
    # Meta tensors: counts every conv/matmul of a 512 px forward without computing it.
    with torch.device("meta"):
        model = create_student(name).eval()
        images = torch.empty(1, 3, side, side)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def test_fast_needs_far_fewer_flops_than_johnson():
    # Wall-clock speed (>= 3x at 512 px) is measured by benchmarks/bench_students.py;
    # FLOPs are the deterministic proxy a test can check.
    assert _conv_flops("fast", 512) * 10 < _conv_flops("johnson", 512)


def test_fast_subpixel_output_starts_without_checkerboard():
    model = create_student("fast").eval()
    with torch.no_grad():
        stylised = model(torch.rand(1, 3, 64, 64))
    top_left = stylised[..., 0::2, 0::2]
    for row, column in [(0, 1), (1, 0), (1, 1)]:
        torch.testing.assert_close(stylised[..., row::2, column::2], top_left)


# --- timm_encoder -------------------------------------------------------------


def test_timm_encoder_freeze_and_unfreeze():
    model = create_student("timm_encoder", backbone="resnet18")
    encoder_params = list(model.encoder.parameters())
    decoder_params = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    assert model.encoder_frozen
    assert not any(p.requires_grad for p in encoder_params)
    assert all(p.requires_grad for p in decoder_params)

    model.train()
    assert not model.encoder.training, "a frozen encoder must keep its norm statistics"
    running_mean = model.encoder.bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.encoder.bn1.running_mean, running_mean)

    model.unfreeze_encoder()
    assert not model.encoder_frozen
    assert all(p.requires_grad for p in encoder_params)
    assert model.encoder.training
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in encoder_params)

    model.freeze_encoder()
    assert model.encoder_frozen and not model.encoder.training


def test_timm_encoder_other_backbone():
    model = create_student("timm_encoder", backbone="mobilenetv3_small_100").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 47)).shape == (1, 3, 33, 47)


def test_timm_encoder_unknown_backbone():
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_student("timm_encoder", backbone="not_a_backbone")


def test_timm_encoder_loads_local_pretrained_file(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: t.contiguous() for k, t in reference.state_dict().items()}, str(weights))
    model = create_student("timm_encoder", backbone="resnet18", pretrained_file=str(weights))
    torch.testing.assert_close(model.encoder.conv1.weight, reference.conv1.weight, rtol=0, atol=0)


def test_timm_encoder_download_failure_is_a_clear_error(monkeypatch):
    def offline_create_model(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("Network is unreachable")
        return real_create_model(*args, pretrained=pretrained, **kwargs)

    real_create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(RuntimeError, match="pretrained=False") as error:
        create_student("timm_encoder", pretrained=True)
    assert "resnet18" in str(error.value) and "Network is unreachable" in str(error.value)


def test_pretrained_student_checkpoint_loads_offline(tmp_path, monkeypatch):
    model = create_student("timm_encoder", backbone="mobilenetv3_small_100").eval()
    model.student_spec["kwargs"]["pretrained"] = True  # as if trained from downloaded weights
    path = save_student(model, tmp_path / "student.safetensors")

    def no_download(*args, pretrained=False, **kwargs):
        assert not pretrained, "loading a checkpoint must not fetch pretrained weights"
        return real_create_model(*args, pretrained=pretrained, **kwargs)

    real_create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_download)
    loaded, metadata = load_student(path)
    assert metadata["student"]["kwargs"]["pretrained"] is True
    images = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


# --- checkpoints --------------------------------------------------------------


def test_checkpoint_round_trip_reproduces_outputs(student_name, tmp_path):
    model = create_student(student_name).eval()
    path = tmp_path / "nested" / "folder" / f"{student_name}.safetensors"
    extra = {"style": "starry_night", "step": 1200, "weights": {"style": 1e5, "content": 1.0}}
    assert save_student(model, path, extra=extra) == path
    assert os.listdir(path.parent) == [path.name], "temporary file left behind"

    loaded, metadata = load_student(path)
    assert not loaded.training
    assert metadata["student"] == model.student_spec
    assert metadata["extra"] == extra
    assert read_student_metadata(path) == metadata
    images = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def _write_safetensors(path, metadata=None, tensors=None):
    save_file(tensors or {"weight": torch.zeros(2)}, str(path), metadata=metadata)
    return path


def _spec_metadata(name, **kwargs):
    return {"distill.format": "1", "distill.student": json.dumps({"name": name, "kwargs": kwargs})}


def _bad_checkpoint(case: str, folder):
    path = folder / f"{case}.safetensors"
    if case == "missing":
        return path
    if case == "pickle":
        path = folder / "model.pt"
        torch.save({"weight": torch.zeros(2)}, path)
        return path
    if case == "random_bytes":
        path.write_bytes(os.urandom(256))
        return path
    if case == "empty":
        path.write_bytes(b"")
        return path
    if case == "no_distill_metadata":
        return _write_safetensors(path, metadata={"format": "pt"})
    if case == "unknown_student":
        return _write_safetensors(path, metadata=_spec_metadata("no_such_student"))
    if case == "bad_kwargs":
        return _write_safetensors(path, metadata=_spec_metadata("johnson", widths=3))
    if case == "mismatched_weights":
        # Five residual blocks' weights under a one-block spec.
        tensors = {k: t.contiguous() for k, t in create_student("johnson").state_dict().items()}
        return _write_safetensors(
            path, metadata=_spec_metadata("johnson", num_residual_blocks=1), tensors=tensors
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "pickle",
        "random_bytes",
        "empty",
        "no_distill_metadata",
        "unknown_student",
        "bad_kwargs",
        "mismatched_weights",
    ],
)
def test_bad_checkpoint_raises_clear_error(case, tmp_path):
    path = _bad_checkpoint(case, tmp_path)
    with pytest.raises(StudentCheckpointError) as error:
        load_student(path)
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    if case == "no_distill_metadata":
        assert "not written by this toolkit" in message
    if case == "unknown_student":
        assert "no_such_student" in message


def test_save_requires_a_registered_model(tmp_path):
    with pytest.raises(ValueError, match="create_student"):
        save_student(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.safetensors")
