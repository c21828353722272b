"""Training data: which targets each step trains on, and how they are cropped.

Reproducibility: the batch of step ``s`` (which images, where they are cropped, whether
they are flipped) is a pure function of ``(seed, s)``; nothing depends on an iterator's
hidden state, so a resumed run continues exactly and ``W`` processes that each take a
``batch_size / W`` slice of the same global batch compute the same loss as one process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from distill.core.errors import ConfigError, DistillError
from distill.core.imageio import resize_image
from distill.targets.pairs import TargetPairs
from distill.targets.store import TargetStore


def open_store(path: str) -> TargetStore:
    """The target store at ``path`` (a separate function so that tests can hand in a prepared store)."""
    return TargetStore(path)


def target_pairs(store: TargetStore, **kwargs: Any) -> TargetPairs:
    """The store's (content, target) pairs of one split (see :class:`TargetPairs`).

    Each file's SHA-256 is checked against the manifest the first time it is read
    (``verify=True``): a target changed after it was generated is refused, not trained on.
    """
    return TargetPairs(store, verify=True, **kwargs)


class StylePairs(torch.utils.data.Dataset):
    """The pairs of several styles as one dataset; each item also names its ``"style"`` (position in ``parts``).

    A multi-style run's batches then mix styles as the seeded batch order falls.
    """

    def __init__(self, parts: list[TargetPairs]) -> None:
        self.parts = parts
        self.offsets = list(np.cumsum([0] + [len(part) for part in parts]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(style position, index within that style's pairs) of item ``index``."""
        style = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return style, index - int(self.offsets[style])

    def __getitem__(self, index: int) -> dict[str, Any]:
        style, within = self.locate(index)
        return {**self.parts[style][within], "style": style}

    @property
    def torn_manifest_lines(self) -> dict[Any, int]:
        torn: dict[Any, int] = {}
        for part in self.parts:
            for path, count in part.torn_manifest_lines.items():
                torn[path] = torn.get(path, 0) + count
        return torn


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, count: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(_mix(seed, count, epoch, 0x0E90C4))
    return tuple(torch.randperm(count, generator=generator).tolist())


def global_batch(step: int, *, count: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The (dataset index, sample seed) pairs of 1-based ``step``'s global batch.

    Walks through a fresh seeded permutation of the ``count`` items every epoch; the
    sample seed drives that item's crop and flip. A pure function of its arguments.
    """
    batch = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, within = divmod(position, count)
        batch.append((_epoch_order(seed, count, epoch)[within], _mix(seed, step, position, 0x5A3B1E)))
    return batch


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's slice of the global batch for steps ``first_step..last_step``."""

    def __init__(self, *, count: int, batch_size: int, seed: int, first_step: int, last_step: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.first_step, self.last_step = first_step, last_step
        self.per_rank = batch_size // world_size
        self.rank = rank

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo = self.rank * self.per_rank
        for step in range(self.first_step, self.last_step + 1):
            yield global_batch(step, count=self.count, batch_size=self.batch_size, seed=self.seed)[lo:lo + self.per_rank]


def random_crop_pair(
    content: torch.Tensor, target: torch.Tensor, *, crop_size: int, hflip: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random square crop (and flip) of a content image and its target, (3, H, W) in [0, 1].

    The content is resized to the target's size if they differ; images whose short
    side is below ``crop_size`` are resized up (aspect kept) first.
    """
    if content.shape[-2:] != target.shape[-2:]:
        content = resize_image(content, size=tuple(target.shape[-2:]))
    height, width = target.shape[-2:]
    if min(height, width) < crop_size:
        scale = crop_size / min(height, width)
        size = (max(crop_size, round(height * scale)), max(crop_size, round(width * scale)))
        content, target = resize_image(content, size=size), resize_image(target, size=size)
        height, width = size
    generator = torch.Generator().manual_seed(seed)
    top = int(torch.randint(0, height - crop_size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop_size + 1, (1,), generator=generator))
    flip = bool(torch.rand((), generator=generator) < 0.5)
    window = (..., slice(top, top + crop_size), slice(left, left + crop_size))
    content, target = content[window], target[window]
    if hflip and flip:
        content, target = content.flip(-1), target.flip(-1)
    return content.contiguous(), target.contiguous()


class CroppedPairs(torch.utils.data.Dataset):
    """Wraps a TargetPairs dataset; items are indexed by (index, sample seed) and cropped."""

    def __init__(self, pairs: torch.utils.data.Dataset, *, crop_size: int, hflip: bool) -> None:
        self.pairs, self.crop_size, self.hflip = pairs, crop_size, hflip

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...] | DistillError:
        """The cropped pair (and, from :class:`StylePairs`, its style position); a
        :class:`DistillError` (a target that cannot be read) is returned, not raised.

        Returned so that it reaches the training loop as itself, with its one-line
        message, also from a DataLoader worker process (see :func:`collate_or_error`).
        """
        index, seed = item
        try:
            pair = self.pairs[index]
        except DistillError as error:
            return error
        cropped = random_crop_pair(pair["content"], pair["target"], crop_size=self.crop_size, hflip=self.hflip, seed=seed)
        return (*cropped, pair["style"]) if "style" in pair else cropped


def collate_or_error(items: list[Any]) -> Any:
    """The default collation of a batch, or the first error among its items (the loop raises it)."""
    for item in items:
        if isinstance(item, Exception):
            return item
    return torch.utils.data.default_collate(items)


def eval_pair(pair: Mapping[str, torch.Tensor], size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, target) batches of one, the target at long side ``size`` and the content resized to match."""
    target = resize_image(pair["target"], long_side=size)
    content = resize_image(pair["content"], size=tuple(target.shape[-2:]))
    return content.unsqueeze(0).to(device), target.unsqueeze(0).to(device)


def centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` square of ``image`` after resizing its short side to ``size``."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    image = resize_image(image, size=(max(size, round(height * scale)), max(size, round(width * scale))))
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[..., top:top + size, left:left + size]
