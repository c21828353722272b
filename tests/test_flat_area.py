"""The flat-area term: a content term on the texture network's filter banks that holds the photo's
flat areas, so that a painting which is one texture everywhere does not fill them with strokes."""

from __future__ import annotations

import argparse

import pytest
import torch

from distill.cli.teacher_args import add_teacher_arguments, teacher_config_from_args
from distill.objective.config import DEFAULT_FLAT_AREA_WEIGHT, CriterionConfig, CriterionError
from distill.objective.criterion import build_criterion
from distill.objective.terms import flat_area_loss
from distill.report.stylemetrics import stylisation_figures
from teachers.gatys import TeacherConfig, stylize

from test_scale_free import _shapes_photo, textured_style  # noqa: F401  (fixture)


def _half_flat_responses() -> torch.Tensor:
    """Filter-bank-like responses (1, 8, 16, 32): zero on the left half (a flat sky), busy on the right."""
    generator = torch.Generator().manual_seed(0)
    responses = torch.rand(1, 8, 16, 32, generator=generator)
    responses[..., :16] = 0
    return responses


def test_strokes_cost_far_more_in_the_photos_flat_areas_than_in_its_textured_ones():
    photo = _half_flat_responses()
    stroke = torch.zeros_like(photo)
    stroke[..., 6:10, 4:8] = 0.5
    in_the_sky = flat_area_loss(photo + stroke, photo)
    in_the_texture = flat_area_loss(photo + stroke.roll(16, dims=-1), photo)
    assert float(flat_area_loss(photo, photo)) == 0.0
    assert float(in_the_sky) > 20 * float(in_the_texture) > 0
    # Relative to the photo's own response size, so the same weight means the same at any activation scale.
    assert torch.allclose(flat_area_loss(7 * (photo + stroke), 7 * photo), in_the_sky)


def test_the_term_joins_the_content_term_on_the_filter_banks_only_when_weighted(textured_style):  # noqa: F811
    photo = _shapes_photo(48).unsqueeze(0)
    off = build_criterion(CriterionConfig(weights="random", style_size=48, flat_area_weight=0.0), [textured_style])
    on = build_criterion(CriterionConfig(weights="random", style_size=48, flat_area_weight=0.1), [textured_style], network=off.network)
    assert set(off.content_targets(photo)) == set(off.content_layers)
    assert on.flat_area_layers == ("bank1", "bank2", "bank4", "bank8")
    assert set(on.content_targets(photo)) == {*on.content_layers, *on.flat_area_layers}
    painted = (photo + 0.2 * torch.rand(photo.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        plain, held = off(painted, content=photo), on(painted, content=photo)
    assert torch.equal(plain.style, held.style)
    assert float(held.content) > float(plain.content)


def test_the_flat_area_weight_needs_the_filter_banks_and_a_sane_value(textured_style):  # noqa: F811
    with pytest.raises(CriterionError, match="filter banks"):
        build_criterion(CriterionConfig(weights="random", backbone="vgg19", flat_area_weight=0.1), [textured_style])
    with pytest.raises(CriterionError, match="flat-area-weight"):
        CriterionConfig(flat_area_weight=-1.0)
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser)
    chosen = teacher_config_from_args(parser.parse_args(["--style", "s.png", "--weights", "random", "--flat-area-weight", "0.1"]))
    assert chosen.criterion.flat_area_weight == 0.1
    assert teacher_config_from_args(parser.parse_args(["--style", "s.png", "--flat-area-weight", "0"])).criterion.flat_area_weight == 0.0


def test_the_term_is_on_by_default_only_where_the_filter_banks_are():
    """The offline texture network has the banks it was measured on; pretrained VGG-19, classic
    and the photorealistic teacher (whose own term keeps flat areas flat) leave it off."""
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser)

    def flat_area_weight(*flags: str) -> float:
        return teacher_config_from_args(parser.parse_args(["--style", "s.png", *flags])).criterion.flat_area_weight

    assert flat_area_weight("--weights", "random") == DEFAULT_FLAT_AREA_WEIGHT > 0
    assert flat_area_weight() == 0.0  # pretrained VGG-19
    assert flat_area_weight("--weights", "random", "--loss-normalisation", "classic") == 0.0
    assert flat_area_weight("--weights", "random", "--backbone", "vgg19") == 0.0
    assert flat_area_weight("--weights", "random", "--photoreal") == 0.0
    assert flat_area_weight("--weights", "random", "--photoreal", "--flat-area-weight", "0.05") == 0.05
    assert CriterionConfig(weights="random").resolved().flat_area_weight == DEFAULT_FLAT_AREA_WEIGHT


def test_an_all_over_texture_leaves_more_of_the_photos_shapes_with_the_term(textured_style, single_thread):  # noqa: F811
    """The stripes cover the whole style; without the term they fill the photo's flat shapes
    (structure kept about 0.12 here), with it the shapes stay while the texture still moves."""
    content = _shapes_photo()
    figures = {}
    for weight in (0.0, 0.1):
        config = TeacherConfig(
            criterion=CriterionConfig(weights="random", style_size=64, flat_area_weight=weight), size=64, iterations=60
        )
        result = stylize(build_criterion(config.criterion, [textured_style]), content.unsqueeze(0), config=config)
        figures[weight] = stylisation_figures(result.images[0], content, textured_style)
    assert figures[0.1].structure_kept > figures[0.0].structure_kept + 0.08
    assert figures[0.1].texture_moved > 0.45
