"""Shared fixtures: tiny random-weight criteria and generated images (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from distill.objective.config import CriterionConfig
from distill.objective.criterion import build_criterion


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def style_image() -> torch.Tensor:
    """A 48 px style image with stripes, so that its Grams are not trivial."""
    generator = torch.Generator().manual_seed(1)
    y = torch.linspace(0, 6.28 * 4, 48)
    stripes = torch.sin(y[:, None] + y[None, :]) * 0.5 + 0.5
    return (torch.stack([stripes, stripes.flip(0), 1 - stripes]) * 0.8 + 0.2 * torch.rand(3, 48, 48, generator=generator)).clamp(0, 1)


@pytest.fixture(scope="session")
def tiny_config() -> CriterionConfig:
    """The classic objective on a random VGG-19: the behaviour these tests were written for."""
    return CriterionConfig.classic(weights="random", style_size=48)


@pytest.fixture(scope="session")
def offline_config() -> CriterionConfig:
    """The offline default: scale-free terms, the random texture network, sliced-Wasserstein style."""
    return CriterionConfig(weights="random", style_size=48)


@pytest.fixture(scope="session")
def vgg_criterion(tiny_config, style_image):
    """Random-weight VGG-19 criterion; shared because building the network takes seconds."""
    return build_criterion(tiny_config, [style_image])


@pytest.fixture
def seeded():
    """Seed torch's global RNG so that randomly initialised students are the same every run."""
    torch.manual_seed(0)


@pytest.fixture
def batch_invariant_cpu(monkeypatch):
    """oneDNN off, as the command line runs the teacher: it picks CPU convolution algorithms by
    batch size, so with it a batched teacher run drifts from single-image runs."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: tiny inputs gain nothing from more, and on a shared 2-core
    machine the thread handoffs cost more than the work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
