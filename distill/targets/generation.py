"""Fill a :class:`distill.targets.store.TargetStore` with Gatys teacher targets.

:func:`generate_targets` is resumable (finished targets are never recomputed, whatever
killed the previous run), shardable (``shard=(i, n)`` takes the contents whose hash is
``i`` modulo ``n``, a disjoint subset that does not depend on listing order) and batched
(contents of the same size at the teacher's resolution share one ``stylize`` call).
Several processes may fill the same store at once: each appends to its own manifest, and
an advisory lock per target keeps overlapping runs from computing the same target twice.

It prints nothing: lines for a user go to ``log`` and progress to ``progress``, both
silent by default (the command line draws them on the console).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import BadImageError, ConfigError, DeviceError, one_line
from distill.core.devices import resolve_device
from distill.core.files import sha256_file, write_text_atomic
from distill.core.imageio import IMAGE_SUFFIXES, list_images, load_image, quantize_8bit, resize_image, save_image
from distill.core.masks import MaskError, check_mask_options, fit_mask, load_mask
from distill.objective.criterion import StyleCriterion, build_criterion
from distill.objective.lossnet import LossNetwork, weights_file
from distill.targets.content_masks import ContentMaskError, ContentMasks
from distill.targets.locks import KeyLocks
from distill.targets.manifest import RECORD_VERSION, ManifestReader, ManifestWriter
from distill.targets.store import TargetStore, describe_config, entry_key
# The module, not its function: the teacher is called as gatys.stylize, which tests replace.
from teachers import gatys
from teachers.gatys import TeacherConfig

#: Contents with a side shorter than this (as given, or at the teacher's size) are skipped:
#: the teacher's own minimum (see :data:`teachers.gatys.MIN_SIDE`).
MIN_SIDE = gatys.MIN_SIDE
#: Temporary files older than this are leftovers of killed writers (a live writer's exist
#: for the milliseconds of one PNG write) and are removed on start.
STALE_TEMP_SECONDS = 600
#: At most this many loaded contents (times the batch size) wait for a same-size batch.
_MAX_WAITING_BATCHES = 4


class GenerationInputError(ConfigError):
    """Bad command-line input found before any work: style, content folder, shard, device."""


@dataclass
class GenerationSummary:
    """What one :func:`generate_targets` call did."""

    store_root: str
    config_hash: str
    config: str  # one-line description of the teacher config
    shard: tuple[int, int]
    files: int = 0  # image files found under the content folder (after ``limit``)
    in_shard: int = 0  # distinct contents assigned to this shard
    duplicates: int = 0  # files of this shard with the same bytes as another one
    new: int = 0  # targets computed by this call
    present: int = 0  # already finished before (or by another writer during) this call
    busy: int = 0  # being computed by another live writer; left to it
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) skipped: unreadable or too small
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) the teacher failed on
    seconds: float = 0.0  # wall time of the whole call
    teacher_seconds: float = 0.0  # wall time spent inside the teacher
    started: float = 0.0  # unix time when the generation loop started (for combining shards)
    finished: float = 0.0  # unix time when it ended
    weights: str = ""  # loss-network weights description
    random_weights: bool = False
    device: str = "cpu"
    batch_size: int = 1

    @property
    def skipped(self) -> int:
        return len(self.bad)

    @property
    def targets_per_second(self) -> float:
        loop = self.finished - self.started
        return self.new / loop if loop > 0 and self.new else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets_per_second"] = self.targets_per_second
        return data

    def lines(self) -> list[str]:
        """The end-of-run summary, one fact per line."""
        i, n = self.shard
        out = [
            f"summary: store {self.store_root}, config {self.config_hash[:16]} ({self.config}), shard {i}/{n}",
            f"  new targets:        {self.new}"
            + (f" ({self.targets_per_second:.3g} targets/s, teacher {self.teacher_seconds:.1f} s)" if self.new else ""),
            f"  already present:    {self.present}",
            f"  skipped bad files:  {self.skipped}" + (" (listed above)" if self.skipped else ""),
            f"  teacher failures:   {len(self.failed)}" + (" (listed above)" if self.failed else ""),
        ]
        if self.busy:
            out.append(f"  left to another running writer: {self.busy}")
        if self.duplicates:
            out.append(f"  duplicate files:    {self.duplicates} (same bytes as another file; one target each)")
        out.append(f"  files found: {self.files}, in this shard: {self.in_shard}")
        out.append(f"  time: {self.seconds:.1f} s on {self.device}, batch size {self.batch_size}")
        out.append(f"  loss-network weights: {self.weights}")
        if self.random_weights:
            out.append(
                "  !!! RANDOM LOSS-NETWORK WEIGHTS: these targets come from a seeded random texture network, "
                "not learned VGG-19 features; use --weights pretrained (or a weights file) for those."
            )
        return out


@dataclass(frozen=True)
class GenerationProgress:
    """One progress report of :func:`generate_targets`, for a console bar.

    ``stage``: ``"hashing"`` (``done`` of ``total`` content files read and hashed),
    ``"targets"`` (pending contents dealt with: computed, already present, skipped, failed
    or left to another writer) or ``"teacher"`` (objective evaluations of the running
    batch, so that a batch of several minutes shows movement). ``new``, ``skipped``,
    ``failed`` and ``busy`` are the running counts of :class:`GenerationSummary`.
    """

    stage: str
    done: int
    total: int
    new: int = 0
    skipped: int = 0
    failed: int = 0
    busy: int = 0


#: Receives :class:`GenerationProgress` reports.
ProgressCallback = Callable[[GenerationProgress], None]


@dataclass
class _Content:
    path: Path
    display: str  # the path as given, for messages and the manifest
    content_hash: str = ""  # of the file; with masks, of the file and its mask (ContentMasks.content_key)
    size_bytes: int = 0
    error: str = ""  # set when the file could not even be hashed
    mask_path: Path | None = None  # its semantic mask, when the run has masks
    mask: torch.Tensor | None = None  # that mask at the teacher's size, once loaded


class _Skip(Exception):
    """A content file that is skipped with a one-line reason."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise GenerationInputError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise GenerationInputError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_from_env(environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or ``None`` when absent."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return parse_shard(f"{environ['RANK']}/{environ['WORLD_SIZE']}")
    return None


def shard_of(key: str, count: int) -> int:
    """The shard of a content hash (hex) among ``count``; stable across machines and listing orders."""
    return int(key[:16], 16) % count


def generate_targets(
    *,
    content_dir: str | os.PathLike,
    style_paths: Sequence[str | os.PathLike],
    store_root: str | os.PathLike,
    teacher_config: TeacherConfig,
    batch_size: int = 1,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    limit: int | None = None,
    network: LossNetwork | None = None,
    teacher: gatys.Teacher | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    content_mask_dir: str | os.PathLike | None = None,
    style_mask_path: str | os.PathLike | None = None,
) -> GenerationSummary:
    """Compute the missing teacher targets of this shard's contents and record them in the store.

    ``content_dir`` is walked recursively for image files. Unreadable, empty, corrupt or
    tiny files are skipped with one logged line each. Raises
    :class:`GenerationInputError` (bad style, missing or empty content folder, bad shard,
    unavailable device) and :class:`distill.core.errors.StoreError` before doing any work.
    ``network``: a loss network built for ``teacher_config.criterion`` to reuse (e.g. one
    per style in one process); built here otherwise. ``teacher``: what runs the
    optimisation (default :func:`teachers.gatys.stylize`; on the CPU a batch matches
    single images exactly only with oneDNN off, see there). ``log`` receives the
    per-file lines and warnings, ``progress`` :class:`GenerationProgress` reports; both
    default to silence. ``content_mask_dir`` and ``style_mask_path`` (both or neither):
    semantic masks (:mod:`distill.targets.content_masks`); a content without a mask is
    skipped with a logged line.
    """
    started = time.perf_counter()
    log = log or _silent
    teacher_config = teacher_config.resolved()  # the store records what ran, not "auto"
    device, style_paths, files = _checked_inputs(
        teacher_config, content_dir, style_paths, store_root, batch_size=batch_size, shard=shard, device=device, limit=limit
    )
    masks = _check_masks(content_dir, content_mask_dir, style_mask_path, style_paths)
    store, config_hash = TargetStore.open_or_create(
        store_root, teacher_config=teacher_config, style_paths=style_paths,
        style_mask_path=None if masks is None else Path(style_mask_path),
    )
    summary = _new_summary(store, config_hash, teacher_config, shard=shard, files=len(files), device=device,
                           batch_size=batch_size)
    if summary.random_weights:
        log(
            "WARNING: the loss network has RANDOM weights (--weights random): a seeded random texture network "
            "stylises, but not as learned VGG-19 features would."
        )
    _remove_stale_temp_files(store, config_hash)

    items = _distinct_contents(_pair_masks(_hash_contents(files, progress), masks), shard, summary, log)
    reader = ManifestReader(store.manifest_dir(config_hash))
    finished = _finished_contents(store, reader)
    pending = [item for item in items if item.content_hash not in finished]
    summary.present = len(items) - len(pending)
    shard_index, shard_count = shard
    log(
        f"store {store.root}: config {config_hash[:16]} ({summary.config}); shard {shard_index}/{shard_count}: "
        f"{len(items)} contents, {summary.present} already present, {len(pending)} to compute"
    )

    summary.started = time.time()
    if pending:
        writer = ManifestWriter(
            store.manifest_dir(config_hash), writer_name=f"{shard_index}of{shard_count}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        run = _Run(store, config_hash, teacher_config, summary=summary, reader=reader, finished=finished, writer=writer,
                   device=device, batch_size=batch_size, network=network, teacher=teacher, log=log, progress=progress,
                   masks=masks)
        try:
            run.process(pending)
        finally:
            run.close()
    summary.finished = time.time()
    summary.seconds = time.perf_counter() - started
    return summary


def _new_summary(
    store: TargetStore, config_hash: str, config: TeacherConfig, *, shard: tuple[int, int], files: int, device: str,
    batch_size: int,
) -> GenerationSummary:
    weights = config.criterion.weights
    return GenerationSummary(
        store_root=str(store.root), config_hash=config_hash, config=describe_config(config), shard=(shard[0], shard[1]),
        files=files, weights=weights, random_weights=weights == "random", device=device, batch_size=batch_size,
    )


def time_teacher(
    criterion: StyleCriterion, content: torch.Tensor, teacher_config: TeacherConfig, *, iterations: int = 3
) -> dict[str, float]:
    """Time a short teacher run (``iterations`` L-BFGS iterations at full size) on ``content`` (1, 3, H, W).

    Returns {"seconds", "iterations", "seconds_per_iteration"}. The fidelity report uses
    it when the store's timings were measured on another device type.
    """
    # The start does not change the cost of an iteration; "content" needs no style image.
    config = dataclasses.replace(teacher_config, iterations=max(1, iterations), scales=(1.0,), init="content")
    result = gatys.stylize(criterion, content, config=config)
    spent = max(1, result.iterations_run[0])
    return {"seconds": result.seconds, "iterations": spent, "seconds_per_iteration": result.seconds / spent}


def teacher_on_mirrored(
    criterion: StyleCriterion, content: torch.Tensor, teacher_config: TeacherConfig, *, style_image: torch.Tensor | None = None
) -> torch.Tensor:
    """The teacher's result on ``content`` (1, 3, H, W) mirrored left-right, mirrored back.

    The same photo, the same objective and settings: how far this result is from the
    stored target measures how reproducible the teacher is. A random-weight teacher's
    texture is chaotic (float rounding alone moves it): measured on six held-out photos,
    this agreement was SSIM 0.21-0.63, and students trained on such targets reach about
    as much, by learning the texture's average. Rounded to 8 bits like a stored target.
    """
    result = gatys.stylize(criterion, content.flip(-1), config=teacher_config, style_image=style_image)
    return quantize_8bit(result.images.flip(-1))


def _silent(message: str) -> None:
    """The default ``log``: the library prints nothing."""


def _checked_inputs(
    config: TeacherConfig,
    content_dir: str | os.PathLike,
    style_paths: Sequence[str | os.PathLike],
    store_root: str | os.PathLike,
    *,
    batch_size: int,
    shard: tuple[int, int],
    device: str,
    limit: int | None,
) -> tuple[str, list[Path], list[Path]]:
    """Every check before any work: (device, style files, content files), or :class:`GenerationInputError`."""
    device = _check_run_settings(config, batch_size=batch_size, shard=shard, device=device, limit=limit)
    style_paths, style_sizes = _check_styles(style_paths, config)
    files = _content_files(content_dir, store_root, limit=limit)
    # Contents differ in shape: the largest result is a square of --size, in batches of at most the file count.
    try:
        gatys.check_memory(config, (config.size, config.size), device=device, batch=min(batch_size, len(files)),
                           styles=style_sizes, what="result (a square content)")
    except gatys.TeacherInputError as exc:
        raise GenerationInputError(str(exc)) from None
    return device, style_paths, files


def _check_run_settings(
    config: TeacherConfig, *, batch_size: int, shard: tuple[int, int], device: str, limit: int | None
) -> str:
    """Refuse bad settings before any file is read; returns the device to run on (as recorded in the manifest)."""
    if batch_size < 1:
        raise GenerationInputError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise GenerationInputError(f"--limit must be at least 1 (the number of content files to use), got {limit}")
    shard_index, shard_count = shard
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise GenerationInputError(f"shard {shard_index}/{shard_count}: need 0 <= i < n")
    if config.size < MIN_SIDE:
        raise GenerationInputError(f"--size {config.size}: the teacher needs at least {MIN_SIDE} px")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise GenerationInputError(f"--device must be cpu, cuda or auto, got {device!r}")
    # Under torchrun each process takes its own GPU.
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    try:
        resolved = str(resolve_device(device, local_rank=local_rank))
    except DeviceError as exc:
        raise GenerationInputError(str(exc)) from None
    weights = config.criterion.weights
    path = weights_file(weights)
    if path is not None and not path.is_file():
        raise GenerationInputError(f"--weights {weights!r}: no such file; use pretrained, random or a weights file")
    return resolved


def _check_styles(
    style_paths: Sequence[str | os.PathLike], config: TeacherConfig
) -> tuple[list[Path], list[tuple[int, int]]]:
    """The style files as paths, and their (H, W); a bad style must stop the run before anything is read or written."""
    paths = [Path(p) for p in style_paths]
    if not paths:
        raise GenerationInputError("at least one --style image is needed")
    sizes = []
    for path in paths:
        try:
            sizes.append(tuple(load_image(path).shape[-2:]))
        except BadImageError as exc:
            raise GenerationInputError(f"style image {exc}") from None
    blend = config.criterion.style_blend
    if blend is not None and len(blend) != len(paths):
        raise GenerationInputError(f"{len(paths)} style image(s) but {len(blend)} --style-weights")
    return paths, sizes


def _content_files(content_dir: str | os.PathLike, store_root: str | os.PathLike, *, limit: int | None) -> list[Path]:
    try:
        files = list_images(content_dir)
    except FileNotFoundError:
        raise GenerationInputError(f"content folder {content_dir} does not exist") from None
    store_dir = Path(store_root).resolve()
    # A store inside the content folder must not feed its own PNGs back in as contents.
    files = [f for f in files if not f.resolve().is_relative_to(store_dir)]
    if not files:
        suffixes = " ".join(IMAGE_SUFFIXES)
        raise GenerationInputError(f"content folder {content_dir} has no image files ({suffixes})")
    return files if limit is None else files[: max(0, limit)]


def _distinct_contents(
    contents: list[_Content], shard: tuple[int, int], summary: GenerationSummary, log: Callable[[str], None]
) -> list[_Content]:
    """This shard's readable contents, one per distinct file content; counts the rest in ``summary``."""
    shard_index, shard_count = shard
    mine = [c for c in contents if shard_of(c.content_hash or _path_hash(c.display), shard_count) == shard_index]
    items: list[_Content] = []
    seen: set[str] = set()
    for item in mine:
        if item.error:
            summary.bad.append((item.display, item.error))
            log(f"skipped {item.display}: {item.error}")
        elif item.size_bytes == 0:
            # Every empty file has the same hash; report each one rather than as duplicates.
            summary.bad.append((item.display, "empty file"))
            log(f"skipped {item.display}: empty file")
        elif item.content_hash in seen:
            summary.duplicates += 1
        else:
            seen.add(item.content_hash)
            items.append(item)
    summary.in_shard = len(items) + len(summary.bad)
    return items


def _finished_contents(store: TargetStore, reader: ManifestReader) -> set[str]:
    """Content hashes with a manifest record and all their files.

    A recorded target whose files were deleted (e.g. after --verify found them corrupt) is redone.
    """
    return {
        r["content_hash"]
        for r in reader.read_new()
        if all((store.root / r[name]).is_file() for name in ("target", "content_image", "trace"))
    }


class _Run:
    """State of one generation loop: the criterion, the locks, the open manifest."""

    def __init__(
        self,
        store: TargetStore,
        config_hash: str,
        teacher_config: TeacherConfig,
        *,
        summary: GenerationSummary,
        reader: ManifestReader,
        finished: set[str],
        writer: ManifestWriter,
        device: str,
        batch_size: int,
        network: LossNetwork | None,
        teacher: gatys.Teacher | None,
        log: Callable[[str], None],
        progress: ProgressCallback | None,
        masks: ContentMasks | None = None,
    ) -> None:
        self.store = store
        self.masks = masks
        self.config_hash = config_hash
        self.config = teacher_config
        self.summary = summary
        self.reader = reader
        self.finished = finished
        self.writer = writer
        self.device = device
        self.batch_size = batch_size
        self.network = network
        self.teacher = teacher
        self.log = log
        self.progress = progress
        self.locks = KeyLocks(store.root / "locks" / config_hash)
        self.style_hashes = list(store.style_hashes(config_hash))
        self._criterion: StyleCriterion | None = None
        self._style_image: torch.Tensor | None = None
        self._style_mask: torch.Tensor | None = None
        self._done = 0
        self._total = 0

    def close(self) -> None:
        self.writer.close()
        self.locks.release_all()
        with contextlib.suppress(OSError):  # other writers' locks are still there
            (self.store.root / "locks").rmdir()

    @property
    def criterion(self) -> StyleCriterion:
        # Built lazily: a run whose contents all turn out bad or busy never loads the network.
        if self._criterion is None:
            config = self.config.criterion
            styles = self.store.style_images(self.config_hash)  # the store's copies: what readers will use
            self._style_mask = self.store.style_mask(self.config_hash)
            self._criterion = build_criterion(config, styles, device=self.device, network=self.network, style_mask=self._style_mask)
            self._style_image = styles[0].to(self.device)
            self.summary.weights = self._criterion.weights_description
            self.summary.random_weights = self._criterion.network.is_random
        return self._criterion

    def process(self, pending: list[_Content]) -> None:
        """Load each pending content, group equal sizes into batches, run the teacher on each batch."""
        waiting: dict[tuple[int, int], list[tuple[_Content, torch.Tensor]]] = {}
        self._total = len(pending)
        self._advance(0)
        for item in pending:
            try:
                image = self._content_tensor(item)
            except _Skip as exc:
                self.summary.bad.append((item.display, str(exc)))
                self.log(f"skipped {item.display}: {exc}")
                self._advance(1)
                continue
            shape = tuple(image.shape[-2:])
            waiting.setdefault(shape, []).append((item, image))
            if len(waiting[shape]) >= self.batch_size:
                self._run_batch(waiting.pop(shape))
            elif sum(len(group) for group in waiting.values()) >= _MAX_WAITING_BATCHES * self.batch_size:
                # Many distinct sizes: run the fullest group now rather than hold every image in memory.
                self._run_batch(waiting.pop(max(waiting, key=lambda s: len(waiting[s]))))
        for shape in list(waiting):
            self._run_batch(waiting.pop(shape))

    def _content_tensor(self, item: _Content) -> torch.Tensor:
        """(3, H, W) at the teacher's size, quantised to 8 bits, also saved as the store's content copy.

        Quantising before the teacher sees it makes the lossless PNG copy exactly the
        tensor the teacher optimised from.
        """
        copy = self.store.content_file(item.content_hash, self.config.size)
        image = None
        if copy.is_file():
            with contextlib.suppress(BadImageError):
                image = load_image(copy)  # another config at this size already made it
        if image is None:
            image = self._new_content_copy(item, copy)
        if self.masks is not None:
            try:
                item.mask, messages = self.masks.teacher_mask(item.path, item.mask_path, tuple(image.shape[-2:]))
            except (MaskError, BadImageError) as exc:
                raise _Skip(str(exc)) from None
            for message in messages:
                self.log(f"warning: {item.display}: {message}")
        return image

    def _new_content_copy(self, item: _Content, copy: Path) -> torch.Tensor:
        try:
            image = load_image(item.path)
        except BadImageError as exc:
            raise _Skip(str(exc).removeprefix(f"{item.path}: ")) from None
        problem = gatys.content_size_problem(*image.shape[-2:], self.config.size)
        if problem is not None:
            raise _Skip(problem)
        image = quantize_8bit(resize_image(image, long_side=self.config.size))
        save_image(image, copy)
        return image

    def _run_batch(self, batch: list[tuple[_Content, torch.Tensor]]) -> None:
        mine = []
        for item, image in batch:
            if self.locks.acquire(item.content_hash):
                mine.append((item, image))
            else:
                self.summary.busy += 1
                self._advance(1)
        try:
            # Under the locks: a target another writer finished since we started is not redone.
            self._refresh_finished()
            todo = []
            for item, image in mine:
                if item.content_hash in self.finished:
                    self.summary.present += 1
                    self._advance(1)
                else:
                    todo.append((item, image))
            if todo:
                self._teach(todo)
        finally:
            for item, _ in mine:
                self.locks.release(item.content_hash)

    def _teach(self, batch: list[tuple[_Content, torch.Tensor]]) -> None:
        criterion = self.criterion
        content = torch.stack([image for _, image in batch]).to(self.device)
        masks = None if self.masks is None else torch.stack([item.mask for item, _ in batch]).to(self.device)
        teacher = self.teacher or gatys.stylize  # looked up now: tests replace gatys.stylize
        try:
            mask_arguments = {} if masks is None else {"content_masks": masks, "style_mask": self._style_mask}
            result = teacher(criterion, content, config=self.config, style_image=self._style_image, progress=self._iteration,
                             **mask_arguments)
        except Exception as exc:  # one bad image (or an OOM at this batch size) must not fail the others
            if len(batch) > 1:
                self.log(f"teacher failed on a batch of {len(batch)} ({type(exc).__name__}: {exc}); retrying one by one")
                for one in batch:
                    self._teach([one])
                return
            item = batch[0][0]
            reason = f"teacher failed ({type(exc).__name__}: {one_line(exc, first_line=True)})"
            self.summary.failed.append((item.display, reason))
            self.log(f"failed {item.display}: {reason}")
            self._advance(1)
            return
        self.summary.teacher_seconds += result.seconds
        per_image = result.seconds / len(batch)
        for index, (item, _) in enumerate(batch):
            final = result.final[index]
            if not all(math.isfinite(v) for v in final.values()) or not torch.isfinite(result.images[index]).all():
                reason = f"teacher diverged ({result.stop_reasons[index]})"
                self.summary.failed.append((item.display, reason))
                self.log(f"failed {item.display}: {reason}")
                self._advance(1)
                continue
            self._record(item, result, index, per_image, len(batch))
            self.summary.new += 1
            self._advance(1)

    def _record(self, item: _Content, result: gatys.TeacherResult, index: int, seconds: float, batch: int) -> None:
        """Target PNG and trace into place, then (and only then) the manifest line."""
        target = self.store.target_file(self.config_hash, item.content_hash)
        save_image(result.images[index], target)
        trace = self.store.trace_file(self.config_hash, item.content_hash)
        write_text_atomic(trace, json.dumps(result.traces[index], separators=(",", ":")))
        content_copy = self.store.content_file(item.content_hash, self.config.size)
        self.writer.append(
            {
                "v": RECORD_VERSION,
                "key": entry_key(self.config_hash, item.content_hash),
                "content_path": item.display,
                "content_hash": item.content_hash,
                "config_hash": self.config_hash,
                "style_hashes": self.style_hashes,
                "content_image": content_copy.relative_to(self.store.root).as_posix(),
                "content_image_sha256": sha256_file(content_copy),
                "target": target.relative_to(self.store.root).as_posix(),
                "target_sha256": sha256_file(target),
                "height": int(result.images.shape[-2]),
                "width": int(result.images.shape[-1]),
                "final": result.final[index],
                "trace": trace.relative_to(self.store.root).as_posix(),
                "iterations_run": result.iterations_run[index],
                "stop_reason": result.stop_reasons[index],
                "seconds": seconds,
                "batch_size": batch,
                "device": self.device,
                "weights": result.weights,
                "created": time.time(),
                "writer": self.writer.path.stem,
            }
        )
        self.finished.add(item.content_hash)

    def _refresh_finished(self) -> None:
        self.finished.update(record["content_hash"] for record in self.reader.read_new())

    def _advance(self, count: int) -> None:
        self._done += count
        self._report("targets", self._done, self._total)

    def _iteration(self, done: int, total: int) -> None:
        # Within a long batch the bar would otherwise look stalled for minutes.
        self._report("teacher", done, total)

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        summary = self.summary
        self.progress(GenerationProgress(
            stage, done, total, new=summary.new, skipped=summary.skipped, failed=len(summary.failed), busy=summary.busy
        ))


def _check_masks(
    content_dir: str | os.PathLike,
    content_mask_dir: str | os.PathLike | None,
    style_mask_path: str | os.PathLike | None,
    style_paths: Sequence[Path],
) -> ContentMasks | None:
    """The run's content masks, or ``None``; :class:`GenerationInputError` for half a pair or a bad style mask."""
    try:
        if not check_mask_options(content_mask_dir, style_mask_path, len(style_paths), content_option="--content-mask-dir"):
            return None
        style_mask = fit_mask(load_mask(style_mask_path), tuple(load_image(style_paths[0]).shape[-2:]),
                              what=f"style mask {style_mask_path}")
        return ContentMasks(content_dir, content_mask_dir, style_mask)
    except (MaskError, ContentMaskError) as exc:
        raise GenerationInputError(str(exc)) from None


def _pair_masks(contents: list[_Content], masks: ContentMasks | None) -> list[_Content]:
    """With masks: each content's mask file, and its key made from both files; no mask is an error for that content."""
    if masks is None:
        return contents
    for item in contents:
        if item.error or not item.size_bytes:
            continue
        item.mask_path = masks.mask_file(item.path)
        if item.mask_path is None:
            item.error = f"no mask of the same name in {masks.mask_dir}"
        else:
            item.content_hash = masks.content_key(item.content_hash, item.mask_path)
    return contents


def _hash_contents(files: list[Path], progress: ProgressCallback | None) -> list[_Content]:
    contents = []
    for done, path in enumerate(files, start=1):
        item = _Content(path=path, display=str(path))
        try:
            item.size_bytes = path.stat().st_size
            item.content_hash = sha256_file(path)
        except OSError as exc:
            item.error = f"unreadable ({exc.strerror or exc})"
        contents.append(item)
        if progress is not None:
            progress(GenerationProgress("hashing", done, len(files)))
    return contents


def _path_hash(text: str) -> str:
    # Shards files that could not be hashed, so that exactly one shard reports each.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _remove_stale_temp_files(store: TargetStore, config_hash: str) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for folder in (store.root / "targets" / config_hash, store.root / "traces" / config_hash, store.root / "contents"):
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp.*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
