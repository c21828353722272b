"""Loss-network-free stylisation figures: their fixed points and what they refuse to be fooled by."""

from __future__ import annotations

import pytest
import torch

from distill.report.stylemetrics import (
    match_colour_statistics,
    painting_texture_spread,
    recoloured_texture_distance,
    stylisation_figures,
    structure_kept,
    texture_descriptor,
    texture_distance,
)


def _photo(size: int = 64) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.2 + 0.5 * x, 0.3 + 0.4 * y, 0.5 - 0.2 * x])
    image[:, 10:40, 12:30] = torch.tensor([0.9, 0.7, 0.3])[:, None, None]
    return image


def _painting(size: int = 96) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    patches = torch.rand(1, 3, size // 12, size // 12, generator=generator)
    return torch.nn.functional.interpolate(patches, size=(size, size), mode="nearest")[0]


def test_fixed_points():
    photo, painting = _photo(), _painting()
    unchanged = stylisation_figures(photo, photo, painting)
    assert unchanged.colour_moved == 0.0 and unchanged.structure_kept == pytest.approx(1.0)
    the_style = stylisation_figures(torch.nn.functional.interpolate(painting[None], size=(64, 64), mode="nearest")[0], photo, painting)
    assert the_style.colour_moved > 0.9 and the_style.texture_moved > 0.7 and the_style.structure_kept < 0.3


def test_recolouring_moves_colour_not_texture():
    photo, painting = _photo(), _painting()
    recoloured = match_colour_statistics(photo, painting)
    figures = stylisation_figures(recoloured, photo, painting)
    assert figures.colour_moved > 0.3
    assert abs(figures.texture_moved) < 0.1  # the recoloured photo is the texture reference
    assert figures.structure_kept > 0.9
    # Its colour mean and covariance are the painting's.
    assert torch.allclose(recoloured.mean(dim=(1, 2)), painting.mean(dim=(1, 2)), atol=0.02)


def test_structure_kept_is_a_correlation_of_edges():
    photo = _photo()
    assert structure_kept(photo, photo) == pytest.approx(1.0)
    assert structure_kept(0.5 * photo + 0.2, photo) > 0.999  # contrast and brightness do not matter
    flat = torch.full_like(photo, 0.5)
    assert structure_kept(flat, photo) == 0.0


def test_texture_moved_is_relative_to_the_recoloured_photos_texture_distance():
    """The reference the benchmark prints: small for a photo that already has the painting's texture."""
    photo, painting = _photo(), _painting()
    output = torch.nn.functional.interpolate(painting[None], size=(64, 64), mode="bilinear")[0] * 0.5 + photo * 0.5
    reference = recoloured_texture_distance(photo, painting)
    style = torch.nn.functional.interpolate(painting[None], size=(64, 64), mode="bilinear", antialias=True)[0]
    moved = 1 - texture_distance(texture_descriptor(output), texture_descriptor(style)) / reference
    assert stylisation_figures(output, photo, painting).texture_moved == pytest.approx(moved, abs=1e-9)
    painted_photo = torch.nn.functional.interpolate(painting[None], size=(64, 64), mode="nearest")[0]
    assert recoloured_texture_distance(painted_photo, painting) < reference


def test_painting_spread_is_small_for_an_even_texture_and_large_for_a_mixed_one():
    """The yardstick for "texture moved": how much a painting's own quarters differ in texture."""
    even = _painting(96)  # the same blocky patches everywhere
    mixed = even.clone()
    mixed[:, :48, :48] = 0.5  # one flat quarter: no texture there at all
    even_spread = painting_texture_spread(even, long_side=96)
    mixed_spread = painting_texture_spread(mixed, long_side=96)
    assert 0.0 <= even_spread < 0.5 * mixed_spread
