"""Semantic masks: colour-coded region maps that pair regions of a photo with regions of a style.

The convention of Deep Photo Style Transfer (Luan et al. 2017): a mask is an image the
size of its photo, painted in a few pure colours, one per region (sky, building, water...);
a content region is styled only by the style image's region of the same colour. Masks
drawn in ordinary paint programs have anti-aliased edges and JPEG noise, so every pixel
is snapped to the nearest colour of :data:`PALETTE`, and then every pixel takes the most
common class of its 5x5 neighbourhood: an anti-aliased border between black and white is
a thin line of exact grey (and one between cyan and yellow of green), which must not
become a region of its own. A mask is a class map: a (H, W)
``torch.long`` tensor of indices into :data:`PALETTE`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from distill.core.errors import BadImageError, ConfigError
from distill.core.imageio import load_image

#: The region colours (RGB in [0, 1]) of Luan et al.'s masks, by name.
PALETTE: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.0, 1.0),
    "green": (0.0, 1.0, 0.0),
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "grey": (0.5, 0.5, 0.5),
    "light blue": (0.0, 1.0, 1.0),
    "purple": (1.0, 0.0, 1.0),
}
CLASS_NAMES = tuple(PALETTE)
#: A mask may differ from its photo's size by this many pixels per side (masks are often
#: cut 1 px short); it is resized with a warning. More is refused: it belongs to another photo.
MAX_SIZE_DIFFERENCE = 4
#: Window of :func:`majority_filter`: lines up to 2 px wide vanish.
BORDER_FILTER_SIZE = 5
#: A region must cover at least this fraction of both masks to be paired; smaller specks
#: are stray anti-aliasing colours, not regions.
MIN_REGION_FRACTION = 0.001


class MaskError(ConfigError):
    """A mask that cannot be used: unreadable, of another photo's size, or sharing no region with its partner."""


class MaskWarning(UserWarning):
    """A mask was resized to its photo, or a region appears in only one of the two masks."""


def load_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a colour-coded mask file as a class map (H, W) long; every pixel snapped to the nearest :data:`PALETTE` colour."""
    try:
        image = load_image(path)
    except BadImageError as exc:
        raise MaskError(f"mask {exc}") from None
    return majority_filter(snap_to_palette(image))


def snap_to_palette(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) colours in [0, 1] -> (H, W) indices of the nearest palette colour."""
    palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
    distances = torch.cdist(image.float().flatten(1).t(), palette)
    return distances.argmin(dim=1).reshape(image.shape[-2:])


def mask_image(mask: torch.Tensor) -> torch.Tensor:
    """A class map (H, W) painted in its palette colours: (3, H, W) in [0, 1] (:func:`load_mask` reads it back unchanged)."""
    palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
    return palette[mask].permute(2, 0, 1).contiguous()


def majority_filter(mask: torch.Tensor, *, size: int = BORDER_FILTER_SIZE) -> torch.Tensor:
    """Each pixel of a class map (H, W) relabelled with the most common class of its ``size`` x ``size`` window.

    Removes regions thinner than about half the window (anti-aliasing lines along borders)
    and keeps every wider region, with its corners slightly rounded.
    """
    one_hot = F.one_hot(mask, len(PALETTE)).permute(2, 0, 1).float()[None]
    counts = F.avg_pool2d(one_hot, size, stride=1, padding=size // 2, count_include_pad=False)
    return counts[0].argmax(dim=0)


def _warn(message: str) -> None:
    warnings.warn(message, MaskWarning, stacklevel=3)


def fit_mask(mask: torch.Tensor, size: tuple[int, int], *, what: str, warn: Callable[[str], None] = _warn) -> torch.Tensor:
    """``mask`` (H, W) brought to ``size`` (H, W) of its photo as given.

    A difference of up to :data:`MAX_SIZE_DIFFERENCE` px per side is resized away (nearest
    neighbour, so no new classes appear) with a :class:`MaskWarning` (or a call of ``warn``
    with the message); more is a :class:`MaskError`.
    """
    if tuple(mask.shape) == tuple(size):
        return mask
    off = max(abs(mask.shape[0] - size[0]), abs(mask.shape[1] - size[1]))
    if off > MAX_SIZE_DIFFERENCE:
        raise MaskError(
            f"{what} is {mask.shape[1]}x{mask.shape[0]} px but its photo is {size[1]}x{size[0]} px; "
            f"a mask must match its photo within {MAX_SIZE_DIFFERENCE} px"
        )
    warn(f"{what} is {mask.shape[1]}x{mask.shape[0]} px, its photo {size[1]}x{size[0]} px: resized to the photo")
    return resize_mask(mask, size)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class map (H, W) or (B, H, W) resized to ``size`` by nearest neighbour."""
    batched = mask if mask.dim() == 3 else mask[None]
    resized = F.interpolate(batched[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()
    return resized if mask.dim() == 3 else resized[0]


def region_fractions(mask: torch.Tensor) -> dict[int, float]:
    """Fraction of the mask's pixels in each class it holds."""
    counts = torch.bincount(mask.flatten(), minlength=len(PALETTE)).double()
    fractions = counts / counts.sum()
    return {int(k): float(f) for k, f in enumerate(fractions) if f > 0}


def regions_of(mask: torch.Tensor) -> tuple[int, ...]:
    """The classes that cover at least :data:`MIN_REGION_FRACTION` of ``mask`` (smaller specks are stray colours), sorted."""
    return tuple(k for k, f in region_fractions(mask).items() if f >= MIN_REGION_FRACTION)


def check_mask_options(content_mask, style_mask, style_count: int, *, content_option: str) -> bool:
    """Whether masks are used; :class:`MaskError` when only one of the two is given or there is not exactly one style."""
    if content_mask is None and style_mask is None:
        return False
    if content_mask is None or style_mask is None:
        missing = content_option if content_mask is None else "--style-mask"
        raise MaskError(f"semantic masks come in pairs: {missing} is missing")
    if style_count != 1:
        raise MaskError(f"--style-mask needs exactly one --style image, got {style_count}")
    return True


def shared_regions(
    content_mask: torch.Tensor, style_mask: torch.Tensor, *, what: str = "the masks", warn: Callable[[str], None] = _warn
) -> tuple[int, ...]:
    """Classes that cover at least :data:`MIN_REGION_FRACTION` of both masks.

    A region present in only one mask is left out with a :class:`MaskWarning` (the paper's
    behaviour: a content region with no style partner keeps only the content and
    photorealism terms), or a call of ``warn``. No shared region is a :class:`MaskError`.
    """
    content, style = set(regions_of(content_mask)), set(regions_of(style_mask))
    shared = tuple(sorted(content & style))
    if not shared:
        raise MaskError(
            f"{what} share no region: the content mask has {_names(content)}, the style mask {_names(style)}; "
            "paint matching regions in the same colour"
        )
    only = {"content": content - style, "style": style - content}
    for side, classes in only.items():
        if classes:
            warn(f"{what}: {_names(classes)} only in the {side} mask; ignored")
    return shared


def region_weights(mask: torch.Tensor, classes: tuple[int, ...], size: tuple[int, int]) -> torch.Tensor:
    """Soft region masks at ``size``: (B, K, h, w), each position's share of every class in ``classes``.

    ``mask`` (B, H, W) class maps; the one-hot maps are area-averaged down to ``size``,
    so a feature position on a region border belongs partly to both regions.
    """
    batched = mask if mask.dim() == 3 else mask[None]
    one_hot = torch.stack([(batched == k).float() for k in classes], dim=1)
    if tuple(one_hot.shape[-2:]) == tuple(size):
        return one_hot
    return F.adaptive_avg_pool2d(one_hot, tuple(size))


def _names(classes) -> str:
    return ", ".join(CLASS_NAMES[k] for k in sorted(classes)) or "no region"
