"""Loss-network taps, weights sources and their errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from distill.core.devices import isolated_rng
from distill.objective.lossnet import (
    DEFAULT_LAYERS,
    WeightsFileError,
    WeightsUnavailableError,
    build_loss_network,
    documented_layer_info,
    save_loss_network_weights,
)


@pytest.mark.parametrize("backbone", ["vgg19", "resnet50", "texture_vgg"])
def test_default_taps_have_documented_shapes(backbone):
    network = build_loss_network(backbone, weights="random")
    height, width = 64, 96
    features = network(torch.rand(2, 3, height, width))
    expected = DEFAULT_LAYERS[backbone]["content"] + DEFAULT_LAYERS[backbone]["style"]
    assert set(features) == set(expected)
    for name, feature in features.items():
        info = documented_layer_info(backbone, name)
        assert feature.shape == (2, info.channels, height // info.reduction, width // info.reduction), name


def test_texture_network_filter_banks_measure_luminance_texture_not_colour():
    network = build_loss_network("texture_vgg", weights="random", layers=["relu1_1", "bank1", "bank4"])
    assert network.marginal_layers == ("bank1", "bank4")  # separate filters: matched one by one
    # Stripes of two colours with the same luminance as the banks see it (after ImageNet normalisation).
    luma_per_unit = torch.tensor([0.299 / 0.229, 0.587 / 0.224, 0.114 / 0.225])
    chroma = torch.tensor([luma_per_unit[1], -luma_per_unit[0], 0.0])
    stripes = (torch.arange(32) // 4 % 2).float().view(1, 1, 1, 32).expand(1, 1, 32, 32)
    coloured = 0.5 + 0.2 * chroma.view(1, 3, 1, 1) / chroma.abs().max() * (stripes - 0.5)
    flat = torch.full((1, 3, 32, 32), 0.4)
    for image in (flat, coloured):
        features = network(image)
        assert features["bank1"].abs().max() < 1e-4 and features["bank4"].abs().max() < 1e-4
    assert network(coloured)["relu1_1"].std() > 1e-2  # colour is left to the VGG layers
    grey_stripes = 0.3 + 0.4 * stripes.expand(1, 3, 32, 32)
    assert network(grey_stripes)["bank1"].abs().max() > 0.1


def test_network_is_frozen_but_passes_gradients_to_the_input():
    network = build_loss_network("vgg19", weights="random", layers=["relu1_1", "relu2_1"])
    network.train()  # must stay in eval mode regardless
    assert not network.training
    assert all(not p.requires_grad for p in network.parameters())
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    network(image)["relu2_1"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_normalisation_is_inside():
    network = build_loss_network("vgg19", weights="random", layers=["conv1_1"])
    conv = getattr(network.extractor.model.features, "0")
    image = torch.rand(1, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(network(image)["conv1_1"], conv((image - mean) / std), atol=1e-5)


def test_arbitrary_graph_node_taps():
    network = build_loss_network("resnet50", weights="random", layers=["layer2", "layer3.0.act3"])
    features = network(torch.rand(1, 3, 64, 64))
    assert features["layer3.0.act3"].shape == (1, 1024, 4, 4)
    with pytest.raises(ValueError, match="unknown layer"):
        build_loss_network("resnet50", weights="random", layers=["no_such_layer"])


def test_random_weights_are_seeded_and_labelled():
    a = build_loss_network("vgg19", weights="random", seed=3, layers=["relu1_1"])
    b = build_loss_network("vgg19", weights="random", seed=3, layers=["relu1_1"])
    c = build_loss_network("vgg19", weights="random", seed=4, layers=["relu1_1"])
    image = torch.rand(1, 3, 16, 16)
    assert torch.equal(a(image)["relu1_1"], b(image)["relu1_1"])
    assert not torch.equal(a(image)["relu1_1"], c(image)["relu1_1"])
    assert a.is_random and "random" in a.weights_description
    banks = [build_loss_network("texture_vgg", weights="random", seed=seed, layers=["bank2"]) for seed in (3, 3, 4)]
    assert torch.equal(banks[0](image)["bank2"], banks[1](image)["bank2"])
    assert not torch.equal(banks[0](image)["bank2"], banks[2](image)["bank2"])


def test_seeding_inside_isolated_rng_leaves_the_callers_random_state_alone():
    def draws():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    def seed_all(seed):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    seed_all(1)
    expected_outside = draws()
    seed_all(7)
    expected_inside = draws()
    seed_all(1)
    with isolated_rng(7):
        inside = draws()
    assert inside == expected_inside
    assert draws() == expected_outside
    seed_all(1)
    build_loss_network("vgg19", weights="random")  # seeds timm's initialisation the same way
    assert draws() == expected_outside


def test_weights_file_round_trips(tmp_path):
    original = build_loss_network("vgg19", weights="random", seed=5, layers=["relu3_1"])
    path = save_loss_network_weights(original, tmp_path / "vgg.safetensors")
    loaded = build_loss_network("vgg19", weights=str(path), layers=["relu3_1"])
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(original(image)["relu3_1"], loaded(image)["relu3_1"])
    assert not loaded.is_random
    # The same weights as a torch state-dict file, read with weights_only=True.
    torch_path = tmp_path / "vgg.pth"
    torch.save({"state_dict": original.extractor.model.state_dict()}, torch_path)
    from_torch = build_loss_network("vgg19", weights=str(torch_path), layers=["relu3_1"])
    assert torch.equal(original(image)["relu3_1"], from_torch(image)["relu3_1"])


def test_bad_weights_files(tmp_path):
    with pytest.raises(WeightsFileError, match="no such file"):
        build_loss_network("vgg19", weights=str(tmp_path / "missing.safetensors"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(WeightsFileError, match="garbage.safetensors"):
        build_loss_network("vgg19", weights=str(garbage))
    resnet = build_loss_network("resnet50", weights="random", layers=["layer1"])
    wrong = save_loss_network_weights(resnet, tmp_path / "resnet.safetensors")
    with pytest.raises(WeightsFileError, match="lacks"):
        build_loss_network("vgg19", weights=str(wrong), layers=["relu1_1"])


def test_pickled_code_is_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsFileError):
        build_loss_network("vgg19", weights=str(path))


def test_unreachable_download_names_offline_options(monkeypatch):
    import distill.objective.lossnet as lossnet

    monkeypatch.setattr(lossnet, "_reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(WeightsUnavailableError) as error:
        build_loss_network("vgg19", weights="pretrained")
    assert "--weights random" in str(error.value) and "--weights PATH" in str(error.value)
