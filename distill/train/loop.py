"""Train a feed-forward student to reproduce the Gatys teacher: :func:`train`.

The objective (:mod:`distill.train.objective`) is the teacher's own criterion, rebuilt
from the target store, plus a distillation term that pulls the student's output towards
the teacher's image. Batches are a pure function of ``(seed, step)``
(:mod:`distill.train.data`), so a resumed run continues exactly; the files of a run
folder are described in :mod:`distill.train.runfiles`.

Colour-preserving stores (``criterion.luminance_only``): the teacher optimised luminance
and then put the content's chroma back (``transfer_luminance``). The student is built
with ``preserve_color=True`` (:class:`students.registry.ColourPreservingStudent`), so it
does the same inside the model: checkpoints, tiled inference and every export keep the
content's colours. Checkpoints also record ``luminance_only`` in their metadata.

It prints nothing: lines for a user go to ``log`` and progress to ``progress``, both
silent by default (the command line draws them on the console).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.config import replace, to_dict
from distill.core.devices import isolated_rng, resolve_device, synchronize
from distill.core.errors import ConfigError, NumericalError, StoreError, one_line
from distill.core.files import write_text_atomic
from distill.objective.criterion import StyleCriterion
from distill.objective.lossnet import is_random_weights
from distill.targets.pairs import TargetPairs
from distill.targets.store import TargetStore
from distill.train.config import TrainConfig, check_resume_compatible, is_saved_config, lr_at, saved_train_config
from distill.train.data import (
    CroppedPairs,
    StepBatchSampler,
    StylePairs,
    centre_square,
    collate_or_error,
    open_store,
    target_pairs,
)
from distill.train.distributed import DistInfo, all_mean, barrier, wrap
from distill.train.evaluate import evaluate, sample_grid
from distill.train.objective import backward_step, forward_objective, forward_style_objective
from distill.train.runfiles import (  # noqa: F401 - MissingRunError, RunExistsError: this module's API, as before
    MissingRunError,
    ResumeState,
    RunExistsError,
    RunFiles,
    RunFolderClaim,
    RunStateError,
    check_run_folder,
    checkpoint_paths,
    load_resume_state,
    save_state,
    set_rng_state,
    yaml_text,
)
from students import StudentCheckpointError, create_student, load_student, read_student_metadata
from students.checkpoint import save_student
from students.styles import StyleBound, extend_styles, one_hot_styles, train_only_styles

#: ``log(line)``: a line for the user (the run's set-up, evaluations, warnings).
LogCallback = Callable[[str], None]
#: ``progress(step, total, postfix=None)``: after every step; ``postfix`` (loss, images/s) at logged steps.
ProgressCallback = Callable[..., None]


class NonFiniteLossError(NumericalError):
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


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    store: TargetStore | None = None,
    log: LogCallback | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train ``config.student`` on the store ``config.targets``; write RUN_DIR (see :mod:`distill.train.runfiles`).

    ``resume``: continue from RUN_DIR/checkpoints/last_state.pt up to ``config.steps``
    (from previous_state.pt, with a warning, when last_state.pt is missing or unreadable).
    A new run refuses a folder that holds other files or another run
    (:func:`distill.train.runfiles.check_run_folder`), before any work; a run that fails
    before its first step is done removes what it created in ``run_dir``.
    ``store``: an already opened target store (default: ``TargetStore(config.targets)``).
    ``log`` and ``progress``: see :data:`LogCallback` and :data:`ProgressCallback`; None
    (or False) reports nothing. Inside a process group (the command line joins one under
    ``torchrun``, :func:`distill.train.distributed.process_group`) each process takes
    ``batch_size / world_size`` of every global batch, and only rank 0 writes files and
    reports. The student is initialised from ``config.seed`` on a random state of its own:
    the caller's random generators are left as they were. Raises
    :class:`NonFiniteLossError` on a NaN/Inf loss without saving anything after the last
    finite step.
    """
    run_dir = Path(run_dir)
    dist_info = DistInfo.current()
    log = (log or _silent) if dist_info.main else _silent
    device = _device(config.device, dist_info)
    resumed = _open_run(run_dir, config, resume=resume)
    if resumed is not None and resumed.warning:
        log(resumed.warning)
    claim = RunFolderClaim(run_dir) if dist_info.main else None
    loop = None
    try:
        data = _prepare_data(store, config, device)
        if resumed is not None:
            _check_same_styles(run_dir, data)
        if data.base_checkpoint is not None:  # the extended student decides the architecture
            config = replace(config, student=read_student_metadata(data.base_checkpoint)["student"]["name"])
        if config.smooth_output is None:  # decided by the teacher: photorealistic targets get a smoothed student
            config = replace(config, smooth_output=bool(data.extra["teacher_config"].get("photoreal_weight", 0.0)))
        data.extra["train_config"] = to_dict(config)  # as decided, in every checkpoint
        with isolated_rng(config.seed):
            model = _build_student(config, data, device, resumed)
            loop = _Loop(config, run_dir, data, model, device=device, dist_info=dist_info, log=log,
                         progress=(progress or None) if dist_info.main else None,
                         keep_previous_state=resumed is None or resumed.warning is None)
            try:
                loop.run()
            finally:
                loop.close()
    except BaseException:
        if claim is not None and (loop is None or loop.step == loop.start_step):
            claim.undo()  # failed before its first step: leave no half-made run behind
        raise
    paths = checkpoint_paths(run_dir)
    return TrainResult(
        run_dir=run_dir,
        step=loop.step,
        history=loop.history,
        evaluations=loop.evaluations,
        best=loop.best,
        last_checkpoint=paths["last"],
        best_checkpoint=paths["best"] if paths["best"].exists() else None,
    )


@dataclass
class _Style:
    """One style a run trains: its teacher config, criterion and pairs, and its index in the student."""

    name: str
    config_hash: str
    index: int  # the style's index among the student's styles (0 for a single-style student)
    criterion: StyleCriterion
    train_pairs: TargetPairs
    eval_pairs: TargetPairs  # the held-out pairs, or the training pairs when the store has none


@dataclass
class _Data:
    """The store's side of a run, ready before the student exists."""

    criterion: StyleCriterion  # the first trained style's (the only one of a single-style run)
    train_pairs: TargetPairs | StylePairs
    eval_split: str  # "heldout" or "train"
    extra: dict[str, Any]  # checkpoint metadata shared by every save of the run
    styles: list[_Style]  # the trained styles, in the order of StylePairs' "style" positions
    student_styles: list[str] | None = None  # every style name of a multi-style student, in index order
    base_checkpoint: Path | None = None  # add_style_to: the multi-style student the new styles join

    @property
    def multi_style(self) -> bool:
        return self.student_styles is not None


@dataclass
class _Model:
    """The student and its optimiser, fresh or as the resumed run left them."""

    student: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    start_step: int = 0
    resumed: bool = False
    best: dict[str, float] | None = None
    latest_eval: dict[str, float] | None = None


def _silent(_line: str) -> None:
    pass


def _device(name: str, dist_info: DistInfo) -> torch.device:
    """The configured device; a bare "cuda" is this process's GPU under ``torchrun``, else the current one."""
    device = resolve_device(name, local_rank=dist_info.local_rank if dist_info.world_size > 1 else None)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _open_run(run_dir: Path, config: TrainConfig, *, resume: bool) -> ResumeState | None:
    """The saved state of the run to resume (None for a new run), checked against ``config``.

    Refuses a folder this run must not write into (see :func:`check_run_folder`).
    """
    check_run_folder(run_dir, resume=resume, is_run_config=is_saved_config)
    if not resume:
        return None
    resumed = load_resume_state(run_dir, check_config=saved_train_config)
    check_resume_compatible(resumed.state["config"], config)
    return resumed


def _prepare_data(store: TargetStore | None, config: TrainConfig, device: torch.device) -> _Data:
    """Open the store, rebuild each trained style's criterion on ``device`` and split its targets."""
    if not config.targets and store is None:
        raise ConfigError("no target store given (config.targets / --targets)")
    if store is None:
        store = open_store(config.targets)
    base_styles, base_configs, base_checkpoint = _base_styles(config)
    config_hashes = _trained_configs(store, config, base_configs)
    pair_options = {"heldout_fraction": config.heldout_fraction}
    networks: dict[tuple, Any] = {}  # styles whose loss networks are equal share one
    styles = []
    names = _unique_names([store.style_name(h) for h in config_hashes], taken=base_styles)
    for position, (config_hash, name) in enumerate(zip(config_hashes, names)):
        key = store.loss_network_key(config_hash, weights=config.loss_weights)
        criterion = store.build_criterion(config_hash, device=device, weights=config.loss_weights,
                                          network=networks.get(key))
        networks.setdefault(key, criterion.network)
        criterion.requires_grad_(False)
        if config.channels_last:
            criterion = criterion.to(memory_format=torch.channels_last)
        train_pairs = target_pairs(store, split="train", config_hash=config_hash, **pair_options)
        if len(train_pairs) == 0:
            raise StoreError(f"the store {config.targets} has no training targets for teacher config {config_hash}")
        eval_pairs = target_pairs(store, split="heldout", config_hash=config_hash, **pair_options)
        styles.append(_Style(name, config_hash, len(base_styles) + position, criterion, train_pairs, eval_pairs))
    eval_split = "heldout" if all(len(style.eval_pairs) for style in styles) else "train"
    if eval_split == "train":
        for style in styles:
            style.eval_pairs = style.train_pairs
    if len({bool(style.criterion.luminance_only) for style in styles}) > 1:
        raise ConfigError("the styles mix colour-preserving and full-colour teachers; one student cannot do both")
    if len({bool(store.teacher_config(style.config_hash).photoreal_weight) for style in styles}) > 1:
        raise ConfigError("the styles mix photorealistic (--photoreal) and painting teachers; one student cannot do both "
                          "(its output is guided-filtered for all of its styles or for none)")
    multi = config.multi_style or config.add_style_to is not None
    criterion = styles[0].criterion
    weights = criterion.weights_description
    first = styles[0].config_hash
    extra = {
        "train_config": to_dict(config),
        "targets": str(Path(config.targets).resolve()) if config.targets else str(store.root),
        "config_hash": first,
        "teacher_config": to_dict(store.teacher_config(first)),
        "loss_network_weights": weights,
        "loss_network_random": is_random_weights(weights),
        "teacher_weights": sorted({str(entry.weights) for style in styles
                                   for entry in store.entries(style.config_hash, traces=False)} - {""}),
        "luminance_only": bool(criterion.luminance_only),
        "eval_split": eval_split,
    }
    if multi:
        # Which teacher config made each style: what add_style_to needs to know what a student holds.
        extra["style_configs"] = [*base_configs, *config_hashes]
    return _Data(
        criterion,
        StylePairs([style.train_pairs for style in styles]) if multi else styles[0].train_pairs,
        eval_split,
        extra,
        styles,
        student_styles=[*base_styles, *(style.name for style in styles)] if multi else None,
        base_checkpoint=base_checkpoint,
    )


def _check_same_styles(run_dir: Path, data: _Data) -> None:
    """A resumed multi-style run must train the styles it started with (the store may have gained some since)."""
    last = checkpoint_paths(run_dir)["last"]
    if not data.multi_style or not last.exists():
        return
    try:
        saved = read_student_metadata(last)["extra"].get("style_configs")
    except StudentCheckpointError:
        return  # an unreadable last checkpoint: the resume itself reports on the run's state
    if saved is not None and list(saved) != data.extra["style_configs"]:
        now = dict(zip(data.extra["style_configs"][-len(data.styles):], (style.name for style in data.styles)))
        added = [now[h] for h in now if h not in saved]
        removed = [h[:16] for h in saved if h not in data.extra["style_configs"]]
        change = "; ".join(part for part in (
            f"new: {', '.join(added)}" if added else "", f"gone: teacher config(s) {', '.join(removed)}" if removed else "",
        ) if part) or "reordered"
        raise ConfigError(
            f"cannot resume: the store's styles changed since the run started ({change}); start a new run, or add "
            "new styles to its checkpoint with add_style_to (--add-style)"
        )


def _base_styles(config: TrainConfig) -> tuple[list[str], list[str], Path | None]:
    """(style names, their teacher configs, checkpoint) of the student that ``add_style_to`` extends."""
    if config.add_style_to is None:
        return [], [], None
    path = Path(config.add_style_to)
    metadata = read_student_metadata(path)
    names = metadata["student"]["kwargs"].get("styles")
    if not names:
        raise ConfigError(f"{path}: is a single-style student; add_style_to needs one trained with multi_style")
    configs = list(metadata["extra"].get("style_configs") or [])
    if len(configs) != len(names):
        raise ConfigError(f"{path}: does not record which teacher config made each of its {len(names)} styles; "
                          "add_style_to needs a checkpoint of a multi_style training run")
    return list(names), configs, path


def _trained_configs(store: TargetStore, config: TrainConfig, base_configs: list[str]) -> list[str]:
    """The teacher configs this run trains: the chosen one, or with ``multi_style`` every one
    of the store (ordered by style name), less those the extended student already holds."""
    if not config.multi_style:
        chosen = store.resolve_config(config.config_hash)
        if chosen in base_configs:
            raise ConfigError(f"{config.add_style_to}: already holds the style of teacher config {chosen[:16]}")
        return [chosen]
    hashes = [h for h in store.config_hashes() if h not in base_configs]
    if not hashes:
        where = f" that {config.add_style_to} does not already hold" if base_configs else ""
        raise StoreError(f"{store.root}: the store has no teacher configs{where}")
    return sorted(hashes, key=lambda h: (store.style_name(h), h))


def _unique_names(names: list[str], *, taken: list[str]) -> list[str]:
    """``names`` with a suffix (#2, #3, ...) on any that repeats one before it or one already ``taken``."""
    seen, unique = set(taken), []
    for name in names:
        candidate, count = name, 1
        while candidate in seen:
            count += 1
            candidate = f"{name}#{count}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _build_student(config: TrainConfig, data: _Data, device: torch.device, resumed: ResumeState | None) -> _Model:
    """The student, its optimiser and loss scaler; with ``resumed``, as the saved run left them (random state too)."""
    student = _new_student(config, data).to(device)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    model = _Model(student, optimizer, torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"))
    if resumed is not None:
        state = resumed.state
        try:
            student.load_state_dict(state["model"])
            _apply_freeze(student, config, state["step"] + 1)
            optimizer.load_state_dict(state["optimizer"])
            model.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            model.best = dict(state["best"]) or None
            model.latest_eval = dict(state.get("latest_eval", {})) or None
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise RunStateError(
                f"{resumed.path}: does not fit the run's {config.student} student "
                f"({one_line(error, first_line=True, limit=200)})"
            ) from None
        model.start_step, model.resumed = int(state["step"]), True
    student.train()
    return model


def _new_student(config: TrainConfig, data: _Data) -> nn.Module:
    """A fresh student for the run, or (``add_style_to``) the extended student with only its new styles trainable."""
    luminance_only = bool(data.criterion.luminance_only)
    if data.base_checkpoint is None:
        # A colour-preserving teacher's student carries the chroma transfer inside the model, a
        # photorealistic teacher's student its affine smoothing (TrainConfig.smooth_output).
        return create_student(config.student, preserve_color=luminance_only, smooth_output=bool(config.smooth_output),
                              styles=data.student_styles, **config.student_kwargs)
    base, metadata = load_student(data.base_checkpoint)
    if bool(metadata["extra"].get("luminance_only")) != luminance_only:
        raise ConfigError(f"{data.base_checkpoint}: its styles and the new one differ in colour preservation; "
                          "one student cannot do both")
    if bool(metadata["student"]["kwargs"].get("smooth_output")) != bool(config.smooth_output):
        raise ConfigError(f"{data.base_checkpoint}: its styles and the new one differ in photorealism (smooth_output); "
                          "one student cannot do both")
    student = extend_styles(base, [style.name for style in data.styles])
    train_only_styles(student, [style.index for style in data.styles])
    return student


def _apply_freeze(student: nn.Module, config: TrainConfig, step: int) -> bool:
    """Unfreeze a timm_encoder's encoder once ``step >= unfreeze_step``; True when it changed now."""
    if config.unfreeze_step is None or not hasattr(student, "unfreeze_encoder"):
        return False
    if step >= config.unfreeze_step and getattr(student, "encoder_frozen", False):
        student.unfreeze_encoder()
        return True
    return False


def _make_loader(config: TrainConfig, pairs: TargetPairs, *, start_step: int, dist_info: DistInfo,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """This process's batches of steps ``start_step + 1 .. config.steps``, cropped."""
    return torch.utils.data.DataLoader(
        CroppedPairs(pairs, crop_size=config.crop_size, hflip=config.hflip),
        batch_sampler=StepBatchSampler(
            count=len(pairs), batch_size=config.batch_size, seed=config.seed,
            first_step=start_step + 1, last_step=config.steps,
            rank=dist_info.rank, world_size=dist_info.world_size,
        ),
        num_workers=config.num_workers,
        collate_fn=collate_or_error,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
    )


def _preview(config: TrainConfig, data: _Data) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Rows of the sample grid: (photo, teacher, style weights or None); with several styles,
    each row shows the next style (on its first held-out photo)."""
    rows = []
    for row in range(config.image_samples):
        style = data.styles[row % len(data.styles)]
        index = row // len(data.styles)
        if index >= len(style.eval_pairs):
            continue
        pair = style.eval_pairs[index]
        weights = one_hot_styles([style.index], len(data.student_styles)) if data.multi_style else None
        rows.append((centre_square(pair["content"], config.eval_size), centre_square(pair["target"], config.eval_size), weights))
    return rows


def _announce(log: LogCallback, config: TrainConfig, data: _Data, *, start_step: int, device: torch.device,
              dist_info: DistInfo) -> None:
    """The run's set-up in a few lines, with warnings for random loss-network weights and a missing held-out split."""
    where = f"{device}" + (f" x {dist_info.world_size} processes" if dist_info.world_size > 1 else "")
    action = f"resuming at step {start_step}" if start_step else "starting"
    heldout_count = sum(len(style.eval_pairs) for style in data.styles) if data.eval_split == "heldout" else 0
    log(f"train: {action}; student {config.student}, {len(data.train_pairs)} train / {heldout_count} held-out targets, "
        f"{config.steps} steps, batch {config.batch_size}, {config.precision} on {where}")
    if data.multi_style:
        trained = ", ".join(f"{style.index}: {style.name}" for style in data.styles)
        if data.base_checkpoint is not None:
            log(f"train: adding style(s) {trained} to {data.base_checkpoint} ({len(data.student_styles) - len(data.styles)} "
                "styles kept as they are; only the new styles' norms train; the architecture is the checkpoint's)")
        else:
            log(f"train: {len(data.styles)} styles in one student (conditional instance norm): {trained}")
    log(f"train: loss network weights: {data.extra['loss_network_weights']}")
    if data.extra["loss_network_random"]:
        log("WARNING: the loss network has RANDOM weights: a seeded random texture network, not learned "
            "VGG-19 features (recorded in the checkpoint metadata).")
    if data.eval_split != "heldout":
        log("WARNING: the store has no held-out targets; best.safetensors is chosen on training targets.")
    torn = data.train_pairs.torn_manifest_lines
    if torn:
        where = ", ".join(f"{count} in {path}" for path, count in sorted(torn.items()))
        log(f"WARNING: {sum(torn.values())} torn manifest line(s) ignored ({where}): a target generator was killed "
            "mid-line or is still writing; those targets are left out. Run generate_targets.py --verify on the store.")


class _Loop:
    """One invocation's steps, from the step after the resumed one to ``config.steps``, and what they write."""

    def __init__(self, config: TrainConfig, run_dir: Path, data: _Data, model: _Model, *, device: torch.device,
                 dist_info: DistInfo, log: LogCallback, progress: ProgressCallback | None,
                 keep_previous_state: bool = True) -> None:
        self.config, self.data, self.device, self.dist_info = config, data, device, dist_info
        self.student, self.optimizer, self.scaler = model.student, model.optimizer, model.scaler
        self.best, self.latest_eval = model.best, model.latest_eval
        self.start_step = self.step = model.start_step
        self.last_saved_step = model.start_step if model.resumed else None
        self.log, self.progress = log, progress
        self.paths = checkpoint_paths(run_dir)
        # last_state.pt becomes previous_state.pt at each save, unless it is the unusable file a resume fell back from.
        self.keep_previous_state = keep_previous_state
        self.history: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []
        self.teacher_caches: dict[int, dict[int, float]] = {}  # per trained style: held-out index -> teacher's criterion
        self.files = RunFiles(run_dir, start_step=self.start_step) if dist_info.main else None
        self.preview: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            if self.files is not None:
                write_text_atomic(run_dir / "config.yaml", yaml_text(to_dict(config)))
                _announce(log, config, data, start_step=self.start_step, device=device, dist_info=dist_info)
                self.files.describe(config, data.extra["loss_network_weights"], self.start_step)
                self.preview = _preview(config, data)
            self.loader = _make_loader(config, data.train_pairs, start_step=self.start_step, dist_info=dist_info,
                                       device=device)
            self.model = wrap(self.student, config, dist_info, device)
        except BaseException:
            self.close()  # the TensorBoard writer's thread must not outlive a run that could not start
            raise
        self.interval_images, self.interval_start = 0, time.perf_counter()

    def run(self) -> None:
        config = self.config
        for step, batch in zip(range(self.start_step + 1, config.steps + 1), self.loader):
            if isinstance(batch, Exception):
                raise batch  # a target that could not be read (see collate_or_error)
            content, target, *styles = batch  # a multi-style batch also names each image's style
            if _apply_freeze(self.student, config, step):
                # DDP only tracks the parameters that are trainable when it wraps the student.
                self.model = wrap(self.student, config, self.dist_info, self.device)
            lr = lr_at(step, config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            record = self._train_step(step, lr, content, target, styles[0] if styles else None)
            self.step = step
            self._log_step(step, record)
            self._periodic_writes(step, lr)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def _train_step(self, step: int, lr: float, content: torch.Tensor, target: torch.Tensor,
                    styles: torch.Tensor | None) -> dict[str, float]:
        """Forward, the all-reduced terms, the non-finite check and the update of one step; its record."""
        content = content.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.config.channels_last:
            content = content.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        if styles is None:
            objective, terms = forward_objective(
                self.model, self.data.criterion, content, target, config=self.config, device=self.device
            )
        else:
            objective, terms = forward_style_objective(
                self.model, [style.criterion for style in self.data.styles], content, target, styles,
                model_styles=[style.index for style in self.data.styles], style_count=len(self.data.student_styles),
                config=self.config, device=self.device,
            )
        names = list(terms)
        reduced = all_mean(torch.stack([terms[n].detach().float() for n in names]), self.dist_info).cpu()
        bad = [(n, float(v)) for n, v in zip(names, reduced) if not math.isfinite(float(v))]
        if bad:
            term, value = next(((n, v) for n, v in bad if n not in ("criterion", "objective", "distill")), bad[0])
            raise NonFiniteLossError(step, term, value, self.last_saved_step)
        backward_step(objective, self.student, self.optimizer, self.scaler, grad_clip=self.config.grad_clip)
        record = {"step": step, "lr": lr, **{n: float(v) for n, v in zip(names, reduced)}}
        self.history.append(record)
        return record

    def _log_step(self, step: int, record: dict[str, float]) -> None:
        """metrics.jsonl and TensorBoard every ``log_interval`` steps (with images/s), progress every step."""
        self.interval_images += self.config.batch_size
        postfix = None
        if step % self.config.log_interval == 0 or step == self.config.steps:
            synchronize(self.device)
            now = time.perf_counter()
            rate = self.interval_images / max(now - self.interval_start, 1e-9)
            self.interval_images, self.interval_start = 0, now
            if self.files is not None:
                self.files.record(step, "train", {**{k: v for k, v in record.items() if k != "step"}, "images_per_sec": rate})
            postfix = f"loss={record['objective']:.4g}, img_s={rate:.1f}"
        if self.progress is not None:
            self.progress(step, self.config.steps, postfix=postfix)

    def _periodic_writes(self, step: int, lr: float) -> None:
        """Sample grid, evaluation (and best checkpoint), last checkpoint: each at its interval and at the last step."""
        config = self.config
        last = step == config.steps
        image_due, eval_due, checkpoint_due = (
            step % interval == 0 or last
            for interval in (config.image_interval, config.eval_interval, config.checkpoint_interval)
        )
        finite = (bool(torch.isfinite(p).all()) for p in self.student.parameters())
        if (image_due or eval_due or checkpoint_due) and not all(finite):
            # A finite loss can still produce an inf gradient; never save what it did.
            raise NonFiniteLossError(step, "weights", math.nan, self.last_saved_step)
        if self.files is not None and image_due and self.preview:
            grid = sample_grid(self.student, self.preview, luminance_only=self.data.criterion.luminance_only, device=self.device)
            self.files.image(step, grid)
        if self.files is not None and eval_due:
            self._evaluate(step)
        if checkpoint_due:
            if self.files is not None:
                # "heldout": the latest evaluation, with its own "step" (may precede this one).
                extra = {**self.data.extra, "step": step, "kind": "last", "best": self.best, "heldout": self.latest_eval}
                save_student(self.student, self.paths["last"], extra=extra)
                save_state(self.paths["state"], self.student, self.optimizer, self.scaler, config, step, self.best, lr,
                           self.latest_eval,
                           keep_previous=self.paths["previous_state"] if self.keep_previous_state else None)
                self.keep_previous_state = True
            self.last_saved_step = step
            barrier(self.dist_info)

    def _evaluate_styles(self) -> dict[str, float]:
        """Held-out metrics of each trained style (a multi-style student bound to it); their mean,
        plus ``ssim/<style>`` per style when there are several."""
        per_style = []
        for position, style in enumerate(self.data.styles):
            student = self.student
            if self.data.multi_style:
                student = StyleBound(student, one_hot_styles([style.index], len(self.data.student_styles)))
            per_style.append(evaluate(student, style.criterion, style.eval_pairs, config=self.config, device=self.device,
                                      teacher_cache=self.teacher_caches.setdefault(position, {})))
        if len(per_style) == 1:
            return per_style[0]
        names = per_style[0].keys() & set.intersection(*(set(metrics) for metrics in per_style))
        evaluated = {name: sum(metrics[name] for metrics in per_style) / len(per_style) for name in sorted(names)}
        evaluated.update({f"ssim/{style.name}": metrics["ssim"] for style, metrics in zip(self.data.styles, per_style)})
        return evaluated

    def _evaluate(self, step: int) -> None:
        """Evaluate on the held-out pairs, record and report it, and keep the best student so far."""
        split = self.data.eval_split
        evaluated = self._evaluate_styles()
        self.latest_eval = {"step": step, **evaluated}
        self.evaluations.append(self.latest_eval)
        self.files.record(step, split if split == "heldout" else "train_eval", evaluated)
        self.log(f"step {step}: {split} SSIM to teacher {evaluated['ssim']:.4f}, criterion "
                 f"{evaluated['total']:.5g} (teacher {evaluated.get('teacher_total', float('nan')):.5g})")
        if self.best is None or evaluated["ssim"] > self.best["ssim"]:
            self.best = {"step": step, "ssim": evaluated["ssim"], "total": evaluated["total"]}
            save_student(self.student, self.paths["best"], extra={**self.data.extra, "step": step, "kind": "best",
                                                                  "heldout": self.latest_eval, "best": self.best})
