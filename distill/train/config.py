"""What determines a student training run: :class:`TrainConfig`, how it is resolved, and the learning rate.

A run's settings come from the defaults, then a YAML file (or, when resuming, the run's
saved config), then explicit overrides (:func:`resolve_config`). The resolved config is
stored in RUN_DIR/config.yaml, in last_state.pt and in every checkpoint; a resumed run
may change only the fields in :data:`RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from distill.core.config import check_fields, from_dict, load_yaml, replace, to_dict
from distill.core.errors import ConfigError
from distill.train.runfiles import MissingRunError, load_resume_state
from students import list_students

DISTILL_KINDS = ("pixel_l1", "pixel_l2", "ssim", "feature")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")

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
    }
)

#: Fields whose None means "decided by the run" (and saved decided): None asks for the saved decision.
AUTO_FIELDS = frozenset({"smooth_output"})

#: Fields of earlier versions that saved runs may still hold; they are dropped when a saved
#: config is read. ``fault_nonfinite_step`` was a test hook (the tests now patch the loop).
LEGACY_FIELDS = frozenset({"fault_nonfinite_step"})


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
    # Registered student name (students.list_students()). timm_encoder (a frozen ResNet-18
    # encoder and a trained U-Net decoder) agreed best with the offline teacher on held-out
    # photos, took the most texture and needed the least training (benchmarks/RESULTS.md, "Student
    # fidelity": SSIM 0.508 in 5.4 min on 2 CPU cores; fast 0.481, johnson 0.475).
    student: str = "timm_encoder"
    # architecture options, stored in the checkpoint; not hashed (a dict is not hashable)
    student_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # Guided-filter the student's output with its input (students.registry.AffineSmoothedStudent):
    # photographic outputs. None: on when the store's teacher is photorealistic (--photoreal).
    smooth_output: bool | None = None
    unfreeze_step: int | None = None  # timm_encoder: the (frozen at start) encoder trains from this step on; None = never
    # One student for every teacher config (style) in the store: conditional instance norm,
    # one (gamma, beta) per style (students.conditional); batches mix styles.
    multi_style: bool = False
    # A multi-style checkpoint to add the store's style(s) to: only the new styles' (gamma, beta)
    # train, every other weight and style stays as it was (students.styles.train_only_styles).
    add_style_to: str | None = None
    # objective
    # Pull towards the teacher image: pixel_l1, pixel_l2, ssim (1 - SSIM) and/or feature
    # (content-layer distance). Pixel L1 + SSIM at weight 10 is the measured best on held-out
    # photos (benchmarks/RESULTS.md, "Student fidelity"): feature distillation alone let the
    # student drift to content-free colour fields that satisfy the criterion.
    distill_kind: tuple[str, ...] = ("pixel_l1", "ssim")
    distill_weight: float = 10.0  # 0 = pure Johnson-style training on the criterion alone
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

    def __post_init__(self) -> None:
        if isinstance(self.distill_kind, (str, list)):
            # One kind may be given alone ("feature"), as in a YAML file or on the command line.
            kinds = (self.distill_kind,) if isinstance(self.distill_kind, str) else tuple(self.distill_kind)
            object.__setattr__(self, "distill_kind", kinds)
        check_fields(self)
        _check_objective(self)
        _check_optimisation(self)
        _check_counts(self)
        if self.student not in list_students():
            known = ", ".join(list_students()) or "(none)"
            raise ConfigError(f"unknown student {self.student!r}; known students: {known}")


def _check_objective(config: TrainConfig) -> None:
    kinds = config.distill_kind
    unknown = [k for k in kinds if k not in DISTILL_KINDS]
    if unknown:
        raise ConfigError(f"distill_kind {unknown} not in {DISTILL_KINDS}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"distill_kind lists a kind twice: {kinds}")
    if config.distill_weight < 0:
        raise ConfigError(f"distill_weight must be >= 0, got {config.distill_weight}")
    if config.distill_weight > 0 and not kinds:
        raise ConfigError("distill_weight > 0 needs at least one distill_kind")
    if config.multi_style and config.config_hash is not None:
        raise ConfigError("multi_style trains on every teacher config of the store; leave config_hash unset")
    if config.add_style_to is not None and config.weight_decay:
        raise ConfigError("add_style_to trains the new style's norms only; weight_decay would move the frozen styles, set it to 0")
    if config.add_style_to is not None and config.unfreeze_step is not None:
        raise ConfigError("add_style_to trains the new style's norms only; unfreeze_step would retrain the shared encoder "
                          "and change every other style, leave it unset")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")


def _check_optimisation(config: TrainConfig) -> None:
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {config.lr}")
    if not all(0 <= beta < 1 for beta in config.betas):
        raise ConfigError(f"betas must lie in [0, 1), got {config.betas}")
    for name in ("warmup_steps", "num_workers", "grad_clip", "weight_decay"):
        if not getattr(config, name) >= 0:  # "not >=": NaN is refused too
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    if config.lr_decay_steps is not None and config.lr_decay_steps <= config.warmup_steps:
        raise ConfigError(
            f"lr_decay_steps ({config.lr_decay_steps}) must be greater than warmup_steps ({config.warmup_steps})"
        )
    if not 0 <= config.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {config.min_lr_ratio}")
    if not 0 <= config.heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction must lie in [0, 1), got {config.heldout_fraction}")


def _check_counts(config: TrainConfig) -> None:
    for name in ("steps", "batch_size", "crop_size", "eval_size", "log_interval", "eval_interval",
                 "image_interval", "checkpoint_interval"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("eval_max_images", "unfreeze_step"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1 or None, got {value}")
    if config.image_samples < 0:
        raise ConfigError(f"image_samples must be >= 0, got {config.image_samples}")


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
        data = _without_legacy_fields(load_yaml(config_file))
    elif resume and run_dir is not None:
        data = _saved_config(Path(run_dir)) or {}
    try:
        config = from_dict(TrainConfig, data)
    except ConfigError as error:
        if config_file is None:
            raise
        raise ConfigError(f"{config_file}: {error}") from None
    overrides = dict(overrides or {})  # an explicit None is a value (e.g. config_hash: null)
    if overrides:
        coerced = from_dict(TrainConfig, {**to_dict(config), **overrides})
        config = replace(config, **{k: getattr(coerced, k) for k in overrides})
    if config.targets:
        config = replace(config, targets=str(Path(config.targets).resolve()))
    if config.add_style_to:  # absolute, like targets: a resume may start from another folder
        config = replace(config, add_style_to=str(Path(config.add_style_to).resolve()))
    return config


def saved_train_config(data: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` that a run saved (config.yaml, last_state.pt, a checkpoint's
    ``train_config``), also from earlier versions: their :data:`LEGACY_FIELDS` are dropped."""
    return from_dict(TrainConfig, _without_legacy_fields(data))


def check_resume_compatible(saved: Mapping[str, Any], config: TrainConfig) -> None:
    """:class:`ConfigError` when ``config`` differs from the ``saved`` run's config outside :data:`RESUMABLE_CHANGES`."""
    current = to_dict(config)
    saved = to_dict(saved_train_config(saved))
    if current["targets"] and saved.get("targets") and Path(current["targets"]).resolve() == Path(saved["targets"]).resolve():
        saved["targets"] = current["targets"]  # the same store, spelled differently
    changed = sorted(
        k for k in current
        if k not in RESUMABLE_CHANGES and current[k] != saved.get(k) and not (k in AUTO_FIELDS and current[k] is None)
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(f"cannot resume: these settings differ from the checkpointed run and would change it: {details}")


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


def is_saved_config(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is a config that a run saved (RUN_DIR/config.yaml): every TrainConfig field and nothing else."""
    return set(data) - LEGACY_FIELDS == {f.name for f in fields(TrainConfig)}


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config of the state the run resumes from (see :func:`load_resume_state`); None when it has none."""
    try:
        state = load_resume_state(run_dir, check_config=saved_train_config).state
    except MissingRunError:
        return None  # resuming then stops with this error, before any work
    return _without_legacy_fields(state["config"])


def _without_legacy_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in LEGACY_FIELDS}
