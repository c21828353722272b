"""The Gatys teacher: the loss falls, batching changes nothing, colour is preserved."""

from __future__ import annotations

import pytest
import torch

from distill.core.color import rgb_to_yiq
from distill.objective.config import CriterionConfig
from distill.objective.criterion import build_criterion
from teachers.gatys import TeacherConfig, split_budget, stylize
from teachers.lbfgs import BatchedLBFGS

pytestmark = pytest.mark.usefixtures("batch_invariant_cpu")


def _content(batch=1, height=32, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, height // 4, width // 4, generator=generator)
    return torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)


def test_teacher_loss_falls(vgg_criterion, tiny_config):
    config = TeacherConfig(criterion=tiny_config, size=40, iterations=20)
    result = stylize(vgg_criterion, _content(), config=config)
    trace = result.traces[0]["total"]
    assert len(trace) == result.iterations_run[0] + 1  # one value per iterate, the last for the returned image
    assert result.iterations_run == [20] and result.stop_reasons == ["budget"]
    assert trace[-1] < 0.5 * trace[0]
    assert result.final[0]["total"] == pytest.approx(trace[-1])
    assert result.images.shape == (1, 3, 32, 40)
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert "random" in result.weights


@pytest.mark.parametrize("init", ["noise", "style"])
def test_other_initialisations(vgg_criterion, tiny_config, style_image, init):
    config = TeacherConfig(criterion=tiny_config, size=40, iterations=6, init=init)
    result = stylize(vgg_criterion, _content(), config=config, style_image=style_image)
    assert result.traces[0]["total"][-1] < result.traces[0]["total"][0]


def test_batched_equals_unbatched_in_float64(tiny_config, style_image):
    # In exact arithmetic each image's trajectory is independent of the batch; float64
    # shows it to tight tolerance. (In float32, rounding differences of 1e-7 are
    # amplified by the L-BFGS recursion over many iterations, see the next test.)
    criterion = build_criterion(tiny_config, [style_image]).double()
    content = _content(batch=3).double()
    config = TeacherConfig(criterion=tiny_config, size=40, iterations=12)
    batched = stylize(criterion, content, config=config)
    for i in range(3):
        alone = stylize(criterion, content[i : i + 1], config=config)
        assert torch.allclose(alone.images[0], batched.images[i], atol=1e-5)
        assert alone.traces[0]["total"] == pytest.approx(batched.traces[i]["total"], rel=1e-6)
        assert alone.iterations_run[0] == batched.iterations_run[i]


def test_batched_equals_unbatched_in_float32(vgg_criterion, tiny_config):
    content = _content(batch=2)
    config = TeacherConfig(criterion=tiny_config, size=40, iterations=4)
    batched = stylize(vgg_criterion, content, config=config)
    for i in range(2):
        alone = stylize(vgg_criterion, content[i : i + 1], config=config)
        assert torch.allclose(alone.images[0], batched.images[i], atol=1e-3)
        assert alone.final[0]["total"] == pytest.approx(batched.final[i]["total"], rel=1e-3)


def test_per_image_convergence_stops_only_that_image():
    # Two independent quadratics; the first starts at its optimum and must stop at once
    # while the second keeps going: one shared L-BFGS would couple them.
    x = torch.tensor([[0.0, 0.0], [3.0, -2.0]], dtype=torch.float64)
    optimiser = BatchedLBFGS(x, history_size=5, tolerance_grad=1e-9)
    for _ in range(30):
        rows = optimiser.active.nonzero().flatten()
        if rows.numel() == 0:
            break
        xr = optimiser.x[rows]
        loss = (xr**2).sum(1) * torch.tensor([1.0, 10.0], dtype=torch.float64).sum()
        grad = 2 * xr * 11.0
        optimiser.step(rows, loss, grad)
    assert optimiser.iterations[0] == 0 and optimiser.iterations[1] > 1
    assert optimiser.x[1].abs().max() < 1e-6


def test_non_finite_loss_stops_the_image_and_keeps_the_last_good_iterate():
    x = torch.tensor([[1.0, 1.0]])
    optimiser = BatchedLBFGS(x.clone())
    rows = torch.tensor([0])
    optimiser.step(rows, torch.tensor([2.0]), torch.tensor([[2.0, 2.0]]))
    report = optimiser.step(rows, torch.tensor([float("nan")]), torch.tensor([[1.0, 1.0]]))
    assert report.stopped_reason[0] == "non-finite loss" and not report.active[0]
    assert torch.equal(optimiser.x, x)


def test_preserve_color_keeps_content_chroma(style_image):
    config = CriterionConfig(weights="random", style_size=48, luminance_only=True)
    criterion = build_criterion(config, [style_image])
    # Mid-range content so that recombined colours stay inside the RGB gamut.
    content = 0.3 + 0.4 * _content()
    result = stylize(criterion, content, config=TeacherConfig(criterion=config, size=40, iterations=8))
    out_yiq, content_yiq = rgb_to_yiq(result.images), rgb_to_yiq(content)
    inside = ((result.images > 0.001) & (result.images < 0.999)).all(dim=1, keepdim=True).expand(-1, 2, -1, -1)
    assert inside.float().mean() > 0.9
    assert torch.allclose(out_yiq[:, 1:][inside], content_yiq[:, 1:][inside], atol=1e-4)
    assert not torch.allclose(out_yiq[:, :1], content_yiq[:, :1], atol=1e-3)  # the luminance did change


def test_multiscale_runs_coarse_to_fine(vgg_criterion, tiny_config):
    config = TeacherConfig(criterion=tiny_config, size=40, iterations=9, scales=(0.5, 1.0))
    result = stylize(vgg_criterion, _content(), config=config)
    assert result.iterations_run == [9]
    assert result.traces[0]["scale"][:4] == [0, 0, 0, 0] and result.traces[0]["scale"][-1] == 1
    assert split_budget(9, 2) == [4, 5]


def test_config_validation(tiny_config):
    with pytest.raises(ValueError):
        TeacherConfig(criterion=tiny_config, init="banana")
    with pytest.raises(ValueError):
        TeacherConfig(criterion=tiny_config, scales=(0.5,))
