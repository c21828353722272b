"""Stylise images larger than memory allows, tile by tile, without visible seams.

A tile plan is a Cartesian grid: the same row spans for every column and the same
column spans for every row.  Each tile is run through the model with ``overlap`` px
shared with its neighbours, and the tile outputs are blended with separable windows:

* the outer ``overlap // 4`` px of a tile at an edge it shares with a neighbour get
  weight 0: they are *context* only (convolutions near a tile edge see reflection
  padding, not the real neighbouring pixels, so those outputs are the least reliable);
* the middle ``overlap - 2 * (overlap // 4)`` px ramp with a raised cosine
  (``0.5 - 0.5 cos``), which is C1-smooth, so no seam line is visible;
* at the image's own edges the weight stays 1 (the untiled model sees the same
  reflection padding there).

The 1-D windows are normalised by their sum over all spans, so the blended weights are
an exact partition of unity for any grid, also where the last tile overlaps more.

Tile starts are multiples of the model's total ``stride`` (4 for ``johnson``/``fast``,
32 for ``timm_encoder``): a strided network is shift-equivariant only for shifts that
are multiples of its stride, so unaligned tiles would resample a different grid.

What to expect (tested in ``tests/test_export.py``):

* A network with only local operations (finite receptive field, no global statistics)
  gives *the same output tiled and untiled* (to float rounding) when ``overlap // 4``
  is at least its receptive-field radius, and the same output away from tile borders
  for any overlap.
* The students use **instance normalisation**, which normalises every feature map by
  its mean and variance over the *whole input*.  A tile is normalised with the tile's
  statistics, so tiled output differs from whole-image output everywhere (not only at
  borders), by an amount that grows with how much a tile's content differs from the
  whole image (a tile of plain sky vs a busy whole photo).  Larger tiles give
  statistics closer to the whole image's; the blending keeps the transition between
  tiles smooth, so the difference shows as slow, low-contrast variations rather than
  seams.  Measured on a random-weight ``fast`` student, 96 px tiles with 32 px
  overlap on a 160x224 photo-like image: see the test for the bound used.

Memory: only one tile's activations exist at a time; the input and the float32
output accumulator are whole-image tensors (3 x H x W x 4 bytes each, ~480 MB at
40 MP), which is the "read once, write once" price.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Images with more pixels than this are tiled automatically when no tile size is given
#: (2048 x 2048): whole-image activations of the Johnson student at this size are ~2 GB.
DEFAULT_PIXEL_BUDGET = 2048 * 2048
#: Tile side and overlap used by automatic tiling.  Large tiles keep instance-norm
#: statistics close to the whole image's; 256 px overlap = 64 px context + 128 px ramp.
DEFAULT_TILE = 2048
DEFAULT_OVERLAP = 256


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an image of ``height`` x ``width`` lie.

    ``rows`` and ``cols`` are half-open spans ``(start, end)``; tile ``(i, j)`` is
    ``image[..., rows[i][0]:rows[i][1], cols[j][0]:cols[j][1]]``.
    """

    height: int
    width: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    overlap: int

    @property
    def num_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def max_tile_pixels(self) -> int:
        """Pixels of the largest tile (the model's largest input)."""
        return max(b - a for a, b in self.rows) * max(b - a for a, b in self.cols)


def axis_spans(length: int, *, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into spans of about ``tile`` px overlapping by >= ``overlap``.

    Every start is a multiple of ``align``.  Spans are ``tile`` long except the last,
    which ends at ``length`` and is ``tile`` to ``tile + align - 1`` long (its start is
    rounded down to ``align``), so no tile is ever a thin sliver.  The starts are
    spread evenly, so neighbours overlap by about the same amount (>= ``overlap``).

    Args:
        length: image side in px (>= 1).
        tile: span length, a multiple of ``align`` (>= ``align``).
        overlap: minimum overlap between neighbouring spans, ``0 <= overlap <= tile // 2``.
        align: alignment of every start (the model's total stride).

    Returns:
        Sorted spans covering ``[0, length)``; a single ``(0, length)`` if it fits.
    """
    if align < 1 or tile < align or tile % align:
        raise ValueError(f"tile ({tile}) must be a positive multiple of the alignment ({align})")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap ({overlap}) must be between 0 and half the tile ({tile // 2})")
    last_start = max(0, (length - tile) // align * align)
    if last_start == 0:
        return [(0, length)]
    # Spread the starts evenly (in units of ``align``) between 0 and the last start,
    # with steps of at most ``tile - overlap`` so every neighbour overlaps enough; even
    # spreading avoids a nearly redundant extra tile just before the last one.
    units = last_start // align
    max_step = max(1, (tile - overlap) // align)
    gaps = -(-units // max_step)  # ceil
    starts = [(index * units // gaps) * align for index in range(gaps + 1)]
    # The last span ends at ``length`` (tile to tile + align - 1 px long).
    return [(start, start + tile) for start in starts[:-1]] + [(last_start, length)]


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, align: int = 1) -> TilePlan:
    """The tile grid for an image of ``height`` x ``width`` (see :func:`axis_spans`)."""
    tile = tile // align * align
    return TilePlan(
        height=height,
        width=width,
        rows=tuple(axis_spans(height, tile=tile, overlap=overlap, align=align)),
        cols=tuple(axis_spans(width, tile=tile, overlap=overlap, align=align)),
        overlap=overlap,
    )


def _edge_ramp(overlap: int) -> torch.Tensor:
    """Rising weights over a shared edge band of ``overlap`` px (first px at the tile edge).

    ``overlap // 4`` zeros (context), then a raised cosine sampled at pixel centres,
    then ones.  The ramp of the neighbour is this reversed, and the two sum to 1 on the
    band because ``w(t) + w(1 - t) = 1`` for the raised cosine.
    """
    context = overlap // 4
    ramp_length = overlap - 2 * context
    t = (torch.arange(ramp_length, dtype=torch.float64) + 0.5) / ramp_length
    ramp = 0.5 - 0.5 * torch.cos(math.pi * t)
    return torch.cat(
        [torch.zeros(context, dtype=torch.float64), ramp, torch.ones(context, dtype=torch.float64)]
    )


def axis_windows(spans: list[tuple[int, int]] | tuple[tuple[int, int], ...], length: int, *, overlap: int) -> list[torch.Tensor]:
    """Normalised 1-D blending windows, one float32 tensor of ``end - start`` values per span.

    Their sum over all spans is 1 at every position of ``[0, length)`` (partition of unity).
    """
    rising = _edge_ramp(overlap)
    windows = []
    total = torch.zeros(length, dtype=torch.float64)
    for start, end in spans:
        window = torch.ones(end - start, dtype=torch.float64)
        if start > 0 and overlap > 0:  # shared edge with the previous span
            window[:overlap] *= rising
        if end < length and overlap > 0:  # shared edge with the next span
            window[-overlap:] *= rising.flip(0)
        total[start:end] += window
        windows.append(window)
    if not bool((total > 0).all()):  # cannot happen with spans from axis_spans
        raise AssertionError("tile windows leave pixels with zero weight")
    return [(window / total[start:end]).float() for window, (start, end) in zip(windows, spans)]


def stylize_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    align: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``model`` over ``image`` tile by tile and blend the tiles seamlessly.

    Args:
        model: maps (1, 3, h, w) float in [0, 1] to (1, 3, h, w) in [0, 1] for any tile
            size it is given (students, or the models of :mod:`distill.deploy.model_files`).
        image: (3, H, W) or (1, 3, H, W) float in [0, 1], on the CPU (the whole image
            stays in host memory; each tile is moved to the model's device by ``model``).
        tile: tile side in px, rounded down to a multiple of ``align``.
        overlap: px shared by neighbouring tiles (``overlap // 4`` context on each side,
            the rest blended), at most ``tile // 2``.
        align: the model's total stride; tile starts are multiples of it.
        progress: called as ``progress(done_tiles, total_tiles)`` after each tile.

    Returns:
        (3, H, W) float32 on the CPU (same rank as ``image``: (1, 3, H, W) for a batch of one).
    """
    batched = image.dim() == 4
    if batched and image.shape[0] != 1:
        raise ValueError(f"stylize_tiled takes one image, got a batch of {image.shape[0]}")
    source = image[0] if batched else image
    if source.dim() != 3 or source.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    height, width = source.shape[-2:]
    plan = plan_tiles(height, width, tile=tile, overlap=overlap, align=align)
    row_windows = axis_windows(plan.rows, height, overlap=overlap)
    col_windows = axis_windows(plan.cols, width, overlap=overlap)

    output = torch.zeros(3, height, width, dtype=torch.float32)
    done = 0
    for (top, bottom), row_window in zip(plan.rows, row_windows):
        for (left, right), col_window in zip(plan.cols, col_windows):
            # .contiguous(): a strided view would make some backends copy anyway.
            crop = source[:, top:bottom, left:right].unsqueeze(0).contiguous()
            with torch.inference_mode():
                result = model(crop)[0].to(device="cpu", dtype=torch.float32)
            weight = row_window[:, None] * col_window[None, :]
            output[:, top:bottom, left:right].addcmul_(result, weight)
            del crop, result  # keep at most one tile's tensors alive
            done += 1
            if progress is not None:
                progress(done, plan.num_tiles)
    # Rounding can leave the blend a hair outside [0, 1].
    output.clamp_(0.0, 1.0)
    return output.unsqueeze(0) if batched else output
