"""The frozen loss network: a timm classifier's feature trunk with named layer taps.

The teacher, the student trainer and the fidelity report all measure images through
this network, so the taps, the weights and the ImageNet normalisation live here and
nowhere else.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# As a module, not its functions: calls go through its attributes, which tests replace.
import huggingface_hub
import huggingface_hub.constants
import timm
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from distill.core.devices import isolated_rng
from distill.core.errors import ConfigError, UnavailableError, load_error_reason, one_line
from distill.core.files import write_bytes_atomic

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The pretrained tag used for each named backbone: torchvision's ImageNet weights, the
#: ones Gatys-style implementations and the original lecture used.
PRETRAINED_TAGS = {"vgg19": "vgg19.tv_in1k", "resnet50": "resnet50.tv_in1k"}


#: The ``weights`` values that are not a file: timm's download, or seeded random weights.
WEIGHTS_SOURCES = ("pretrained", "random")


class WeightsUnavailableError(UnavailableError):
    """Pretrained weights could not be fetched (typically: no internet)."""


class WeightsFileError(ConfigError):
    """A local weights file is missing, unreadable or does not fit the backbone."""


def weights_file(weights: str) -> Path | None:
    """The file a ``weights`` setting names, or None for ``"pretrained"`` and ``"random"``."""
    return None if weights in WEIGHTS_SOURCES else Path(weights)


def is_random_weights(description: str) -> bool:
    """Whether a network's ``weights_description`` says its weights are random (not learned features)."""
    return description.startswith("random")


@dataclass(frozen=True)
class LayerInfo:
    """A documented tap: its channel count and its spatial reduction (input size / tap size)."""

    channels: int
    reduction: int


_VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
#: The texture network: VGG-19's layout (so Gatys's tap names apply) at a quarter to half
#: of its width. With random weights, width buys little: measured on the shared paintings,
#: this network stylises as well as a random VGG-19 at about half the time per iteration.
_TEXTURE_VGG_BLOCKS = ((32, 2), (64, 2), (128, 4), (256, 4), (256, 4))
#: The texture network's single-layer filter banks: downsampling factor of each bank's input.
FILTER_BANK_SCALES = (1, 2, 4, 8)
#: Their style taps.
FILTER_BANK_TAPS = tuple(f"bank{scale}" for scale in FILTER_BANK_SCALES)
_FILTER_BANK_SIZE = 5  # px per side of each random filter, at its bank's scale
_FILTER_BANK_FILTERS = 32
#: Style-layer weight of each filter bank, relative to a VGG layer's. Zero-mean filter responses carry
#: no constant part, so their relative style errors run about twice a VGG layer's; at half weight the
#: offline default's balance of style against content stays within 2x of VGG-19's and ResNet-50's
#: at the same alpha and beta (tests/test_scale_free.py).
FILTER_BANK_WEIGHT = 0.5
#: Luminance weights (ITU-R BT.601) that the filter banks see the image through.
_LUMA = (0.299, 0.587, 0.114)


def _vgg19_layers(blocks: tuple[tuple[int, int], ...] = _VGG19_BLOCKS) -> dict[str, tuple[str, LayerInfo]]:
    """Gatys names (conv1_1, relu1_1, pool1, ...) -> (node in ``features``, info)."""
    config = blocks
    layers: dict[str, tuple[str, LayerInfo]] = {}
    index = 0
    for block, (channels, convs) in enumerate(config, start=1):
        reduction = 2 ** (block - 1)
        for conv in range(1, convs + 1):
            layers[f"conv{block}_{conv}"] = (f"features.{index}", LayerInfo(channels, reduction))
            layers[f"relu{block}_{conv}"] = (f"features.{index + 1}", LayerInfo(channels, reduction))
            index += 2
        layers[f"pool{block}"] = (f"features.{index}", LayerInfo(channels, reduction * 2))
        index += 1
    return layers


# The lecture split ResNet-50's children() into a stem and four stages.
_RESNET50_LAYERS = {
    "stem": ("maxpool", LayerInfo(64, 4)),
    "layer1": ("layer1", LayerInfo(256, 4)),
    "layer2": ("layer2", LayerInfo(512, 8)),
    "layer3": ("layer3", LayerInfo(1024, 16)),
    "layer4": ("layer4", LayerInfo(2048, 32)),
}

#: Friendly tap names per backbone, with their documented channels and reduction.
NAMED_LAYERS: dict[str, dict[str, tuple[str, LayerInfo]]] = {
    "vgg19": _vgg19_layers(),
    "resnet50": _RESNET50_LAYERS,
    "texture_vgg": {
        **_vgg19_layers(_TEXTURE_VGG_BLOCKS),
        **{
            f"bank{scale}": (f"filter_banks.{index}.3", LayerInfo(_FILTER_BANK_FILTERS, scale))
            for index, scale in enumerate(FILTER_BANK_SCALES)
        },
    },
}

#: Default taps: Gatys et al. for VGG-19; the lecture's stage outputs for ResNet-50.
DEFAULT_LAYERS = {
    "vgg19": {"content": ("relu4_2",), "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")},
    "resnet50": {"content": ("layer2",), "style": ("stem", "layer1", "layer2", "layer3", "layer4")},
    "texture_vgg": {
        "content": ("relu4_2",),
        "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", *FILTER_BANK_TAPS),
    },
}

#: Backbones that exist only with random weights: there is nothing pretrained to download.
RANDOM_ONLY_BACKBONES = ("texture_vgg",)


class TextureVGG(nn.Module):
    """VGG-19's layout at reduced width, plus single-layer filter banks, built for random weights.

    Kaiming-normal weights (fan-in, ReLU gain) and zero biases, so every layer keeps the
    signal's scale; max pooling as in VGG-19 (measured: with average pooling the results
    keep less of the photo's structure, and deep features of noise average away, which
    puts the scale-free balance off by 3x against VGG-19 and ResNet-50).
    ``forward_features`` and the ``features.N`` node names match timm's VGG, so the same
    taps and tracing apply.

    The filter banks (taps ``bank1`` .. ``bank8``) follow Ustyuzhaninov et al. 2017 ("What
    does it take to generate natural textures?": one layer of random filters at several
    scales, with a ReLU, already describes natural textures). Each bank applies 32 random
    zero-mean 5x5 filters to the image's luminance, downsampled 1, 2, 4 or 8 times, so the
    banks see strokes and patches of 5 to 40 px. Zero-mean and luminance only: they measure
    texture and leave colour to the VGG layers. Their channels are separate filters, so
    the sliced-Wasserstein statistic matches each filter's own response histogram there
    (:attr:`marginal_nodes`), as Heeger and Bergen's texture synthesis did. Measured on
    photos whose own texture was already near the painting's (fur, old town facades;
    128 px, 200 iterations): texture moved toward the painting by 0.05-0.35 more than
    the VGG layers alone, with flat painted facets in place of fur.
    """

    def __init__(self, blocks: tuple[tuple[int, int], ...] = _TEXTURE_VGG_BLOCKS, *, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        in_channels = 3
        for channels, convs in blocks:
            for _ in range(convs):
                conv = nn.Conv2d(in_channels, channels, 3, padding=1)
                std = (2.0 / (in_channels * 9)) ** 0.5
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
                    conv.bias.zero_()
                layers += [conv, nn.ReLU()]
                in_channels = channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        # Drawn after the VGG weights, so those stay what the seed gave before the banks existed.
        self.filter_banks = nn.ModuleList(_filter_bank(scale, generator) for scale in FILTER_BANK_SCALES)
        #: Graph nodes whose channels are independent filters (see the class docstring).
        self.marginal_nodes = tuple(f"filter_banks.{index}.3" for index in range(len(FILTER_BANK_SCALES)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for bank in self.filter_banks:
            # Side taps: traced so that the feature extractor can return them; a plain
            # forward pass computes and drops them (the banks cost a few percent of the trunk).
            bank(x)
        return self.features(x)


def _filter_bank(scale: int, generator: torch.Generator) -> nn.Sequential:
    """Downsample by ``scale``, then random zero-mean unit-norm luminance filters and a ReLU."""
    size = _FILTER_BANK_SIZE
    filters = torch.randn(_FILTER_BANK_FILTERS, 1, size, size, generator=generator)
    filters -= filters.mean(dim=(1, 2, 3), keepdim=True)
    filters /= filters.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    conv = nn.Conv2d(3, _FILTER_BANK_FILTERS, size, bias=False)
    with torch.no_grad():
        # A luminance filter as an RGB filter: the same kernel, weighted per channel.
        conv.weight.copy_(filters * torch.tensor(_LUMA).view(1, 3, 1, 1))
    pool = nn.AvgPool2d(scale) if scale > 1 else nn.Identity()
    return nn.Sequential(pool, nn.ReplicationPad2d(size // 2), conv, nn.ReLU())


class _Trunk(nn.Module):
    """Runs only ``forward_features`` so that tracing never reaches the classifier head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class LossNetwork(nn.Module):
    """Frozen feature extractor: images in [0, 1] -> dict of named feature maps.

    Input: float tensor (B, 3, H, W) in [0, 1]. ImageNet normalisation happens inside.
    Output: ``{layer_name: (B, C, H / r, W / r)}`` for every tap in ``self.layers``.
    Always in eval mode with ``requires_grad=False`` parameters; gradients still flow to
    the input, which is what the teacher optimises.
    """

    def __init__(self, *, backbone: str, model: nn.Module, layers: dict[str, str], weights_description: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = tuple(layers)
        #: Human-readable provenance of the weights, e.g. "random (seed 0)". Every output
        #: that used this network records it.
        self.weights_description = weights_description
        self.is_random = is_random_weights(weights_description)
        #: Taps whose channels are independent filters: style statistics match each channel's histogram.
        marginal_nodes = set(getattr(model, "marginal_nodes", ()))
        self.marginal_layers = tuple(name for name, node in layers.items() if node in marginal_nodes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        return_nodes = {f"model.{node}": name for name, node in layers.items()}
        self.extractor = create_feature_extractor(_Trunk(model), return_nodes=return_nodes)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LossNetwork":
        # Frozen means frozen: batch-norm statistics must never update, whatever a
        # surrounding training loop asks for.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        normalised = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.extractor(normalised)

    def channels(self) -> dict[str, int]:
        """Channel count of every tap, measured with a tiny forward pass."""
        probe = torch.zeros(1, 3, 64, 64, device=self.mean.device)
        with torch.no_grad():
            return {name: feature.shape[1] for name, feature in self(probe).items()}


def build_loss_network(
    backbone: str = "vgg19",
    *,
    weights: str = "pretrained",
    layers: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
    pooling: str = "max",
    device: str | torch.device = "cpu",
) -> LossNetwork:
    """Create a frozen loss network.

    ``backbone``: ``vgg19``, ``resnet50``, ``texture_vgg`` (random weights only, see
    :class:`TextureVGG`) or any timm model name. ``layers``: tap names
    (Gatys names such as ``relu4_2`` for VGG-19, ``stem``/``layer1``..``layer4`` for
    ResNet-50) or raw graph node names (``features.21``, ``layer3.2.act3``); ``None``
    takes the backbone's default content and style taps. ``weights``: ``pretrained``
    (timm's normal download and cache), ``random`` (seeded with ``seed``; offline) or a path to a ``.safetensors`` or torch state-dict file.
    ``pooling``: ``max`` or ``avg`` (Gatys et al. found average pooling gives smoother
    results); only VGG-style pooling layers are replaced.
    """
    model, description, loaded_keys = _create_backbone(backbone, weights=weights, seed=seed)
    if pooling == "avg":
        _replace_max_pooling(model)
    elif pooling != "max":
        raise ConfigError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            # An in-place ReLU would overwrite a tapped conv output before we read it.
            module.inplace = False
    if layers is None:
        defaults = DEFAULT_LAYERS.get(backbone)
        if defaults is None:
            raise ConfigError(f"backbone {backbone!r} has no default taps; pass layers explicitly")
        layers = tuple(dict.fromkeys(defaults["content"] + defaults["style"]))
    node_map = resolve_layers(backbone, model, layers)
    network = LossNetwork(backbone=backbone, model=model, layers=node_map, weights_description=description)
    if loaded_keys is not None:
        _check_needed_weights_present(network, Path(weights), loaded_keys)
    return network.to(device)


def resolve_layers(backbone: str, model: nn.Module, layers: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Map each requested tap to a graph node name of ``model``'s feature trunk."""
    named = NAMED_LAYERS.get(backbone, {})
    available: list[str] | None = None
    node_map: dict[str, str] = {}
    for layer in layers:
        if layer in named:
            node_map[layer] = named[layer][0]
            continue
        if available is None:
            _, eval_nodes = get_graph_node_names(_Trunk(model))
            available = [n.removeprefix("model.") for n in eval_nodes]
        if layer not in available:
            hint = f"named taps: {', '.join(named)}" if named else f"graph nodes such as {', '.join(available[1:6])}"
            raise ConfigError(f"unknown layer {layer!r} for backbone {backbone!r}; {hint}")
        node_map[layer] = layer
    return node_map


def documented_layer_info(backbone: str, layer: str) -> LayerInfo:
    """Channels and reduction of a named tap (see ``NAMED_LAYERS``)."""
    return NAMED_LAYERS[backbone][layer][1]


def save_loss_network_weights(network: LossNetwork, path: str | os.PathLike) -> Path:
    """Write the weights this network uses (the trunk up to its deepest tap) to ``.safetensors``.

    ``build_loss_network(backbone, weights=PATH, layers=...)`` reads it back for the same
    or shallower taps.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in network.extractor.model.state_dict().items()}
    # In memory, then the one atomic writer: safetensors' save_file makes owner-only (0600) files.
    return write_bytes_atomic(path, save_safetensors(state, metadata={"backbone": network.backbone}))


def _create_backbone(backbone: str, *, weights: str, seed: int) -> tuple[nn.Module, str, set[str] | None]:
    """The timm model, a description of its weights, and the keys a weights file held."""
    if backbone in RANDOM_ONLY_BACKBONES and weights == "pretrained":
        raise WeightsFileError(
            f"backbone {backbone!r} has no pretrained weights: it is built for --weights random "
            "(or a weights file saved from it)"
        )
    if weights == "pretrained":
        name = PRETRAINED_TAGS.get(backbone, backbone)
        try:
            model = _create_pretrained(name)
        except Exception as exc:  # network, hub and cache errors come in many types
            raise WeightsUnavailableError(
                f"could not fetch pretrained weights for {name!r} ({type(exc).__name__}: {one_line(exc, first_line=True, limit=200)}). "
                "Offline, use --weights random (a seeded random texture network that stylises without any "
                "download, though not like learned features) or --weights PATH (a local .safetensors or torch "
                "state-dict file)."
            ) from None
        return model.eval(), f"pretrained ({name})", None
    if weights == "random":
        # timm.create_model takes no generator: seed the global RNG for this call only (restored on exit).
        with isolated_rng(seed):
            model = _create_untrained(backbone, seed=seed)
        return model.eval(), f"random (seed {seed}) - NOT pretrained: a texture model, not learned features", None
    path = weights_file(weights)
    if not path.exists():
        raise WeightsFileError(
            f"--weights {weights!r}: no such file; use 'pretrained', 'random' or a path to a weights file"
        )
    model = _create_untrained(backbone, seed=seed)
    state = load_state_dict_file(path)
    _check_shapes(model, state, path)
    model.load_state_dict(state, strict=False)  # the classifier head may be absent; the trunk is checked later
    return model.eval(), f"file ({path.name})", set(state)


def _create_untrained(backbone: str, *, seed: int) -> nn.Module:
    if backbone == "texture_vgg":
        return TextureVGG(seed=seed)
    return timm.create_model(backbone, pretrained=False)


def _create_pretrained(name: str) -> nn.Module:
    """timm's normal download, but without a minute of retries when the hub is unreachable."""
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(pretrained_cfg, "hf_hub_id", None)
    if repo:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = huggingface_hub.try_to_load_from_cache(repo, filename)
            if isinstance(cached, str):
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        endpoint = huggingface_hub.constants.ENDPOINT
        if not _reachable(endpoint):
            raise ConnectionError(f"{endpoint} is unreachable and {repo} is not in the local cache")
    return timm.create_model(name, pretrained=True)


def _reachable(url: str, *, timeout: float = 5.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling code."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(
            f"{path}: not a readable weights file ({type(exc).__name__}: {load_error_reason(exc, limit=200, first_line=True)}); "
            "use a .safetensors file or a torch file of plain tensors"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{path}: does not hold a state dict of tensors")
    # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise WeightsFileError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, the backbone expects {tuple(own[key].shape)}"
            )


def _check_needed_weights_present(network: LossNetwork, path: Path, loaded_keys: set[str]) -> None:
    needed = [k.removeprefix("model.") for k in network.extractor.state_dict()]
    absent = [k for k in needed if k not in loaded_keys]
    if absent:
        raise WeightsFileError(
            f"{path}: lacks {len(absent)} of the {len(needed)} tensors the loss network needs "
            f"(first: {absent[0]!r}); is it a {network.backbone} checkpoint?"
        )


def _replace_max_pooling(model: nn.Module) -> None:
    for name, module in list(model.named_children()):
        if isinstance(module, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
        else:
            _replace_max_pooling(module)
