"""Semantic masks of a folder of content photos, paired with the photos by name.

``generate_targets --content-mask-dir DIR --style-mask FILE``: the mask of
``CONTENT_DIR/a/b.jpg`` is the image file ``DIR/a/b.*`` (any image suffix). A target made
with a mask depends on the mask too, so the content's key in the store is the hash of
both files (:meth:`ContentMasks.content_key`): an edited mask makes a new target.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.core.errors import ConfigError
from distill.core.files import sha256_file, sha256_json
from distill.core.imageio import image_size, list_images
from distill.core.masks import fit_mask, load_mask, resize_mask, shared_regions


class ContentMaskError(ConfigError):
    """The content mask folder is missing or holds no images."""


class ContentMasks:
    """The masks of ``content_dir``'s photos, found in ``mask_dir``, to pair with ``style_mask`` (a class map)."""

    def __init__(self, content_dir: str | Path, mask_dir: str | Path, style_mask: torch.Tensor) -> None:
        self.content_dir = Path(content_dir)
        self.mask_dir = Path(mask_dir)
        self.style_mask = style_mask
        try:
            files = list_images(self.mask_dir)
        except FileNotFoundError:
            raise ContentMaskError(f"--content-mask-dir {mask_dir}: no such folder") from None
        if not files:
            raise ContentMaskError(f"--content-mask-dir {mask_dir}: no image files")
        self._by_name = {path.relative_to(self.mask_dir).with_suffix("").as_posix(): path for path in files}

    def mask_file(self, content_path: Path) -> Path | None:
        """The mask of ``content_path`` (same relative path and stem), or ``None``."""
        try:
            name = Path(content_path).relative_to(self.content_dir).with_suffix("").as_posix()
        except ValueError:
            name = Path(content_path).stem
        return self._by_name.get(name)

    def content_key(self, content_hash: str, mask_path: Path) -> str:
        """The store key of a content photo taught with ``mask_path``: both files' hashes."""
        return sha256_json({"content": content_hash, "mask": sha256_file(mask_path)})

    def teacher_mask(self, content_path: Path, mask_path: Path, size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
        """The mask (H, W) at the teacher's ``size``, and the warnings to log (a resized mask, unpaired regions).

        Raises :class:`distill.core.masks.MaskError` for an unreadable mask, one of another
        photo's size, or one that shares no region with the style mask.
        """
        messages: list[str] = []
        mask = load_mask(mask_path)
        height, width = image_size(content_path)
        if (height, width) != tuple(mask.shape) and (width, height) == tuple(mask.shape):
            height, width = width, height  # the header's size before EXIF rotation
        mask = fit_mask(mask, (height, width), what=f"mask {mask_path}", warn=messages.append)
        shared_regions(mask, self.style_mask, what=f"mask {mask_path} and the style mask", warn=messages.append)
        return resize_mask(mask, size), messages
