"""Fill a :class:`distill.store.TargetStore` with Gatys teacher targets.

:func:`generate_targets` is resumable (finished targets are never recomputed, whatever
killed the previous run), shardable (``shard=(i, n)`` takes the contents whose hash is
``i`` modulo ``n``, a disjoint subset that does not depend on listing order) and batched
(contents of the same size at the teacher's resolution share one ``stylize`` call).
Several processes may fill the same store at once: each appends to its own manifest, and
an advisory lock per target keeps overlapping runs from computing the same target twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.criterion import StyleCriterion
from distill.criterion import build_criterion as build_style_criterion
from distill.fileio import sha256_file, write_text_atomic
from distill.imaging import IMAGE_SUFFIXES, ImageLoadError, list_images, load_image, resize_image, save_image
from distill.lossnet import LossNetwork, build_loss_network
from distill.store import (
    ManifestReader,
    ManifestWriter,
    StoreError,
    TargetStore,
    describe_config,
    entry_key,
    RECORD_VERSION,
)
from teachers import gatys
from teachers.gatys import TeacherConfig

#: Contents with a side shorter than this (as given, or at the teacher's size) are skipped:
#: the deepest VGG style taps would have (almost) no pixels left.
MIN_SIDE = 16
#: Temporary files older than this are leftovers of killed writers (a live writer's exist
#: for the milliseconds of one PNG write) and are removed on start.
STALE_TEMP_SECONDS = 600
#: At most this many loaded contents (times the batch size) wait for a same-size batch.
_MAX_WAITING_BATCHES = 4


class GenerationInputError(ValueError):
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


@dataclass
class _Content:
    path: Path
    display: str  # the path as given, for messages and the manifest
    content_hash: str = ""
    size_bytes: int = 0
    error: str = ""  # set when the file could not even be hashed


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


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; under torchrun, ``cuda`` -> ``cuda:LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenerationInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    elif device != "cpu":
        raise GenerationInputError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


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
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> GenerationSummary:
    """Compute the missing teacher targets of this shard's contents and record them in the store.

    ``content_dir`` is walked recursively for image files. Unreadable, empty, corrupt or
    tiny files are skipped with one logged line each. Raises
    :class:`GenerationInputError` (bad style, missing or empty content folder, bad shard,
    unavailable device) and :class:`distill.store.StoreError` before doing any work.
    ``log`` receives the per-file lines and warnings (default: stderr, above the progress bar).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    teacher_config = teacher_config.resolved()  # the store records what ran, not "auto"
    if batch_size < 1:
        raise GenerationInputError(f"--batch-size must be at least 1, got {batch_size}")
    shard_index, shard_count = shard
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise GenerationInputError(f"shard {shard_index}/{shard_count}: need 0 <= i < n")
    if teacher_config.size < MIN_SIDE:
        raise GenerationInputError(f"--size {teacher_config.size}: the teacher needs at least {MIN_SIDE} px")
    device = resolve_device(device)
    weights = teacher_config.criterion.weights
    if weights not in ("pretrained", "random") and not Path(weights).is_file():
        raise GenerationInputError(f"--weights {weights!r}: no such file; use pretrained, random or a weights file")

    # Styles first: a bad style must stop the run before anything is read or written.
    style_paths = [Path(p) for p in style_paths]
    if not style_paths:
        raise GenerationInputError("at least one --style image is needed")
    for path in style_paths:
        try:
            load_image(path)
        except ImageLoadError as exc:
            raise GenerationInputError(f"style image {exc}") from None
    blend = teacher_config.criterion.style_blend
    if blend is not None and len(blend) != len(style_paths):
        raise GenerationInputError(f"{len(style_paths)} style image(s) but {len(blend)} --style-weights")

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
    if limit is not None:
        files = files[: max(0, limit)]

    store, config_hash = TargetStore.open_or_create(store_root, teacher_config=teacher_config, style_paths=style_paths)
    summary = GenerationSummary(
        store_root=str(store.root),
        config_hash=config_hash,
        config=describe_config(teacher_config),
        shard=(shard_index, shard_count),
        files=len(files),
        weights=weights,
        random_weights=weights == "random",
        device=device,
        batch_size=batch_size,
    )
    if summary.random_weights:
        log(
            "WARNING: the loss network has RANDOM weights (--weights random): a seeded random texture network "
            "stylises, but not as learned VGG-19 features would."
        )
    _remove_stale_temp_files(store, config_hash)

    contents = _hash_contents(files, content_dir, progress=progress)
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

    reader = ManifestReader(store.manifest_dir(config_hash))
    # A recorded target whose files were deleted (e.g. after --verify found them corrupt) is redone.
    finished = {
        r["content_hash"]
        for r in reader.read_new()
        if all((store.root / r[name]).is_file() for name in ("target", "content_image", "trace"))
    }
    pending = [item for item in items if item.content_hash not in finished]
    summary.present = len(items) - len(pending)
    log(
        f"store {store.root}: config {config_hash[:16]} ({summary.config}); shard {shard_index}/{shard_count}: "
        f"{len(items)} contents, {summary.present} already present, {len(pending)} to compute"
    )

    summary.started = time.time()
    if pending:
        run = _Run(
            store=store,
            config_hash=config_hash,
            teacher_config=teacher_config,
            device=device,
            batch_size=batch_size,
            summary=summary,
            reader=reader,
            finished=finished,
            log=log,
            writer=ManifestWriter(
                store.manifest_dir(config_hash),
                writer_name=f"{shard_index}of{shard_count}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            ),
        )
        bar = tqdm(total=len(pending), unit="img", desc=f"targets {shard_index}/{shard_count}", disable=not progress)
        run.bar = bar
        try:
            run.process(pending)
        finally:
            bar.close()
            run.close()
    summary.finished = time.time()
    summary.seconds = time.perf_counter() - started
    return summary


class _Run:
    """State of one generation loop: the criterion, the locks, the open manifest."""

    def __init__(
        self,
        *,
        store: TargetStore,
        config_hash: str,
        teacher_config: TeacherConfig,
        device: str,
        batch_size: int,
        summary: GenerationSummary,
        reader: ManifestReader,
        finished: set[str],
        log: Callable[[str], None],
        writer: ManifestWriter,
    ) -> None:
        self.store = store
        self.config_hash = config_hash
        self.config = teacher_config
        self.device = device
        self.batch_size = batch_size
        self.summary = summary
        self.reader = reader
        self.finished = finished
        self.log = log
        self.writer = writer
        self.locks = _KeyLocks(store.root / "locks" / config_hash)
        self.style_hashes = list(store.style_hashes(config_hash))
        self.bar = None
        self._criterion: StyleCriterion | None = None
        self._style_image: torch.Tensor | None = None
        self._last_refresh = 0.0

    def close(self) -> None:
        self.writer.close()
        self.locks.release_all()

    @property
    def criterion(self) -> StyleCriterion:
        # Built lazily: a run whose contents all turn out bad or busy never loads the network.
        if self._criterion is None:
            config = self.config.criterion
            styles = self.store.style_images(self.config_hash)  # the store's copies: what readers will use
            network = _loss_network(config, self.device)
            self._criterion = build_style_criterion(config, styles, device=self.device, network=network)
            self._style_image = styles[0].to(self.device)
            self.summary.weights = self._criterion.weights_description
            self.summary.random_weights = self._criterion.network.is_random
        return self._criterion

    def process(self, pending: list[_Content]) -> None:
        """Load each pending content, group equal sizes into batches, run the teacher on each batch."""
        waiting: dict[tuple[int, int], list[tuple[_Content, torch.Tensor]]] = {}
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
        if copy.is_file():
            with contextlib.suppress(ImageLoadError):
                return load_image(copy)  # another config at this size already made it
        try:
            image = load_image(item.path)
        except ImageLoadError as exc:
            raise _Skip(str(exc).removeprefix(f"{item.path}: ")) from None
        height, width = image.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise _Skip(f"too small ({width}x{height} px; every side needs at least {MIN_SIDE} px)")
        image = resize_image(image, long_side=self.config.size)
        if min(image.shape[-2:]) < MIN_SIDE:
            raise _Skip(
                f"too elongated ({width}x{height} px becomes {image.shape[-1]}x{image.shape[-2]} at size "
                f"{self.config.size}; every side needs at least {MIN_SIDE} px)"
            )
        image = image.clamp(0, 1).mul(255).round().div(255)
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
        try:
            with warnings.catch_warnings():
                # torch warns about Intel-GPU TF32 on every mkldnn.flags() the teacher enters; noise above the bar.
                warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
                result = gatys.stylize(
                    criterion, content, config=self.config, style_image=self._style_image, progress=self._iteration
                )
        except Exception as exc:  # one bad image (or an OOM at this batch size) must not fail the others
            if len(batch) > 1:
                self.log(f"teacher failed on a batch of {len(batch)} ({type(exc).__name__}: {exc}); retrying one by one")
                for one in batch:
                    self._teach([one])
                return
            item = batch[0][0]
            reason = f"teacher failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
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
        if self.bar is None:
            return
        summary = self.summary
        postfix = {"done": summary.new, "skipped": summary.skipped, "failed": len(summary.failed)}
        if summary.busy:
            postfix["busy"] = summary.busy
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(count)

    def _iteration(self, done: int, total: int) -> None:
        # Within a long batch the bar would otherwise look stalled for minutes.
        now = time.perf_counter()
        if self.bar is None or now - self._last_refresh < 0.5:
            return
        self._last_refresh = now
        summary = self.summary
        self.bar.set_postfix_str(
            f"done={summary.new}, skipped={summary.skipped}, failed={len(summary.failed)}, batch {100 * done // total}%"
        )


class _KeyLocks:
    """Non-blocking advisory locks, one file per target (``fcntl.flock``; released by the OS if we die).

    Without ``fcntl`` (Windows) locking is a no-op: run disjoint shards there.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: dict[str, int] = {}
        try:
            import fcntl

            self._fcntl = fcntl
        except ImportError:  # pragma: no cover - Windows
            self._fcntl = None

    def acquire(self, name: str) -> bool:
        if self._fcntl is None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[name] = fd
        return True

    def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)


_NETWORK_CACHE: dict[tuple, LossNetwork] = {}


def _loss_network(config, device: str) -> LossNetwork:
    """The loss network for ``config``, reused across calls in one process (e.g. one call per style)."""
    content_layers, style_layers = config.resolved_layers()
    layers = tuple(dict.fromkeys(content_layers + style_layers))
    stamp = None
    if config.weights not in ("pretrained", "random"):
        stat = Path(config.weights).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    key = (config.backbone, config.weights, stamp, config.seed, config.pooling, layers, device)
    if key not in _NETWORK_CACHE:
        _NETWORK_CACHE.clear()  # keep one: a network is large
        _NETWORK_CACHE[key] = build_loss_network(
            config.backbone, weights=config.weights, layers=layers, seed=config.seed, pooling=config.pooling, device=device
        )
    return _NETWORK_CACHE[key]


def _hash_contents(files: list[Path], content_dir: str | os.PathLike, *, progress: bool) -> list[_Content]:
    from tqdm.auto import tqdm

    contents = []
    for path in tqdm(files, desc="hashing contents", unit="file", disable=not progress or len(files) < 200, leave=False):
        item = _Content(path=path, display=str(path))
        try:
            item.size_bytes = path.stat().st_size
            item.content_hash = sha256_file(path)
        except OSError as exc:
            item.error = f"unreadable ({exc.strerror or exc})"
        contents.append(item)
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


__all__ = [
    "GenerationInputError",
    "GenerationSummary",
    "MIN_SIDE",
    "StoreError",
    "generate_targets",
    "parse_shard",
    "resolve_device",
    "shard_from_env",
    "shard_of",
]
