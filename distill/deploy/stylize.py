"""Stylise image files and folders with a loaded student, tiling images above a pixel budget."""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.core.devices import format_bytes, memory_capacity
from distill.core.errors import BadImageError, ConfigError
from distill.core.imageio import DEFAULT_MAX_PIXELS, image_size, list_images, load_image, output_format, save_image
from distill.core.outputs import same_file
from distill.deploy.model_files import StyleModel
from distill.deploy.tiling import DEFAULT_OVERLAP, DEFAULT_PIXEL_BUDGET, DEFAULT_TILE, plan_tiles, stylize_tiled

ProgressCallback = Callable[[int, int], None]

#: Memory a student needs per pixel of one model call (inference, float32), by student name.
#: Measured on the CPU at 512-1024 px: fast 0.36-0.41 kB, johnson 1.1-1.2 kB. Others get the
#: lowest figure, so that only calls that cannot fit are refused.
STUDENT_BYTES_PER_PIXEL = {"fast": 360, "johnson": 1100}
DEFAULT_BYTES_PER_PIXEL = min(STUDENT_BYTES_PER_PIXEL.values())
#: Host memory per pixel of a whole image while it is stylised: the float32 input and
#: result (tiles are blended into a float32 canvas) and the 8-bit copy that is encoded.
IMAGE_BYTES_PER_PIXEL = 3 * 4 * 2 + 3


class StylizeInputError(ConfigError):
    """Bad arguments to :func:`stylize_path` (tile/overlap/batch size, output kind)."""


@dataclass
class StylizeSummary:
    """What one :func:`stylize_path` call did."""

    written: list[Path] = field(default_factory=list)
    skipped_existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)
    tiled: int = 0  # images that were stylised in tiles
    seconds: float = 0.0


def output_paths(input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input image, output image) pairs for a file or a folder.

    A file maps to ``output`` itself when that has a suffix (which picks the format:
    .png, .jpg, .webp, .tif, .bmp), else (or when ``output`` is a folder) to
    ``output/<stem>.png``.  A folder's images (recursively) map to the same relative
    paths under ``output`` with a ``.png`` suffix; names that would collide
    (``a.jpg`` and ``a.png``) keep their original suffix too (``a.jpg.png``).  Files
    inside ``output`` are not inputs, so rerunning with the output inside the input
    folder does not stylise earlier results.
    """
    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    if input_path.is_file():
        target = output if output.suffix and not output.is_dir() else output / f"{input_path.stem}.png"
        try:
            output_format(target)  # an unsupported suffix fails now, not after the work
        except ConfigError as error:
            raise StylizeInputError(str(error)) from None
        if same_file(target, input_path):
            raise StylizeInputError(
                f"{target}: is the input image itself; choose another --output (inputs are never overwritten)"
            )
        return [(input_path, target)]
    if output.exists() and not output.is_dir():
        raise StylizeInputError(f"{output}: the input is a folder, so the output must be a folder too")
    if same_file(output, input_path):
        raise StylizeInputError(
            f"{output}: is the input folder; choose another --output folder (inputs are never overwritten)"
        )
    resolved_output = output.resolve()
    images = [
        path for path in list_images(input_path)
        if not path.resolve().is_relative_to(resolved_output)
    ]
    relative = [path.relative_to(input_path) for path in images]
    counts: dict[Path, int] = {}
    for rel in relative:
        counts[rel.with_suffix(".png")] = counts.get(rel.with_suffix(".png"), 0) + 1
    pairs = []
    for path, rel in zip(images, relative):
        target = rel.with_suffix(".png")
        if counts[target] > 1:
            target = rel.with_name(rel.name + ".png")
        pairs.append((path, output / target))
    return pairs


def stylize_path(
    model: StyleModel,
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 1,
    tile: int | None = None,
    overlap: int | None = None,
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
    skip_existing: bool = False,
    progress: ProgressCallback | None = None,
    tile_progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> StylizeSummary:
    """Stylise one image or a folder of images (recursively) with ``model``.

    Every image keeps its size (EXIF orientation applied by :func:`load_image`).
    Images of equal size are batched up to ``batch_size``.  An image is tiled when
    ``tile`` is given, or automatically when it has more than ``pixel_budget`` pixels
    (``DEFAULT_TILE`` px tiles, ``DEFAULT_OVERLAP`` px overlap); see :mod:`distill.deploy.tiling`.

    Args:
        model: from :func:`distill.deploy.model_files.load_model`.
        input_path: an image file or a folder.
        output: output file or folder (see :func:`output_paths`).
        batch_size: images per model call (same-size images only).
        tile, overlap: force tiling with this tile side / overlap in px.
        pixel_budget: automatic tiling above this many pixels per image.
        skip_existing: leave outputs that already exist alone.
        progress: ``progress(done_images, total_images)`` after each image.
        tile_progress: ``tile_progress(done_tiles, total_tiles)`` inside a tiled image.
        log: receives one line per unreadable image (default: nothing; they are in
            the summary either way).

    Returns:
        A :class:`StylizeSummary`.  Unreadable images are skipped and listed in
        ``failed``; a single unreadable input file raises :class:`BadImageError`.
    """
    _check_settings(model, batch_size=batch_size, tile=tile, overlap=overlap)
    started = time.perf_counter()
    input_path = Path(input_path)
    single = input_path.is_file()
    summary = StylizeSummary()
    todo = []
    for source, target in output_paths(input_path, Path(output)):
        if skip_existing and target.exists():
            summary.skipped_existing.append(target)
        else:
            todo.append((source, target))
    check_memory(model, [source for source, _ in todo], batch_size=batch_size, tile=tile, pixel_budget=pixel_budget)
    run = _Run(model, summary, batch_size=batch_size, total=len(todo), progress=progress, log=log)
    for source, target in todo:
        try:
            image = _read_input(source, min_side=model.min_side)
        except BadImageError as error:
            if single:
                raise
            run.skip(source, error)
            continue
        if tile is None and image.shape[-2] * image.shape[-1] <= pixel_budget:
            run.add(target, image)
            continue
        run.flush()
        tile_side = tile or DEFAULT_TILE
        result = stylize_tiled(
            model,
            image,
            tile=tile_side,
            overlap=min(DEFAULT_OVERLAP, tile_side // 4) if overlap is None else overlap,
            align=model.stride,
            progress=tile_progress,
        )
        del image  # the input is no longer needed while the output is encoded
        run.write(target, result, tiled=True)
    run.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_settings(model: StyleModel, *, batch_size: int, tile: int | None, overlap: int | None) -> None:
    if batch_size < 1:
        raise StylizeInputError(f"batch size must be >= 1, got {batch_size}")
    if tile is not None and tile // model.stride * model.stride < max(model.min_side, model.stride):
        raise StylizeInputError(
            f"tile ({tile}, rounded down to a multiple of the model's stride {model.stride}) must be at least "
            f"the model's minimum side ({max(model.min_side, model.stride)} px)"
        )
    if overlap is not None and tile is None:
        raise StylizeInputError("an overlap needs a tile size")
    if tile is not None and overlap is not None:
        aligned = tile // model.stride * model.stride
        if not 0 <= overlap <= aligned // 2:
            raise StylizeInputError(
                f"overlap ({overlap}) must be between 0 and half the tile ({aligned // 2}; "
                f"the tile is rounded down to a multiple of the model's stride, {model.stride})"
            )


def check_memory(
    model: StyleModel, sources: list[Path], *, batch_size: int = 1, tile: int | None = None,
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
) -> None:
    """:class:`StylizeInputError` for the first image that cannot be stylised in memory as planned.

    Reads only the images' headers. A model call takes a whole image (with up to
    ``batch_size - 1`` others of its size) when it is at most ``pixel_budget`` pixels and
    no ``tile`` is given, else one tile; the whole image and its result stay in host
    memory either way. Unreadable images are left to the run, which reports them.
    """
    sizes: dict[Path, tuple[int, int]] = {}
    for source in sources:
        with contextlib.suppress(BadImageError):  # unreadable: the run reports it
            sizes[source] = image_size(source)
    same_size = collections.Counter(sizes.values())
    for source, (height, width) in sizes.items():
        if height * width > DEFAULT_MAX_PIXELS:
            continue  # refused when read (decompression-bomb guard), with its own reason
        whole = tile is None and height * width <= pixel_budget
        problem = _memory_problem(model, height, width, together=min(batch_size, same_size[height, width]) if whole else 1,
                                  tile=None if whole else tile or DEFAULT_TILE)
        if problem is not None:
            raise StylizeInputError(f"{source}: {problem}")


def _memory_problem(model: StyleModel, height: int, width: int, *, together: int, tile: int | None) -> str | None:
    """Why stylising one image (whole, ``together`` per call, or in tiles of ``tile`` px) cannot fit in memory, or ``None``."""
    per_pixel = STUDENT_BYTES_PER_PIXEL.get(model.metadata.get("student", {}).get("name"), DEFAULT_BYTES_PER_PIXEL)
    if model.dtype != "fp32":
        per_pixel //= 2
    if tile is None:
        call = height * width * together * per_pixel
        advice = "pass --tile 1024 to stylise in tiles" + (" or a smaller --batch-size" if together > 1 else " (or lower --pixel-budget)")
    else:
        call = plan_tiles(height, width, tile=tile, overlap=0, align=model.stride).max_tile_pixels * per_pixel
        advice = "use a smaller --tile"
    image = height * width * IMAGE_BYTES_PER_PIXEL
    host_capacity = memory_capacity("cpu")
    if host_capacity is not None and image > host_capacity:
        needed, capacity, where, advice = image, host_capacity, "cpu", "it is too large for this machine even in tiles"
    elif model.device.type == "cpu":
        needed, capacity, where = call + image, host_capacity, "cpu"
    else:
        needed, capacity, where = call, memory_capacity(model.device), model.device.type
    if capacity is None or needed <= capacity:
        return None
    how = "in one piece" if tile is None else f"in tiles of {tile} px"
    how += f", {together} images per call (--batch-size)" if together > 1 else ""
    return (
        f"stylising {width}x{height} px {how} needs about {format_bytes(needed)}, more than the "
        f"{format_bytes(capacity)} of memory on {where}; {advice}"
    )


def _read_input(source: Path, *, min_side: int) -> torch.Tensor:
    """The image (3, H, W); :class:`BadImageError` if unreadable or smaller than the model's minimum side."""
    image = load_image(source)
    height, width = image.shape[-2:]
    if min(height, width) < min_side:
        raise BadImageError(f"{source}: {width}x{height} is smaller than the model's minimum side ({min_side} px)")
    return image


class _Run:
    """The images of one :func:`stylize_path` call that are done, and those of one size waiting to share a model call."""

    def __init__(
        self,
        model: StyleModel,
        summary: StylizeSummary,
        *,
        batch_size: int,
        total: int,
        progress: ProgressCallback | None,
        log: Callable[[str], None] | None,
    ) -> None:
        self.model, self.summary, self.batch_size = model, summary, batch_size
        self.total, self.progress, self.log = total, progress, log
        self.done = 0
        self.pending: list[tuple[Path, torch.Tensor]] = []

    def add(self, target: Path, image: torch.Tensor) -> None:
        """Queue ``image`` (3, H, W); a full batch, or one of another size, runs first."""
        if self.pending and (self.pending[0][1].shape != image.shape or len(self.pending) >= self.batch_size):
            self.flush()
        self.pending.append((target, image))

    def flush(self) -> None:
        """Stylise and write the queued images."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        results = self.model(torch.stack([image for _, image in batch]))
        for (target, _), result in zip(batch, results):
            save_image(result, target)
            self.summary.written.append(target)
        self._finish(len(batch))

    def write(self, target: Path, result: torch.Tensor, *, tiled: bool) -> None:
        save_image(result, target)
        self.summary.written.append(target)
        self.summary.tiled += int(tiled)
        self._finish(1)

    def skip(self, source: Path, error: BadImageError) -> None:
        self.summary.failed.append((source, str(error)))
        if self.log is not None:
            self.log(f"skipped {error}")
        self._finish(1)

    def _finish(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)
