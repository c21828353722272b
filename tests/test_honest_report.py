"""The report's headline cannot be gamed, colour preservation survives inference and export,
and the teacher's trace is comparable with a student's 8-bit output."""

from __future__ import annotations

import pytest
import torch

from distill.core.color import rgb_to_yiq
from distill.objective.config import CriterionConfig
from distill.objective.criterion import build_criterion
from distill.report.aggregate import aggregate, check_gates
from distill.report.fidelity import compare_images
from distill.report.measures import finest_scale_trace
from distill.report.stylemetrics import match_colour_statistics
from teachers.gatys import QUANTISED_TRACE_INTERVAL, TeacherConfig, stylize


def _photo(seed: int, size: int = 48) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def criterion_and_style(style_image):
    criterion = build_criterion(CriterionConfig(weights="random", style_size=48), [style_image])
    return criterion, style_image


def _record(criterion, style, content, teacher, student):
    (record,), _ = compare_images(criterion, content, teacher, student, style=style)
    record.update(equivalent_iterations=None, teacher_iterations_run=10)
    return record


def _teacher(content, style, share):
    """A stand-in teacher image: the photo blended with its copy recoloured to the style."""
    return ((1 - share) * content + share * match_colour_statistics(content[0], style).unsqueeze(0)).clamp(0, 1)


def test_a_student_that_paints_blobs_is_flagged_even_when_its_objective_is_low(criterion_and_style):
    criterion, style = criterion_and_style
    records = []
    for seed in range(3):
        content = _photo(seed)
        teacher = _teacher(content, style, 0.4)
        blobs = torch.nn.functional.interpolate(style.unsqueeze(0), size=(48, 48), mode="bilinear", align_corners=False)
        records.append(_record(criterion, style, content, teacher, blobs))
    summary = aggregate(records)
    agreement = summary["agreement"]
    assert agreement["beats_baselines"] is False
    assert agreement["student"]["ssim"] < agreement["content"]["ssim"]
    assert any(line.startswith("below baseline") for line in summary["diagnoses"])
    # Make the objective claim "better than the teacher": the gamed line appears.
    for record in records:
        record["ratio"]["total"] = 0.2
    assert any(line.startswith("gamed objective") for line in aggregate(records)["diagnoses"])
    gates = check_gates({"aggregate": summary}, beat_baselines=True, min_ssim=0.5)
    assert [gate.passed for gate in gates] == [False, False]
    assert "not above" in gates[0].message


def test_a_student_close_to_its_teacher_passes(criterion_and_style):
    criterion, style = criterion_and_style
    records = []
    for seed in range(3):
        content = _photo(seed)
        teacher = _teacher(content, style, 0.5)
        records.append(_record(criterion, style, content, teacher, (teacher + 0.01).clamp(0, 1)))
    summary = aggregate(records)
    assert summary["agreement"]["beats_baselines"] is True
    assert not any(line.startswith(("below baseline", "gamed")) for line in summary["diagnoses"])
    assert all(gate.passed for gate in check_gates({"aggregate": summary}, beat_baselines=True))
    assert set(summary["stylisation"]) == {"teacher", "student"}


def _chroma_difference(output: torch.Tensor, content: torch.Tensor) -> float:
    return float((rgb_to_yiq(output)[:, 1:] - rgb_to_yiq(content)[:, 1:]).abs().mean())


def test_colour_preserving_student_keeps_colours_in_checkpoint_and_onnx(tmp_path, seeded):
    from distill.deploy.export import export_student
    from distill.deploy.model_files import load_model
    from students import create_student, save_student

    student = create_student("fast", preserve_color=True)
    with torch.no_grad():  # a student that would paint everything red if it could
        bias = student.student.to_rgb_subpixels.bias
        bias[: bias.numel() // 3] = 3.0
    content = _photo(7, size=64)
    with torch.no_grad():
        output = student(content)
    assert _chroma_difference(output, content) <= 0.02
    unwrapped = create_student("fast")
    unwrapped.load_state_dict(student.student.state_dict())
    with torch.no_grad():
        assert _chroma_difference(unwrapped(content), content) > _chroma_difference(output, content)

    checkpoint = save_student(student, tmp_path / "student.safetensors")
    loaded = load_model(checkpoint)
    assert loaded.metadata["student"]["kwargs"]["preserve_color"] is True
    assert _chroma_difference(loaded(content), content) <= 0.02
    onnx_file = tmp_path / "student.onnx"
    export_student(checkpoint, onnx_file, format="onnx", check_sizes=((48, 72), (40, 56)))
    assert _chroma_difference(load_model(onnx_file)(content), content) <= 0.02


def test_teacher_records_its_8bit_objective_for_k_star(criterion_and_style):
    criterion, _ = criterion_and_style
    config = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=48), size=48, iterations=12)
    result = stylize(criterion, _photo(1), config=config)
    trace = result.traces[0]
    assert len(trace["total_8bit"]) == len(trace["total"]) == 13
    recorded = [i for i, value in enumerate(trace["total_8bit"]) if value is not None]
    assert recorded == [0, 5, 10, 12] and QUANTISED_TRACE_INTERVAL == 5
    saved = result.images.clamp(0, 1).mul(255).round().div(255)
    with torch.no_grad():
        expected = criterion(saved, content=_photo(1)).total.item()
    assert trace["total_8bit"][-1] == pytest.approx(expected, rel=1e-5)
    masked = finest_scale_trace(trace)
    assert masked[1] == float("inf") and masked[5] == trace["total_8bit"][5]
