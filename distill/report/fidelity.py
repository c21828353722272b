"""Teacher vs student fidelity: how close a trained student comes to the Gatys teacher.

For every content image of a store split (by default the held-out one) the student runs
on the stored content image at the teacher's size, and this module measures, with the
store's own criterion (:meth:`distill.targets.store.TargetStore.build_criterion`, never a
re-implementation of the losses):

* the teacher objective (total and each term) of the student output, the teacher target
  and the content image, and the student/teacher ratios;
* the equivalent teacher iterations k* (:func:`equivalent_iterations`): how many L-BFGS
  iterations the teacher needed to do as well as the student (Johnson et al. 2016, Fig. 5);
* PSNR and SSIM of student vs teacher images, and Gram-embedding distances between
  student, teacher and style;
* speed: teacher seconds/image vs student milliseconds/image on the same device type;
* a t-SNE of Gram-matrix style embeddings of style image(s), teacher outputs, student
  outputs and contents.

:func:`evaluate_fidelity` gathers everything into a :class:`FidelityResult` whose
``report`` is a plain dict (what ``report.json`` holds); :mod:`distill.report.files`
writes the files. ``scripts/compare.py`` is the command line.

Conventions
-----------
* Images are measured as 8-bit images, i.e. what a PNG holds: the teacher target is read
  from the store's PNG, and the student output is rounded to 8-bit levels (and, for a
  colour-preserving store, gets the content's chroma back as the teacher's did).
* Identical images have PSNR = ``inf``. In Python every number stays a float (``inf``
  included); in ``report.json`` every non-finite float is written as the string
  ``"inf"``, ``"-inf"`` or ``"nan"`` (:func:`json_safe`), never as bare ``Infinity``.
* Ratios are student / teacher per image; the aggregate ``ratio.mean`` is the mean of the
  per-image ratios (what ``--max-objective-ratio`` gates), ``ratio.of_means`` the ratio of
  the mean objectives.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.color import transfer_luminance
from distill.core.config import to_dict
from distill.core.devices import resolve_device
from distill.core.errors import StoreError
from distill.core.imageio import quantize_8bit, resize_image
from distill.core.metrics import psnr, ssim
from distill.objective.criterion import StyleCriterion
from distill.objective.lossnet import is_random_weights
from distill.report.aggregate import aggregate, k_star_text
from distill.report.measures import (
    TERMS,
    default_embedding_layers,
    embedding_distances,
    equivalent_iterations,
    finest_scale_trace,
    safe_ratio,
    style_embeddings,
    style_target_embedding,
)
from distill.report.options import (
    JSON_CONVENTIONS,
    REPORT_FORMAT,
    REPORT_VERSION,
    FidelityInputError,
    FidelityOptions,
    FidelityResult,
    resolve_checkpoint,
)
from distill.report.speed import measure_speed
from distill.report.stylemetrics import match_colour_statistics, stylisation_figures
from distill.report.tsne import tsne_2d
from distill.targets.generation import teacher_on_mirrored
from distill.targets.pairs import TargetPairs
from distill.targets.store import TargetEntry, TargetStore
from students import load_student, read_student_metadata
from students.styles import StyleBound, one_hot_styles, style_names_of


@torch.no_grad()
def compare_images(
    criterion: StyleCriterion,
    content: torch.Tensor,
    teacher: torch.Tensor,
    student: torch.Tensor,
    *,
    embedding_layers: Sequence[str] | None = None,
    style: torch.Tensor | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Metrics of student vs teacher images that share one content image each.

    ``content``, ``teacher``, ``student``: (B, 3, H, W) in [0, 1], the same shape, on the
    criterion's device. Returns ``(records, embeddings)``: one record per image with
    ``objective`` ({"student"|"teacher"|"content": {total, content, style, tv}}), ``ratio``
    (student / teacher per term), ``psnr``, ``ssim`` and ``gram_distance``
    (:func:`embedding_distances` against the criterion's style target); and the Gram
    embeddings {"student"|"teacher"|"content": (B, D)} for t-SNE.

    With ``style`` (3, h, w), each record also has ``baselines``: SSIM and PSNR to the
    teacher of two images that need no student (the content itself, and the content
    recoloured to the style's colour mean and covariance), and ``stylisation``: the
    loss-network-free figures of :mod:`distill.report.stylemetrics` for teacher and student.
    """
    if not (content.shape == teacher.shape == student.shape) or content.dim() != 4:
        raise ValueError(
            f"content, teacher and student must share one (B, 3, H, W) shape, got "
            f"{tuple(content.shape)}, {tuple(teacher.shape)}, {tuple(student.shape)}"
        )
    layers = tuple(embedding_layers or default_embedding_layers(criterion))
    batch = content.shape[0]
    content_targets = criterion.content_targets(content)
    repeated = {name: value.repeat(3, *([1] * (value.dim() - 1))) for name, value in content_targets.items()}
    terms = criterion(torch.cat([student, teacher, content]), content_targets=repeated)
    embeddings_all = style_embeddings(criterion, torch.cat([student, teacher, content]), layers)
    embeddings = {
        "student": embeddings_all[:batch],
        "teacher": embeddings_all[batch : 2 * batch],
        "content": embeddings_all[2 * batch :],
    }
    e_style = style_target_embedding(criterion, layers)
    records = []
    for i in range(batch):
        objective = {"student": terms.item(i), "teacher": terms.item(batch + i), "content": terms.item(2 * batch + i)}
        record = {
            "objective": objective,
            "ratio": {t: safe_ratio(objective["student"][t], objective["teacher"][t]) for t in TERMS},
            "psnr": psnr(student[i], teacher[i]),
            "ssim": ssim(student[i], teacher[i]),
            "gram_distance": embedding_distances(embeddings["student"][i], embeddings["teacher"][i], e_style),
        }
        if style is not None:
            record.update(_baselines_and_stylisation(content[i], teacher[i], student[i], style))
        records.append(record)
    return records, embeddings


def _baselines_and_stylisation(
    content: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor, style: torch.Tensor
) -> dict[str, Any]:
    content, teacher, student, style = (x.detach().float().cpu() for x in (content, teacher, student, style))
    recoloured = quantize_8bit(match_colour_statistics(content, style))
    return {
        "baselines": {
            "content": {"ssim": ssim(content, teacher), "psnr": psnr(content, teacher)},
            "recoloured": {"ssim": ssim(recoloured, teacher), "psnr": psnr(recoloured, teacher)},
        },
        "stylisation": {
            "teacher": stylisation_figures(teacher, content, style).as_dict(),
            "student": stylisation_figures(student, content, style).as_dict(),
        },
    }


def _short_name(path: str, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40].strip("_")
    return stem or f"image{index}"


def prepare(run_dir: str | Path | None, store_root: str | Path, options: FidelityOptions):
    """Check inputs before any heavy work; returns (checkpoint path, metadata, store, pairs, config hash, heldout fraction).

    Raises :class:`FidelityInputError` (or the store's / checkpoint's own errors) with one clear line.
    """
    checkpoint = resolve_checkpoint(run_dir, options.checkpoint)
    metadata = read_student_metadata(checkpoint)
    extra = metadata.get("extra") or {}
    store_path = Path(store_root)
    if not store_path.is_dir():
        raise FidelityInputError(f"{store_path}: no such target store")
    store = TargetStore(store_path)
    wanted = options.config_hash or extra.get("config_hash")
    try:
        config_hash = store.resolve_config(wanted)
    except StoreError as exc:
        if options.config_hash is None and extra.get("config_hash"):
            raise FidelityInputError(
                f"the student was trained on teacher config {str(extra['config_hash'])[:16]} "
                f"(store {extra.get('targets', '?')}), which {store_path} does not have: {exc}"
            ) from None
        raise
    heldout_fraction = options.heldout_fraction
    if heldout_fraction is None:
        heldout_fraction = float((extra.get("train_config") or {}).get("heldout_fraction", 0.1))
    pairs = TargetPairs(store, split=options.split, config_hash=config_hash, heldout_fraction=heldout_fraction)
    if len(pairs) == 0:
        total = len(store.entries(config_hash))
        hint = " (held-out fraction 0)" if options.split == "heldout" and heldout_fraction == 0 else ""
        raise FidelityInputError(
            f"the {options.split} split of {store_path} (config {config_hash[:16]}) is empty{hint}: "
            f"{total} target(s) in total; generate more targets or pass --split all"
        )
    return checkpoint, metadata, store, pairs, config_hash, heldout_fraction


def _bind_style(student: torch.nn.Module, metadata: dict[str, Any], config_hash: str) -> torch.nn.Module:
    """A multi-style student bound to the style that ``config_hash``'s teacher painted (one-hot);
    a single-style student as it is."""
    names = style_names_of(student)
    if names is None:
        return student
    configs = list((metadata.get("extra") or {}).get("style_configs") or [])
    if config_hash not in configs:
        raise FidelityInputError(
            f"the multi-style student holds {len(names)} styles ({', '.join(names)}), none of them from teacher "
            f"config {config_hash[:16]}; pass --config-hash of one of its styles"
        )
    return StyleBound(student, one_hot_styles([configs.index(config_hash)], len(names)))


def evaluate_fidelity(
    *,
    run_dir: str | Path | None,
    store_root: str | Path,
    options: FidelityOptions = FidelityOptions(),
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FidelityResult:
    """Evaluate a student checkpoint against its teacher's targets (see the module docs).

    ``device``: an already resolved device (else ``options.device``, with ``auto`` picking
    CUDA when available). ``progress(done, total)`` is called after every image.
    """
    checkpoint, metadata, store, pairs, config_hash, heldout_fraction = prepare(run_dir, store_root, options)
    if device is None:
        device = resolve_device(options.device)
    teacher_config = store.teacher_config(config_hash)
    criterion = store.build_criterion(config_hash, device=device, weights=options.weights)
    criterion.requires_grad_(False)
    layers = tuple(options.embedding_layers or default_embedding_layers(criterion))
    for layer in layers:
        if layer not in criterion.style_layers:
            raise FidelityInputError(f"embedding layer {layer!r} is not one of the style layers {', '.join(criterion.style_layers)}")
    student, metadata = load_student(checkpoint, device=device)
    student = _bind_style(student, metadata, config_hash).eval()

    count = len(pairs) if options.max_images is None else min(len(pairs), options.max_images)
    # Baselines and stylisation figures are measured against the (first) style, as the teacher saw it.
    reference_style = store.style_images(config_hash)[0]
    measured = _Measured()
    for index in range(count):
        measured.add(*_measure_image(student, criterion, pairs, store, index, layers=layers, style=reference_style, device=device))
        if progress is not None:
            progress(index + 1, count)

    if options.teacher_self_agreement:
        _add_teacher_self_agreement(measured, criterion, teacher_config, reference_style, device)

    entries = [pairs.entry(i) for i in range(count)]
    content = measured.contents[0].unsqueeze(0).to(device)
    speed = measure_speed(student, criterion, teacher_config, content, entries, device, options)
    if speed["teacher_source"] != "store":
        for record in measured.records:
            k = record["equivalent_iterations"]
            record["teacher_seconds_to_match"] = None if k is None else k * speed["teacher_seconds_per_iteration"]

    # t-SNE: style image(s) as the criterion saw them, then teacher, student and content embeddings.
    styles = store.style_images(config_hash)
    style_size = teacher_config.criterion.style_size
    styles = [resize_image(s, long_side=style_size) if style_size else s for s in styles]
    style_embedded = [style_embeddings(criterion, s.unsqueeze(0).to(device), layers)[0] for s in styles]
    groups = ["style"] * len(styles) + ["teacher"] * count + ["student"] * count + ["content"] * count
    labels = [f"style {j}" for j in range(len(styles))] + [
        f"{g}: {n}" for g in ("teacher", "student", "content") for n in measured.names
    ]
    matrix = np.stack(style_embedded + measured.embeddings["teacher"] + measured.embeddings["student"] + measured.embeddings["content"])
    points, tsne_info = tsne_2d(matrix, random_state=options.tsne_seed)
    tsne = {
        **tsne_info,
        "layers": list(layers),
        "coordinates": [{"group": g, "label": label, "x": float(p[0]), "y": float(p[1])} for g, label, p in zip(groups, labels, points)],
    }

    report = _report(
        run_dir, checkpoint, metadata, store, config_hash, pairs, options,
        heldout_fraction=heldout_fraction, count=count, weights=criterion.weights_description, device=device,
        layers=layers, parameters=sum(p.numel() for p in student.parameters()), records=measured.records,
        speed=speed, tsne=tsne,
    )
    return FidelityResult(
        report=report,
        contents=measured.contents,
        teachers=measured.teachers,
        students=measured.outputs,
        styles=styles,
        names=measured.names,
        tsne_points=points,
        tsne_groups=groups,
        tsne_images=list(styles) + measured.teachers + measured.outputs + measured.contents,
    )


class _Measured:
    """Per-image results in evaluation order: records, Gram embeddings and the three images."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.embeddings: dict[str, list[np.ndarray]] = {"student": [], "teacher": [], "content": []}
        self.contents: list[torch.Tensor] = []
        self.teachers: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, record: dict[str, Any], embedded: dict[str, np.ndarray], images: tuple[torch.Tensor, ...]) -> None:
        self.records.append(record)
        for group in self.embeddings:
            self.embeddings[group].append(embedded[group][0])
        content, teacher, output = images
        self.contents.append(content[0].cpu())
        self.teachers.append(teacher[0].cpu())
        self.outputs.append(output[0].cpu())
        self.names.append(record["name"])


def _add_teacher_self_agreement(
    measured: _Measured, criterion: StyleCriterion, teacher_config, style: torch.Tensor, device: torch.device
) -> None:
    """Each record's ``self_agreement``: SSIM / PSNR of the teacher's result on the mirrored photo to the stored target."""
    if criterion.region_classes is not None:
        # The mirrored photo would need mirrored masks that the store does not keep per photo.
        return
    for record, content, teacher in zip(measured.records, measured.contents, measured.teachers):
        mirrored = teacher_on_mirrored(criterion, content.unsqueeze(0).to(device), teacher_config, style_image=style.to(device))
        mirrored = mirrored[0].detach().cpu()
        record["self_agreement"] = {"ssim": ssim(mirrored, teacher), "psnr": psnr(mirrored, teacher)}


def _measure_image(
    student: torch.nn.Module,
    criterion: StyleCriterion,
    pairs: TargetPairs,
    store: TargetStore,
    index: int,
    *,
    layers: Sequence[str],
    style: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The record of image ``index`` of ``pairs`` (student output as an 8-bit image vs the teacher's target)."""
    item, entry = pairs[index], pairs.entry(index)
    content = item["content"].unsqueeze(0).to(device)
    teacher = item["target"].unsqueeze(0).to(device)
    with torch.inference_mode():
        output = student(content).float()
    output = output.clone()
    if output.shape != content.shape:
        raise FidelityInputError(
            f"student output {tuple(output.shape)} does not match its input {tuple(content.shape)} for {entry.key}"
        )
    if criterion.luminance_only:
        output = transfer_luminance(output, content)
    output = quantize_8bit(output)
    (record,), embedded = compare_images(criterion, content, teacher, output, embedding_layers=layers, style=style)
    record.update(_teacher_comparison(record, store.trace(entry), entry, index=index, size=content.shape[-2:]))
    return record, embedded, (content, teacher, output)


def _teacher_comparison(
    record: dict[str, Any], trace: dict[str, list[float]], entry: TargetEntry, *, index: int, size: Sequence[int]
) -> dict[str, Any]:
    """k* against the teacher's trace, and what the store recorded about the teacher's run."""
    k = equivalent_iterations(finest_scale_trace(trace), record["objective"]["student"]["total"])
    per_iteration = entry.seconds / max(1, entry.iterations_run)
    return {
        "index": index,
        "key": entry.key,
        "name": _short_name(entry.content_path, index),
        "content_path": entry.content_path,
        "size": list(size),
        "equivalent_iterations": k,
        "equivalent_iterations_reached": k is not None,
        "equivalent_iterations_text": k_star_text(k, entry.iterations_run),
        "teacher_iterations_run": entry.iterations_run,
        "teacher_stop_reason": entry.stop_reason,
        "teacher_final_in_store": dict(entry.final),
        "teacher_recomputed_vs_store": safe_ratio(
            record["objective"]["teacher"]["total"] - entry.final["total"], abs(entry.final["total"])
        ),
        "teacher_seconds_in_store": entry.seconds,
        "teacher_device_in_store": entry.device,
        "teacher_seconds_to_match": None if k is None else k * per_iteration,
    }


def _report(
    run_dir: str | Path | None,
    checkpoint: Path,
    metadata: dict[str, Any],
    store: TargetStore,
    config_hash: str,
    pairs: TargetPairs,
    options: FidelityOptions,
    *,
    heldout_fraction: float,
    count: int,
    weights: str,
    device: torch.device,
    layers: Sequence[str],
    parameters: int,
    records: list[dict[str, Any]],
    speed: dict[str, Any],
    tsne: dict[str, Any],
) -> dict[str, Any]:
    """The report as a plain dict: what ``report.json`` holds."""
    extra = metadata.get("extra") or {}
    random_weights = is_random_weights(weights)
    teacher_weights = sorted({e.weights for e in store.entries(config_hash)})
    warnings = _warnings(store, options, extra, weights=weights, teacher_weights=teacher_weights, count=count, split_images=len(pairs))
    if options.teacher_self_agreement and not all("self_agreement" in r for r in records):
        warnings.append("the teacher's self-agreement is not measured for a store with semantic masks (the mirrored "
                        "photo would need mirrored masks, which the store does not keep)")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "json_conventions": JSON_CONVENTIONS,
        "weights": weights,  # starts with "random" when the loss network was not pretrained
        "random_weights": random_weights,
        "teacher_weights": teacher_weights,
        "run": {
            "run_dir": str(Path(run_dir).resolve()) if run_dir is not None else None,
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_kind": options.checkpoint if options.checkpoint in ("best", "last") else "path",
            "student": metadata.get("student"),
            "parameters": parameters,
            "step": extra.get("step"),
            "trained_on": extra.get("targets"),
            "trained_heldout": extra.get("heldout"),
        },
        "targets": {
            "store": str(store.root),
            "config_hash": config_hash,
            "teacher_config": to_dict(store.teacher_config(config_hash)),
            "split": options.split,
            "heldout_fraction": heldout_fraction,
            "split_images": len(pairs),
            "images": count,
            "style_files": [str(p) for p in store.style_paths(config_hash)],
        },
        "device": str(device),
        "embedding_layers": list(layers),
        "aggregate": aggregate(records),
        "speed": speed,
        "images": records,
        "tsne": tsne,
        "warnings": warnings,
    }
    if random_weights:
        report["warning"] = warnings[0]
    return report


def _warnings(
    store: TargetStore,
    options: FidelityOptions,
    extra: dict[str, Any],
    *,
    weights: str,
    teacher_weights: list[str],
    count: int,
    split_images: int,
) -> list[str]:
    """What a reader of the report must know before trusting its numbers; the random-weights warning first."""
    warnings: list[str] = []
    if is_random_weights(weights):
        warnings.append(
            "the loss network has RANDOM weights: objectives, ratios, k* and Gram distances are those of a random "
            "texture model, not learned features; the agreement and stylisation figures do not use the loss network"
        )
    if options.weights is not None and any(w != weights for w in teacher_weights):
        warnings.append(
            f"the loss network was overridden (--weights {options.weights}: {weights}) while the teacher used "
            f"{', '.join(teacher_weights)}; k* compares with the teacher's recorded trace and is only meaningful "
            "if these are the same weights"
        )
    trained_on = extra.get("targets")
    if trained_on and Path(trained_on).resolve() != store.root:
        warnings.append(f"the student was trained on the store {trained_on}, evaluated here on {store.root}")
    if options.split != "heldout":
        warnings.append(f"split {options.split!r} includes images the student may have trained on")
    if count < split_images:
        warnings.append(f"evaluated {count} of the {split_images} images of the split (--max-images)")
    return warnings
