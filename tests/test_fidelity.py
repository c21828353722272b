"""Fidelity report: metrics, k*, t-SNE with few points, gates, and compare.py end to end (random weights, tiny)."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch

from distill.report.aggregate import check_gates, json_safe
from distill.report.fidelity import compare_images
from distill.report.measures import equivalent_iterations, finest_scale_trace
from distill.core.metrics import psnr, ssim
from distill.report.tsne import tsne_2d

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "scripts" / "compare.py"


# --------------------------------------------------------------------------- k*


def test_equivalent_iterations_on_a_synthetic_trace():
    trace = [10.0, 8.0, 5.0, 3.0, 2.0]  # k = 0 (start) .. 4 (returned image)
    assert equivalent_iterations(trace, 5.0) == 2  # reaching counts (<=)
    assert equivalent_iterations(trace, 4.0) == 3
    assert equivalent_iterations(trace, 2.0) == 4
    assert equivalent_iterations(trace, 100.0) == 0  # even the starting image is better
    assert equivalent_iterations(trace, 10.0) == 0
    assert equivalent_iterations(trace, 1.9) is None  # never reached: k* > iterations run
    assert equivalent_iterations([], 1.0) is None
    # Not monotone (L-BFGS may overshoot): the first k counts; NaN never counts as reached.
    assert equivalent_iterations([10.0, float("nan"), 4.0, 6.0, 3.0], 5.0) == 2


def test_coarse_scale_iterates_never_count():
    trace = {"total": [1.0, 0.5, 9.0, 4.0, 3.0], "scale": [0, 0, 1, 1, 1]}
    masked = finest_scale_trace(trace)
    assert masked[:2] == [math.inf, math.inf] and masked[2:] == [9.0, 4.0, 3.0]
    assert equivalent_iterations(masked, 4.0) == 3  # not 0, the smaller coarse image
    assert finest_scale_trace({"total": [3.0, 2.0]}) == [3.0, 2.0]


# --------------------------------------------------------------------------- image metrics


def _image(seed: int, height: int = 32, width: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 4, width // 4, generator=generator)
    return torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)


def test_identical_student_and_teacher(vgg_criterion):
    content, teacher = _image(0), _image(1)
    (record,), embeddings = compare_images(vgg_criterion, content, teacher, teacher.clone())
    for term in ("total", "style", "content", "tv"):
        assert record["ratio"][term] == pytest.approx(1.0, rel=1e-5)
    assert record["psnr"] == math.inf
    assert record["ssim"] == pytest.approx(1.0)
    distance = record["gram_distance"]
    assert distance["student_teacher"] == pytest.approx(0.0, abs=1e-6 * distance["style_norm"])
    assert distance["student_style"] == pytest.approx(distance["teacher_style"], rel=1e-5)
    assert record["objective"]["content"]["content"] == pytest.approx(0.0, abs=1e-6)
    assert embeddings["student"].shape == embeddings["teacher"].shape == embeddings["content"].shape
    # inf stays a float in Python and becomes the string "inf" in JSON
    assert json.loads(json.dumps(json_safe(record), allow_nan=False))["psnr"] == "inf"


def test_psnr_and_ssim_of_different_images():
    a = torch.full((3, 16, 16), 0.5)
    b = a + 0.1
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    assert 0.0 < ssim(a, _image(2, 16, 16)[0]) < 0.99
    assert ssim(a[:, :5, :5], a[:, :5, :5]) == pytest.approx(1.0)  # tiny images shrink the window


def _record(k, iterations_run=30, ssim_value=0.5):
    terms = {"total": 2.0, "content": 1.0, "style": 1.0, "tv": 0.0}
    return {
        "objective": {"student": terms, "teacher": terms, "content": terms},
        "ratio": {"total": 1.0, "content": 1.0, "style": 1.0, "tv": 1.0},
        "psnr": math.inf, "ssim": ssim_value, "gram_distance": {"student_teacher": 0.0},
        "equivalent_iterations": k, "teacher_iterations_run": iterations_run,
    }


def test_aggregate_counts_never_reached_images():
    from distill.report.aggregate import aggregate

    summary = aggregate([_record(4), _record(None), _record(None)])["equivalent_iterations"]
    assert summary["reached"] == 1 and summary["not_reached"] == 2
    assert summary["median_reached"] == 4 and summary["median_text"] == "> 30"
    assert "2 image(s) better than the teacher's final result" in summary["summary"]
    assert aggregate([_record(4), _record(None)])["equivalent_iterations"]["median_text"] == "4"
    assert aggregate([_record(0)])["psnr"]["mean"] == math.inf


def test_teacher_is_retimed_when_the_store_timed_another_device(vgg_criterion, tiny_config):
    from types import SimpleNamespace

    from distill.report.options import FidelityOptions
    from distill.report.speed import measure_speed as _speed
    from students import create_student
    from teachers.gatys import TeacherConfig

    entries = [SimpleNamespace(device="cuda:0", seconds=0.5, iterations_run=30, batch_size=4)]
    student = create_student("johnson", num_residual_blocks=1).eval()
    config = TeacherConfig(criterion=tiny_config, size=32, iterations=30)
    options = FidelityOptions(timing_runs=2, timing_warmup=1, retime_iterations=2)
    speed = _speed(student, vgg_criterion, config, _image(3), entries, torch.device("cpu"), options)
    assert speed["teacher_source"] == "retimed" and "re-timed 2 teacher iterations" in speed["teacher_source_detail"]
    assert speed["teacher_seconds_per_image"] == pytest.approx(30 * speed["teacher_seconds_per_iteration"])
    assert len(speed["student_ms_runs"]) == 2 and speed["speedup"] > 0
    entries[0].device = "cpu"
    assert _speed(student, vgg_criterion, config, _image(3), entries, torch.device("cpu"), options)["teacher_source"] == "store"


# --------------------------------------------------------------------------- t-SNE


@pytest.mark.parametrize("count", [4, 2, 1])
def test_tsne_with_fewer_points_than_the_default_perplexity(count):
    embeddings = np.random.default_rng(0).normal(size=(count, 300))
    points, info = tsne_2d(embeddings, random_state=0)
    assert points.shape == (count, 2) and np.isfinite(points).all()
    if count > 1:
        assert info["perplexity"] == count - 1
        assert info["pca_components"] == min(50, count - 1)
        again, _ = tsne_2d(embeddings, random_state=0)
        np.testing.assert_allclose(points, again)  # fixed random_state


# --------------------------------------------------------------------------- gates


def test_gates_say_which_failed_and_by_how_much():
    report = {"aggregate": {"ssim": {"mean": 0.5}, "ratio": {"mean": {"total": 1.2}}}}
    ssim_gate, ratio_gate = check_gates(report, min_ssim=0.75, max_objective_ratio=1.5)
    assert not ssim_gate.passed and "0.5000 is below 0.75 by 0.25" in ssim_gate.message
    assert ratio_gate.passed
    (ratio_gate,) = check_gates(report, max_objective_ratio=1.0)
    assert not ratio_gate.passed and "above 1 by 0.2" in ratio_gate.message
    assert check_gates(report) == []
    nan_report = {"aggregate": {"ssim": {"mean": float("nan")}, "ratio": {"mean": {"total": 1.0}}}}
    assert not check_gates(nan_report, min_ssim=0.1)[0].passed


# --------------------------------------------------------------------------- compare.py end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real store (3 contents, 32 px, 3 teacher iterations, random weights) and a fresh student checkpoint."""
    from distill.core.imageio import save_image
    from distill.samples import stained_glass, write_sample_contents
    from distill.targets.generation import generate_targets
    from students import create_student, save_student
    from teachers.gatys import TeacherConfig
    from distill.objective.config import CriterionConfig

    base = tmp_path_factory.mktemp("fidelity")
    write_sample_contents(base / "contents", long_side=48, count=3)
    save_image(stained_glass(size=48, cells=12), base / "style.png")
    config = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=48), size=32, iterations=3)
    summary = generate_targets(
        content_dir=base / "contents", style_paths=[base / "style.png"], store_root=base / "store",
        teacher_config=config, device="cpu", log=lambda message: None,
    )
    assert summary.new == 3 and not summary.failed
    torch.manual_seed(0)
    save_student(create_student("johnson", num_residual_blocks=1), base / "run" / "checkpoints" / "best.safetensors")
    return base


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def compared(tiny_run):
    """One compare.py run with a gate that must fail: exit 1, but the full report is written."""
    out = tiny_run / "report"
    command = [
        sys.executable, str(COMPARE), "--run", str(tiny_run / "run"), "--targets", str(tiny_run / "store"),
        "--out", str(out), "--device", "cpu", "--min-ssim", "0.9999", "--timing-runs", "3", "--quiet", "--teacher-self-agreement",
    ]
    process = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    return out, process


@pytest.mark.slow
def test_compare_end_to_end(compared):
    out, process = compared
    assert process.returncode == 1, process.stderr
    gate_lines = [line for line in process.stderr.splitlines() if line.startswith("gate failed")]
    assert len(gate_lines) == 1 and "--min-ssim" in gate_lines[0] and "below 0.9999 by" in gate_lines[0]
    for name in ("report.json", "index.html", "grid.png", "tsne.png", "tsne_scatter.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.rglob(".*.tmp.*"))  # atomic writes leave no temporaries

    def no_bare_constants(token):
        raise AssertionError(f"bare {token} in report.json")

    report = json.loads((out / "report.json").read_text(), parse_constant=no_bare_constants)
    assert report["weights"].startswith("random") and report["random_weights"] is True
    assert "RANDOM" in report["warning"]
    assert report["targets"]["split"] == "heldout" and report["aggregate"]["images"] == len(report["images"]) >= 1
    image = report["images"][0]
    assert set(image["objective"]) == {"student", "teacher", "content"}
    assert image["ratio"]["total"] == pytest.approx(image["objective"]["student"]["total"] / image["objective"]["teacher"]["total"])
    k = image["equivalent_iterations"]
    assert (k is None and image["equivalent_iterations_text"] == "> 3") or (0 <= k <= 3 and image["equivalent_iterations_text"] == str(k))
    assert report["speed"]["teacher_source"] == "store" and report["speed"]["speedup"] > 0
    assert report["gates"][0]["passed"] is False
    assert len(report["tsne"]["coordinates"]) == 1 + 3 * len(report["images"])
    assert "RANDOM LOSS-NETWORK WEIGHTS" in (out / "index.html").read_text()
    # --teacher-self-agreement: the teacher re-run on each mirrored photo, mirrored back. After 3 iterations
    # both runs are still close to the photo, so they agree closely; unmirrored, an asymmetric
    # photo's result would not.
    reference = report["aggregate"]["agreement"]["teacher_mirrored"]
    assert all("self_agreement" in image for image in report["images"]) and reference["ssim"] > 0.9
    assert any(line.startswith("compare: reference: the teacher itself") for line in process.stderr.splitlines())
    assert "reference: the teacher itself, on the mirrored photo" in (out / "index.html").read_text()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links.extend(value for name, value in attrs if name in ("src", "href") and value)


@pytest.mark.slow
def test_html_references_only_files_that_exist(compared):
    out, _ = compared
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    assert parser.links
    images = [link for link in parser.links if link.endswith(".png")]
    assert len(images) >= 5  # 3 per content image, the plots, the style
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), f"not a relative link: {link}"
        target = (out / unquote(parsed.path)).resolve()
        assert target.is_file(), f"index.html references a missing file: {link}"
        assert out.resolve() in target.parents, f"link leaves the report folder: {link}"


def _run_compare_inprocess(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["compare.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(COMPARE), run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_input_errors_exit_2_with_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    run, store = tiny_run / "run", tiny_run / "store"
    cases = {
        "no such run folder": ("--run", tmp_path / "missing", "--targets", store),
        "no such checkpoint": ("--run", run, "--targets", store, "--checkpoint", "last"),
        "no such target store": ("--run", run, "--targets", tmp_path / "nostore"),
        "split": ("--run", run, "--targets", store, "--heldout-fraction", "0"),
    }
    for expected, args in cases.items():
        code, err = _run_compare_inprocess(monkeypatch, capsys, *args, "--out", tmp_path / "report", "--device", "cpu")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (expected, err)
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (expected, err)
    assert not (tmp_path / "report").exists()
