"""Train a feed-forward student to reproduce the Gatys teacher.

The objective is the teacher's own criterion, rebuilt from the target store
(``store.build_criterion``) so that it cannot drift from what the teacher optimised,
plus a distillation term that pulls the student's output towards the teacher's image:

    objective = criterion(student(c), content=c).total + distill_weight * sum(distill terms)

``distill_weight = 0`` is plain Johnson-style perceptual-loss training.

Reproducibility: the batch of step ``s`` (which images, where they are cropped, whether
they are flipped) is a pure function of ``(seed, s)``; nothing depends on an iterator's
hidden state, so ``resume=True`` continues exactly and ``W`` processes that each take a
``batch_size / W`` slice of the same global batch compute the same loss as one process.

Colour-preserving stores (``criterion.luminance_only``): the teacher optimised luminance
and then put the content's chroma back (``transfer_luminance``). The student is built
with ``preserve_color=True`` (:class:`students.registry.ColourPreservingStudent`), so it
does the same inside the model: checkpoints, tiled inference and every export keep the
content's colours. Checkpoints also record ``luminance_only`` in their metadata.

Run directory layout::

    RUN_DIR/config.yaml                 resolved TrainConfig
    RUN_DIR/metrics.jsonl               one JSON record per logged step / evaluation
    RUN_DIR/tensorboard/                TensorBoard event files
    RUN_DIR/samples/step_XXXXXXX.png    content | teacher | student rows
    RUN_DIR/checkpoints/last.safetensors    latest student (students.checkpoint format)
    RUN_DIR/checkpoints/best.safetensors    best student by held-out SSIM to the teacher
    RUN_DIR/checkpoints/last_state.pt       optimiser / scaler / RNG / step state for --resume
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.config import from_dict, load_yaml, replace, to_dict
from distill.core.files import atomic_path, write_text_atomic
from distill.core.imageio import resize_image
from distill.objective.terms import structural_dissimilarity

DISTILL_KINDS = ("pixel_l1", "pixel_l2", "ssim", "feature")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")
STATE_FORMAT = 1

#: Fields that may change when a run is resumed: they do not alter the trajectory.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "device",
        "num_workers",
        "compile",
        "log_interval",
        "eval_interval",
        "image_interval",
        "checkpoint_interval",
        "eval_max_images",
        "image_samples",
        "fault_nonfinite_step",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a student training run (stored in every checkpoint)."""

    # data
    targets: str = ""  # target store folder written by the teacher; the criterion is rebuilt from it
    config_hash: str | None = None  # teacher config inside the store; None = the store's only one
    heldout_fraction: float = 0.1  # share of targets kept for evaluation; must match across runs to compare
    crop_size: int = 256  # training crops are square; smaller images are first resized up to cover it
    hflip: bool = True  # random horizontal flips: style statistics are mirror-invariant, content is not tied to side
    num_workers: int = 0  # DataLoader workers; batches are a function of (seed, step), so any value is reproducible
    # student
    student: str = "johnson"  # registered student name (students.list_students())
    student_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options, stored in the checkpoint
    unfreeze_step: int | None = None  # timm_encoder: the (frozen at start) encoder trains from this step on; None = never
    # objective
    distill_kind: tuple[str, ...] = ("feature",)  # pull towards the teacher image: pixel_l1, pixel_l2, ssim (1 - SSIM) and/or feature (content-layer MSE)
    distill_weight: float = 1.0  # 0 = pure Johnson-style training on the criterion alone
    loss_weights: str | None = None  # override the loss network weights (pretrained/random/path); None = the teacher's
    # optimisation
    steps: int = 2000  # optimiser updates; the run is resumable, so this can be raised later
    batch_size: int = 4  # global batch, split evenly over DDP processes
    lr: float = 1e-3  # Adam learning rate, the Johnson et al. value
    betas: tuple[float, float] = (0.9, 0.999)  # Adam defaults
    weight_decay: float = 0.0  # students are small and the objective is perceptual; no decay by default
    schedule: str = "cosine"  # "cosine" (after warmup, decays to min_lr_ratio) or "constant"
    warmup_steps: int = 100  # linear warmup: early Gram gradients are huge relative to later ones
    lr_decay_steps: int | None = None  # cosine horizon; None = steps (set it when a run will be extended by resuming)
    min_lr_ratio: float = 0.1  # floor of the cosine schedule as a fraction of lr
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    seed: int = 0  # seeds the student's initialisation and every batch
    # performance
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda" or "cuda:N"
    precision: str = "fp32"  # "bf16" / "fp16" autocast; Grams stay float32 inside the criterion
    channels_last: bool = False  # NHWC tensors: faster convolutions on GPUs with tensor cores
    compile: bool = False  # torch.compile the student (the criterion stays eager)
    # logging / evaluation / checkpoints
    log_interval: int = 10  # steps between metrics.jsonl / TensorBoard scalar records
    eval_interval: int = 200  # steps between held-out evaluations (also at the last step)
    eval_size: int = 256  # held-out images are evaluated at this long side, whole, one at a time
    eval_max_images: int | None = 32  # cap on held-out images per evaluation; None = all
    image_interval: int = 200  # steps between sample grids (TensorBoard and RUN_DIR/samples)
    image_samples: int = 4  # rows in a sample grid
    checkpoint_interval: int = 200  # steps between last.safetensors / last_state.pt saves (also at the end)
    fault_nonfinite_step: int | None = None  # tests only: make the style term +inf at this step

    def __post_init__(self) -> None:
        kinds = (self.distill_kind,) if isinstance(self.distill_kind, str) else tuple(self.distill_kind)
        object.__setattr__(self, "distill_kind", kinds)
        unknown = [k for k in kinds if k not in DISTILL_KINDS]
        if unknown:
            raise ValueError(f"distill_kind {unknown} not in {DISTILL_KINDS}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"distill_kind lists a kind twice: {kinds}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_weight > 0 and not kinds:
            raise ValueError("distill_weight > 0 needs at least one distill_kind")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("steps", "batch_size", "crop_size", "eval_size", "log_interval", "eval_interval",
                     "image_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.num_workers < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, num_workers and grad_clip must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must lie in [0, 1), got {self.heldout_fraction}")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf; nothing was saved after the last finite step."""

    def __init__(self, step: int, term: str, value: float, last_checkpoint_step: int | None) -> None:
        kept = (
            f"the last good checkpoint (step {last_checkpoint_step}) is intact"
            if last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        what = (
            f"the student's weights became non-finite in the update of step {step}"
            if term == "weights"
            else f"non-finite loss at step {step}: term {term!r} = {value}"
        )
        super().__init__(
            f"{what}; training stopped, {kept}. "
            "Lower lr, raise warmup_steps, set grad_clip or use precision fp32/bf16."
        )
        self.step = step
        self.term = term
        self.value = value
        self.last_checkpoint_step = last_checkpoint_step


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; files are written by rank 0 only)."""

    run_dir: Path
    step: int  # last completed step
    history: list[dict[str, float]]  # per step of this invocation: step, lr and the (all-reduced) loss terms
    evaluations: list[dict[str, float]]  # held-out metrics of this invocation
    best: dict[str, float] | None  # {"step", "ssim", "total"} of best.safetensors
    last_checkpoint: Path
    best_checkpoint: Path | None


# --------------------------------------------------------------------------- config


def resolve_config(
    *,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainConfig:
    """Defaults, then the YAML ``config_file`` (or, when resuming without one, the run's
    saved config), then ``overrides`` (field -> value; TrainConfig is flat). ``targets``
    is made absolute so that the run can be resumed from any working directory."""
    data: dict[str, Any] = {}
    if config_file is not None:
        data = load_yaml(config_file)
    elif resume and run_dir is not None:
        data = _saved_config(Path(run_dir)) or {}
    config = from_dict(TrainConfig, data)
    overrides = dict(overrides or {})  # an explicit None is a value (e.g. config_hash: null)
    if overrides:
        coerced = from_dict(TrainConfig, {**to_dict(config), **overrides})
        config = replace(config, **{k: getattr(coerced, k) for k in overrides})
    if config.targets:
        config = replace(config, targets=str(Path(config.targets).resolve()))
    return config


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    state_path = run_dir / "checkpoints" / "last_state.pt"
    if state_path.exists():
        return dict(torch.load(state_path, map_location="cpu", weights_only=True)["config"])
    if (run_dir / "config.yaml").exists():
        return load_yaml(run_dir / "config.yaml")
    return None


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of (1-based) ``step``: linear warmup, then cosine to ``min_lr_ratio * lr`` or constant."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    horizon = config.lr_decay_steps or config.steps
    progress = min(1.0, max(0.0, (step - config.warmup_steps) / max(1, horizon - config.warmup_steps)))
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * ratio


# --------------------------------------------------------------------------- data


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
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
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

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        pair = self.pairs[index]
        return random_crop_pair(pair["content"], pair["target"], crop_size=self.crop_size, hflip=self.hflip, seed=seed)


# --------------------------------------------------------------------------- objective


def distill_terms(
    criterion: nn.Module,
    output: torch.Tensor,
    target: torch.Tensor,
    kinds: Sequence[str],
    *,
    output_features: Mapping[str, torch.Tensor] | None = None,
    target_features: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Distillation terms towards the teacher's image, each (B,) float32, unweighted.

    ``output``, ``target``: (B, 3, H, W) in [0, 1]. Images are compared as the criterion
    sees them (``criterion.measured``: luminance in colour-preserving mode).
    ``ssim`` is ``1 - SSIM`` (:func:`distill.objective.terms.structural_dissimilarity`).
    ``feature`` is the criterion's content distance (:meth:`StyleCriterion.content_distance`)
    between the two images' features at its content layers; pass precomputed
    ``output_features`` / ``target_features`` to save passes.
    """
    terms: dict[str, torch.Tensor] = {}
    if "ssim" in kinds:
        terms["ssim"] = structural_dissimilarity(criterion.measured(output), criterion.measured(target))
    if "pixel_l1" in kinds or "pixel_l2" in kinds:
        diff = criterion.measured(output.float()) - criterion.measured(target.float())
        if "pixel_l1" in kinds:
            terms["pixel_l1"] = diff.abs().flatten(1).mean(dim=1)
        if "pixel_l2" in kinds:
            terms["pixel_l2"] = diff.pow(2).flatten(1).mean(dim=1)
    if "feature" in kinds:
        if output_features is None:
            output_features = criterion.features(output)
        if target_features is None:
            with torch.no_grad():
                target_features = criterion.features(target)
        # The criterion's own content distance: relative per layer with scale-free terms.
        terms["feature"] = criterion.content_distance(output_features, target_features)
    return {kind: terms[kind] for kind in kinds}


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Keeps the latest output of ``module`` (the loss network) so its features are reused."""
    captured: dict[str, Any] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
    try:
        yield captured
    finally:
        handle.remove()


def compute_objective(
    criterion: nn.Module,
    output: torch.Tensor,
    content: torch.Tensor,
    target: torch.Tensor,
    *,
    config: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar objective, named batch-mean terms) of one batch.

    Terms: ``content``, ``style``, ``tv``, ``criterion`` (their sum, the teacher's
    number), ``distill_<kind>`` (unweighted), ``distill`` (weighted sum) and ``objective``.
    Content and target go through the loss network together in one no-grad pass; the
    student output's features are captured from the criterion's own pass.
    """
    kinds = config.distill_kind if config.distill_weight > 0 else ()
    batch = content.shape[0]
    with torch.no_grad():
        if "feature" in kinds:
            reference = criterion.features(torch.cat([content, target]))
            content_targets = {layer: reference[layer][:batch] for layer in criterion.content_layers}
            target_features = {layer: reference[layer][batch:] for layer in criterion.content_layers}
        else:
            content_targets, target_features = criterion.content_targets(content), None
    with _capture_output(criterion.network) as captured:
        terms = criterion(output, content_targets=content_targets).mean()
    named = {"content": terms.content, "style": terms.style, "tv": terms.tv, "criterion": terms.total}
    distill = distill_terms(
        criterion, output, target, kinds, output_features=captured.get("out"), target_features=target_features
    )
    weighted = torch.zeros((), device=output.device)
    for kind, value in distill.items():
        named[f"distill_{kind}"] = value.mean()
        weighted = weighted + value.mean()
    named["distill"] = config.distill_weight * weighted
    objective = terms.total + named["distill"]
    named["objective"] = objective
    return objective, named


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` ("fp32" disables it)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def forward_objective(
    model: nn.Module,
    criterion: nn.Module,
    content: torch.Tensor,
    target: torch.Tensor,
    *,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Student forward and :func:`compute_objective` under the configured autocast."""
    with autocast_for(config.precision, device):
        output = model(content)
        return compute_objective(criterion, output, content, target, config=config)


def backward_step(
    objective: torch.Tensor,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    grad_clip: float = 0.0,
) -> None:
    """Backward (loss-scaled for fp16), optional gradient clipping, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(objective).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


# --------------------------------------------------------------------------- distributed / device


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return _Dist()
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if device_name.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        initialised_here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), initialised_here)


def _resolve_device(name: str, dist_info: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info.world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _all_mean(values: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.world_size > 1:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist_info.world_size
    return values


def _barrier(dist_info: _Dist) -> None:
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- state


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- store access


def _open_store(path: str) -> Any:
    from distill.targets.store import TargetStore

    return TargetStore(path)


def _target_pairs(store: Any, **kwargs: Any) -> torch.utils.data.Dataset:
    from distill.targets.pairs import TargetPairs

    return TargetPairs(store, **kwargs)


def _resolve_config_hash(store: Any, wanted: str | None) -> str:
    if hasattr(store, "resolve_config"):
        return store.resolve_config(wanted)
    hashes = list(store.config_hashes())
    if wanted is not None:
        matches = [h for h in hashes if h == wanted or h.startswith(wanted)]
        if len(matches) != 1:
            raise ValueError(f"config hash {wanted!r} matches {len(matches)} of the store's teacher configs: {hashes}")
        return matches[0]
    if len(hashes) != 1:
        raise ValueError(
            f"the store holds {len(hashes)} teacher configs ({', '.join(hashes) or 'none'}); choose one with config_hash"
        )
    return hashes[0]


# --------------------------------------------------------------------------- evaluation and images


def _eval_pair(pair: Mapping[str, torch.Tensor], size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    target = resize_image(pair["target"], long_side=size)
    content = resize_image(pair["content"], size=tuple(target.shape[-2:]))
    return content.unsqueeze(0).to(device), target.unsqueeze(0).to(device)


@torch.no_grad()
def evaluate(
    student: nn.Module,
    criterion: nn.Module,
    pairs: torch.utils.data.Dataset,
    *,
    config: TrainConfig,
    device: torch.device,
    teacher_cache: dict[int, float] | None = None,
) -> dict[str, float]:
    """Mean held-out metrics in float32, each image whole at long side ``config.eval_size``.

    ``ssim`` (the student's 8-bit output against the teacher's image: what selects
    best.safetensors, because agreement with the teacher, unlike the criterion, cannot be
    met by an output that does not look like the teacher's), ``total`` (the criterion),
    ``content``, ``style``, ``tv``, ``distill_<kind>`` (unweighted) and ``teacher_total``
    (the criterion of the teacher's own images at that size), ``ratio`` = total / teacher_total.
    """
    from distill.core.imageio import quantize_8bit
    from distill.core.metrics import ssim

    was_training = student.training
    student.eval()
    count = len(pairs) if config.eval_max_images is None else min(len(pairs), config.eval_max_images)
    sums: dict[str, float] = {}
    try:
        for index in range(count):
            content, target = _eval_pair(pairs[index], config.eval_size, device)
            output = student(content).float()
            terms = criterion(output, content=content)
            values = {"total": terms.total, "content": terms.content, "style": terms.style, "tv": terms.tv}
            values.update({f"distill_{k}": v for k, v in distill_terms(criterion, output, target, config.distill_kind).items()})
            if teacher_cache is not None and index in teacher_cache:
                teacher_total = teacher_cache[index]
            else:
                teacher_total = float(criterion(target, content=content).total)
                if teacher_cache is not None:
                    teacher_cache[index] = teacher_total
            values["teacher_total"] = teacher_total
            values["ssim"] = ssim(quantize_8bit(output[0]), target[0])
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + float(value if isinstance(value, float) else value.sum())
    finally:
        student.train(was_training)
    metrics = {name: value / max(count, 1) for name, value in sums.items()}
    metrics["images"] = float(count)
    if metrics.get("teacher_total"):
        metrics["ratio"] = metrics["total"] / metrics["teacher_total"]
    return metrics


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    image = resize_image(image, size=(max(size, round(height * scale)), max(size, round(width * scale))))
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[..., top:top + size, left:left + size]


@torch.no_grad()
def sample_grid(
    student: nn.Module, samples: Sequence[tuple[torch.Tensor, torch.Tensor]], *, luminance_only: bool, device: torch.device
) -> torch.Tensor:
    """(3, H, W) grid in [0, 1]: one row per sample, content | teacher | student."""
    from torchvision.utils import make_grid

    from distill.core.color import transfer_luminance

    was_training = student.training
    student.eval()
    try:
        tiles = []
        for content, target in samples:
            output = student(content.unsqueeze(0).to(device)).float().clamp(0, 1)
            if luminance_only:
                output = transfer_luminance(output, content.unsqueeze(0).to(device))
            tiles += [content, target, output[0].cpu()]
    finally:
        student.train(was_training)
    return make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)


# --------------------------------------------------------------------------- the loop


class _RunFiles:
    """Rank 0's writers: metrics.jsonl, TensorBoard, samples."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        if self.metrics_path.exists():
            # Records past the resumed step belong to a run that died before its next checkpoint.
            kept = [
                line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if _record_step(line) <= start_step
            ]
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def record(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(name if name in ("lr", "images_per_sec") else f"{kind}/{name}", value, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        from distill.core.imageio import save_image

        self.writer.add_image("samples/content_teacher_student", grid, step)
        save_image(grid, self.run_dir / "samples" / f"step_{step:07d}.png")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a blank or torn line (dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _checkpoint_paths(run_dir: Path) -> dict[str, Path]:
    folder = run_dir / "checkpoints"
    return {"last": folder / "last.safetensors", "best": folder / "best.safetensors", "state": folder / "last_state.pt"}


def _check_resume_compatible(saved: Mapping[str, Any], config: TrainConfig) -> None:
    current = to_dict(config)
    saved = to_dict(from_dict(TrainConfig, dict(saved)))
    if current["targets"] and saved.get("targets") and Path(current["targets"]).resolve() == Path(saved["targets"]).resolve():
        saved["targets"] = current["targets"]  # the same store, spelled differently
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and current[k] != saved.get(k))
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: these settings differ from the checkpointed run and would change it: {details}")


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    store: Any | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.student`` on the store ``config.targets``; write RUN_DIR (see the module docstring).

    ``resume``: continue from RUN_DIR/checkpoints/last_state.pt up to ``config.steps``.
    ``store``: an already opened target store (default: ``TargetStore(config.targets)``).
    Under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised with gloo (CPU)
    or nccl (CUDA), each process takes ``batch_size / world_size`` of every global
    batch, and only rank 0 writes files. Raises :class:`NonFiniteLossError` on a NaN/Inf
    loss without saving anything after the last finite step.
    """
    import students
    from students.checkpoint import save_student

    run_dir = Path(run_dir)
    paths = _checkpoint_paths(run_dir)
    dist_info = _setup_distributed(config.device)
    try:
        device = _resolve_device(config.device, dist_info)
        state = None
        if resume:
            if not paths["state"].exists():
                raise FileNotFoundError(f"--resume: {paths['state']} does not exist; nothing to resume")
            state = torch.load(paths["state"], map_location="cpu", weights_only=True)
            _check_resume_compatible(state["config"], config)
        elif paths["state"].exists():
            raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another folder")
        if not config.targets and store is None:
            raise ValueError("no target store given (config.targets / --targets)")
        if store is None:
            store = _open_store(config.targets)
        config_hash = _resolve_config_hash(store, config.config_hash)
        teacher_config = store.teacher_config(config_hash)
        criterion = store.build_criterion(config_hash, device=device, weights=config.loss_weights)
        criterion.requires_grad_(False)
        weights_description = criterion.weights_description
        random_weights = weights_description.startswith("random")
        teacher_weights = sorted({str(getattr(e, "weights", "")) for e in store.entries(config_hash)} - {""})

        pair_options = {"config_hash": config_hash, "heldout_fraction": config.heldout_fraction}
        train_pairs = _target_pairs(store, split="train", **pair_options)
        if len(train_pairs) == 0:
            raise ValueError(f"the store {config.targets} has no training targets for teacher config {config_hash}")
        eval_pairs = _target_pairs(store, split="heldout", **pair_options)
        eval_split = "heldout"
        if len(eval_pairs) == 0:
            eval_pairs, eval_split = train_pairs, "train"

        _seed_everything(config.seed)
        # A colour-preserving teacher's student carries the chroma transfer inside the model.
        student = students.create_student(
            config.student, preserve_color=bool(criterion.luminance_only), **config.student_kwargs
        ).to(device)
        if config.channels_last:
            student = student.to(memory_format=torch.channels_last)
            criterion = criterion.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(
            student.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        start_step, best, latest_eval = 0, None, None
        if state is not None:
            student.load_state_dict(state["model"])
            _apply_freeze(student, config, state["step"] + 1)
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            start_step = int(state["step"])
            best = dict(state["best"]) or None
            latest_eval = dict(state.get("latest_eval", {})) or None
        student.train()

        files = _RunFiles(run_dir, start_step=start_step) if dist_info.main else None
        if dist_info.main:
            write_text_atomic(run_dir / "config.yaml", _yaml(to_dict(config)))
            _announce(config, start_step, device, dist_info, weights_description, random_weights, eval_split,
                      len(train_pairs), len(eval_pairs) if eval_split == "heldout" else 0, files)

        loader = torch.utils.data.DataLoader(
            CroppedPairs(train_pairs, crop_size=config.crop_size, hflip=config.hflip),
            batch_sampler=StepBatchSampler(
                count=len(train_pairs), batch_size=config.batch_size, seed=config.seed,
                first_step=start_step + 1, last_step=config.steps,
                rank=dist_info.rank, world_size=dist_info.world_size,
            ),
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed),
            persistent_workers=False,
        )
        preview = [
            (_square(eval_pairs[i]["content"], config.eval_size), _square(eval_pairs[i]["target"], config.eval_size))
            for i in range(min(config.image_samples, len(eval_pairs)))
        ] if dist_info.main else []

        extra_base = {
            "train_config": to_dict(config),
            "targets": str(Path(config.targets).resolve()) if config.targets else str(getattr(store, "root", "")),
            "config_hash": config_hash,
            "teacher_config": to_dict(teacher_config),
            "loss_network_weights": weights_description,
            "loss_network_random": random_weights,
            "teacher_weights": teacher_weights,
            "luminance_only": bool(criterion.luminance_only),
            "eval_split": eval_split,
        }
        model = _wrap(student, config, dist_info, device)
        teacher_cache: dict[int, float] = {}
        history: list[dict[str, float]] = []
        evaluations: list[dict[str, float]] = []
        last_saved_step = start_step if state is not None else None
        step = start_step
        interval_images, interval_start = 0, time.perf_counter()
        bar = _progress_bar(config.steps, start_step, enabled=progress and dist_info.main)
        try:
            for step, (content, target) in zip(range(start_step + 1, config.steps + 1), loader):
                if _apply_freeze(student, config, step):
                    model = _wrap(student, config, dist_info, device)  # DDP only tracks parameters trainable at wrap time
                lr = lr_at(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                content = content.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if config.channels_last:
                    content = content.contiguous(memory_format=torch.channels_last)
                    target = target.contiguous(memory_format=torch.channels_last)
                objective, terms = forward_objective(model, criterion, content, target, config=config, device=device)
                if config.fault_nonfinite_step == step:
                    terms["style"] = terms["style"] + float("inf")
                    objective = objective + terms["style"]
                names = list(terms)
                reduced = _all_mean(torch.stack([terms[n].detach().float() for n in names]), dist_info).cpu()
                bad = [(n, float(v)) for n, v in zip(names, reduced) if not math.isfinite(float(v))]
                if bad:
                    term, value = next(((n, v) for n, v in bad if n not in ("criterion", "objective", "distill")), bad[0])
                    raise NonFiniteLossError(step, term, value, last_saved_step)

                backward_step(objective, student, optimizer, scaler, grad_clip=config.grad_clip)

                record = {"step": step, "lr": lr, **{n: float(v) for n, v in zip(names, reduced)}}
                history.append(record)
                interval_images += config.batch_size
                if bar is not None:
                    bar.update(1)
                if step % config.log_interval == 0 or step == config.steps:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    now = time.perf_counter()
                    rate = interval_images / max(now - interval_start, 1e-9)
                    interval_images, interval_start = 0, now
                    if files is not None:
                        files.record(step, "train", {**{k: v for k, v in record.items() if k != "step"}, "images_per_sec": rate})
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['objective']:.4g}", img_s=f"{rate:.1f}")

                last = step == config.steps
                writes = [step % interval == 0 or last for interval in
                          (config.image_interval, config.eval_interval, config.checkpoint_interval)]
                if any(writes) and not all(bool(torch.isfinite(p).all()) for p in student.parameters()):
                    # A finite loss can still produce an inf gradient; never save what it did.
                    raise NonFiniteLossError(step, "weights", math.nan, last_saved_step)
                if dist_info.main and writes[0] and preview:
                    files.image(step, sample_grid(student, preview, luminance_only=criterion.luminance_only, device=device))
                evaluated = None
                if dist_info.main and writes[1]:
                    evaluated = evaluate(student, criterion, eval_pairs, config=config, device=device, teacher_cache=teacher_cache)
                    latest_eval = {"step": step, **evaluated}
                    evaluations.append(latest_eval)
                    files.record(step, eval_split if eval_split == "heldout" else "train_eval", evaluated)
                    _write(bar, f"step {step}: {eval_split} SSIM to teacher {evaluated['ssim']:.4f}, criterion "
                                f"{evaluated['total']:.5g} (teacher {evaluated.get('teacher_total', float('nan')):.5g})")
                    if best is None or evaluated["ssim"] > best["ssim"]:
                        best = {"step": step, "ssim": evaluated["ssim"], "total": evaluated["total"]}
                        save_student(student, paths["best"], extra={**extra_base, "step": step, "kind": "best",
                                                                    "heldout": latest_eval, "best": best})
                if writes[2]:
                    if dist_info.main:
                        # "heldout": the latest evaluation, with its own "step" (may precede this one).
                        extra = {**extra_base, "step": step, "kind": "last", "best": best, "heldout": latest_eval}
                        save_student(student, paths["last"], extra=extra)
                        _save_state(paths["state"], student, optimizer, scaler, config, step, best, lr, latest_eval)
                    last_saved_step = step
                    _barrier(dist_info)
        finally:
            if bar is not None:
                bar.close()
            if files is not None:
                files.close()
        return TrainResult(
            run_dir=run_dir,
            step=step,
            history=history,
            evaluations=evaluations,
            best=best,
            last_checkpoint=paths["last"],
            best_checkpoint=paths["best"] if paths["best"].exists() else None,
        )
    finally:
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _apply_freeze(student: nn.Module, config: TrainConfig, step: int) -> bool:
    """Unfreeze a timm_encoder's encoder once ``step >= unfreeze_step``; True when it changed now."""
    if config.unfreeze_step is None or not hasattr(student, "unfreeze_encoder"):
        return False
    if step >= config.unfreeze_step and getattr(student, "encoder_frozen", False):
        student.unfreeze_encoder()
        return True
    return False


def _wrap(student: nn.Module, config: TrainConfig, dist_info: _Dist, device: torch.device) -> nn.Module:
    model = student
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    return model


def _save_state(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                config: TrainConfig, step: int, best: dict | None, lr: float, latest_eval: dict | None) -> None:
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": config.schedule, "step": step, "last_lr": lr},
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
        "best": best or {},
        "latest_eval": latest_eval or {},
        "config": to_dict(config),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False)


def _progress_bar(total: int, initial: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _write(bar: Any, message: str) -> None:
    if bar is not None:
        bar.write(message)
    else:
        print(message, flush=True)


def _announce(config: TrainConfig, start_step: int, device: torch.device, dist_info: _Dist, weights: str,
              random_weights: bool, eval_split: str, train_count: int, heldout_count: int, files: _RunFiles) -> None:
    where = f"{device}" + (f" x {dist_info.world_size} processes" if dist_info.world_size > 1 else "")
    action = f"resuming at step {start_step}" if start_step else "starting"
    print(f"train: {action}; student {config.student}, {train_count} train / {heldout_count} held-out targets, "
          f"{config.steps} steps, batch {config.batch_size}, {config.precision} on {where}", flush=True)
    print(f"train: loss network weights: {weights}", flush=True)
    if random_weights:
        print("WARNING: the loss network has RANDOM weights: a seeded random texture network, not learned "
              "VGG-19 features (recorded in the checkpoint metadata).", flush=True)
    if eval_split != "heldout":
        print("WARNING: the store has no held-out targets; best.safetensors is chosen on training targets.", flush=True)
    files.writer.add_text("config", "```\n" + _yaml(to_dict(config)) + "\n```", start_step)
    files.writer.add_text("loss_network_weights", weights, start_step)
