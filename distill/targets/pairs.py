"""(content, teacher target) pairs of a store, and the stable train / held-out split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import BadImageError, ConfigError, StoreError
from distill.core.files import sha256_file
from distill.core.imageio import load_image, resize_image
from distill.targets.store import TargetEntry, TargetStore


class TargetPairs(torch.utils.data.Dataset):
    """(content, teacher target) pairs of one config, for training and evaluating students.

    ``split``: ``"train"``, ``"heldout"`` or ``"all"``. A content is held out iff
    ``int(sha256(content_hash)[:8], 16) / 2**32 < heldout_fraction`` (sha256 of the hex
    string), so the split is stable across runs, machines and configs (the same photo is
    held out for every style). If that holds out nothing while there are at least two
    entries, the entry with the smallest value is held out. ``size``: ``None`` returns the
    images as stored (teacher size); an int resizes both so the long side is ``size``.

    ``verify``: check each target and content file's SHA-256 against its manifest record
    the first time this dataset reads it (then cached per file), and refuse a file that
    differs with a :class:`StoreError` that names it. Manifest lines that could not be
    read are counted per file in :attr:`torn_manifest_lines` (their targets are left out).

    ``dataset[i]`` is ``{"content": (3, H, W), "target": (3, H, W), "key": str}``, floats in [0, 1].
    """

    SPLITS = ("train", "heldout", "all")

    def __init__(
        self,
        store: TargetStore,
        *,
        split: str = "train",
        size: int | None = None,
        config_hash: str | None = None,
        heldout_fraction: float = 0.1,
        verify: bool = False,
    ) -> None:
        if split not in self.SPLITS:
            raise ConfigError(f"split must be one of {self.SPLITS}, got {split!r}")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ConfigError(f"heldout_fraction must lie in [0, 1], got {heldout_fraction}")
        if size is not None and size < 1:
            raise ConfigError(f"size must be a positive int or None, got {size}")
        self.store = store
        self.split = split
        self.size = size
        self.config_hash = store.resolve_config(config_hash)
        self.heldout_fraction = heldout_fraction
        self.verify = verify
        self._verified: set[Path] = set()  # files whose SHA-256 matched their record
        self.torn_manifest_lines: dict[Path, int] = {}
        all_entries = store.entries(self.config_hash, traces=False, torn_files=self.torn_manifest_lines)
        heldout = heldout_keys(all_entries, heldout_fraction)
        if split == "all":
            self.entries = all_entries
        else:
            want = split == "heldout"
            self.entries = [e for e in all_entries if (e.key in heldout) == want]

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, i: int) -> TargetEntry:
        return self.entries[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        content = self._load(entry, entry.content_image_path, entry.content_image_sha256, "content image")
        target = self._load(entry, entry.target_path, entry.target_sha256, "target")
        if content.shape != target.shape:
            raise StoreError(
                f"{entry.key}: content image {tuple(content.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if self.size is not None:
            # One call on the stacked pair: both get exactly the same resize.
            content, target = resize_image(torch.stack([content, target]), long_side=self.size).unbind(0)
        return {"content": content, "target": target, "key": entry.key}

    def _load(self, entry: TargetEntry, path: Path, sha256: str, what: str) -> torch.Tensor:
        """One of ``entry``'s images; with ``verify``, checked against its recorded SHA-256 on the first read."""
        fix = f"run generate_targets.py --verify --out {self.store.root} to list and fix the store's bad files"
        try:
            if self.verify and sha256 and path not in self._verified:
                try:
                    actual = sha256_file(path)
                except OSError:
                    actual = None  # missing or unreadable: load_image says which
                if actual is not None and actual != sha256:
                    raise StoreError(
                        f"{path}: {what} of {entry.key} differs from the store's manifest (sha256 {actual[:12]}..., "
                        f"recorded {sha256[:12]}...): changed or damaged after it was generated; {fix}"
                    )
                if actual is not None:
                    self._verified.add(path)
            return load_image(path)
        except BadImageError as error:
            if not self.verify:
                raise
            raise StoreError(f"{what} of {entry.key}: {error}; {fix}") from None


def split_value(content_hash: str) -> float:
    """The content's position in [0, 1) for the held-out split (see :class:`TargetPairs`)."""
    return int(hashlib.sha256(content_hash.encode("ascii")).hexdigest()[:8], 16) / 2**32


def heldout_keys(entries: Iterable[TargetEntry], heldout_fraction: float) -> set[str]:
    """Keys of the held-out entries (see :class:`TargetPairs`)."""
    entries = list(entries)
    keys = {e.key for e in entries if split_value(e.content_hash) < heldout_fraction}
    if not keys and len(entries) >= 2 and heldout_fraction > 0:
        keys = {min(entries, key=lambda e: (split_value(e.content_hash), e.content_hash)).key}
    return keys
