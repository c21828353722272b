"""Loss values against closed forms, and the criterion's composition of them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.objective.config import CriterionConfig
from distill.objective.criterion import StyleCriterion, build_criterion
from distill.objective.terms import content_loss, gram_matrix, layer_weights_for, style_layer_loss, total_variation


def test_gram_matrix_closed_form():
    # Two channels over four positions: F = [[1, 2, 3, 4], [1, 0, 1, 0]].
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 1.0, 0.0]]).reshape(1, 2, 2, 2)
    expected = torch.tensor([[30.0, 4.0], [4.0, 2.0]]) / 4  # F F^T / (H W)
    assert torch.allclose(gram_matrix(features)[0], expected)


def test_gram_is_float32_under_autocast():
    features = torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features.bfloat16())
    assert gram.dtype == torch.float32


def test_gram_is_independent_of_image_size_for_a_constant_field():
    small = torch.full((1, 3, 4, 4), 2.0)
    large = torch.full((1, 3, 16, 16), 2.0)
    assert torch.allclose(gram_matrix(small), gram_matrix(large))


def test_content_style_tv_closed_forms():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.ones(2, 1, 2, 2) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    assert torch.allclose(content_loss(a, b), torch.tensor([1.0, 9.0]))
    g = torch.eye(2).expand(2, 2, 2)
    assert torch.allclose(style_layer_loss(g, torch.zeros(1, 2, 2)), torch.tensor([0.5, 0.5]))
    # A horizontal ramp 0, 1, 2: vertical differences 0, horizontal differences 1.
    ramp = torch.arange(3.0).repeat(3, 1).reshape(1, 1, 3, 3)
    assert torch.allclose(total_variation(ramp), torch.tensor([1.0]))


def test_layer_weight_schemes():
    channels = {"a": 64, "b": 512}
    assert layer_weights_for(["a", "b"], channels, "inverse_square_channels") == {"a": 1 / 64**2, "b": 1 / 512**2}
    assert layer_weights_for(["a", "b"], channels, "equal") == {"a": 1.0, "b": 1.0}
    assert layer_weights_for(["a"], channels, {"a": 3}) == {"a": 3.0}
    with pytest.raises(ValueError):
        layer_weights_for(["a", "b"], channels, {"a": 1.0})
    with pytest.raises(ValueError):
        layer_weights_for(["a"], channels, "bogus")


class _OneByOne(torch.nn.Module):
    """A 1x1-conv 'loss network' whose features are known in closed form."""

    weights_description = "test"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(2, 3, 1, 1))

    def forward(self, x):
        f = self.conv(x)
        return {"f": f}


def test_criterion_matches_hand_computation():
    network = _OneByOne()
    target = torch.tensor([[1.0, 0.5], [0.5, 2.0]]).unsqueeze(0)
    criterion = StyleCriterion(
        network,
        content_layers=["f"],
        style_layers=["f"],
        style_layer_weights={"f": 0.25},
        target_grams={"f": target},
        content_weight=2.0,
        style_weight=10.0,
        tv_weight=3.0,
    )
    image = torch.rand(2, 3, 5, 5)
    content = torch.rand(2, 3, 5, 5)
    terms = criterion(image, content=content)
    f, fc = network(image)["f"], network(content)["f"]
    expected_content = 2.0 * ((f - fc) ** 2).flatten(1).mean(1)
    gram = torch.einsum("bchw,bdhw->bcd", f, f) / 25
    expected_style = 10.0 * 0.25 * ((gram - target) ** 2).flatten(1).mean(1)
    expected_tv = 3.0 * total_variation(image)
    assert torch.allclose(terms.content, expected_content, atol=1e-6)
    assert torch.allclose(terms.style, expected_style, atol=1e-6)
    assert torch.allclose(terms.tv, expected_tv, atol=1e-6)
    assert torch.allclose(terms.total, expected_content + expected_style + expected_tv)
    # Precomputed content targets give the same value as passing the content.
    again = criterion(image, content_targets=criterion.content_targets(content))
    assert torch.allclose(again.total, terms.total)


def test_style_target_is_zero_loss_for_the_style_image_itself(tiny_config, style_image, vgg_criterion):
    terms = vgg_criterion(style_image.unsqueeze(0), content=style_image.unsqueeze(0))
    assert terms.style.item() < 1e-6 * max(1.0, vgg_criterion.style_weight)
    assert terms.content.item() == 0.0


def test_style_blend_is_weighted_mean_of_grams(style_image):
    other = 1 - style_image
    single = CriterionConfig(weights="random", style_size=48)
    blend = build_criterion(dataclasses.replace(single, style_blend=(3.0, 1.0)), [style_image, other])
    single_a = build_criterion(single, [style_image], network=blend.network)
    single_b = build_criterion(single, [other], network=blend.network)
    for layer in blend.style_layers:
        expected = 0.75 * single_a.target_gram(layer) + 0.25 * single_b.target_gram(layer)
        assert torch.allclose(blend.target_gram(layer), expected, rtol=1e-5, atol=1e-6)


def test_style_blend_must_match_style_count(style_image):
    with pytest.raises(ValueError, match="blend"):
        build_criterion(CriterionConfig(weights="random", style_blend=(1.0,)), [style_image, style_image])


def test_per_image_terms_do_not_depend_on_the_batch(vgg_criterion):
    images = torch.rand(3, 3, 32, 40)
    content = torch.rand(3, 3, 32, 40)
    batched = vgg_criterion(images, content=content).total
    single = torch.cat([vgg_criterion(images[i : i + 1], content=content[i : i + 1]).total for i in range(3)])
    assert torch.allclose(batched, single, rtol=1e-5)


def test_style_embedding_shape(vgg_criterion):
    embedding = vgg_criterion.style_embedding(torch.rand(2, 3, 32, 32), layers=["relu1_1", "relu2_1"])
    assert embedding.shape == (2, 64 * 65 // 2 + 128 * 129 // 2)


def test_structural_dissimilarity_matches_skimage_and_is_zero_for_identical_images():
    from distill.core.metrics import ssim
    from distill.objective.terms import structural_dissimilarity

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 40, 48, generator=generator)
    b = (a + 0.1 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    assert torch.allclose(structural_dissimilarity(a, a), torch.zeros(2), atol=1e-6)
    ours = 1 - structural_dissimilarity(a, b)
    # skimage uses a 7 px uniform window, we use Wang et al.'s 11 px Gaussian: close, not equal.
    for i in range(2):
        assert ours[i].item() == pytest.approx(ssim(a[i], b[i]), abs=0.02)
    x = a.clone().requires_grad_(True)
    structural_dissimilarity(x, b).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
