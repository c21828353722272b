"""Teacher vs student fidelity: how close a trained student comes to the Gatys teacher.

For every content image of a store split (by default the held-out one) the student runs
on the stored content image at the teacher's size, and this module measures, with the
store's own criterion (:meth:`distill.store.TargetStore.build_criterion`, never a
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
``report`` is a plain dict (what ``report.json`` holds); :mod:`distill.report_html`
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

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TERMS = ("total", "content", "style", "tv")
GROUPS = ("style", "teacher", "student", "content")  # t-SNE point groups, in legend order
REPORT_FORMAT = "distill-fidelity-report"
REPORT_VERSION = 1
JSON_CONVENTIONS = (
    'non-finite floats are written as the strings "inf", "-inf" and "nan" (e.g. PSNR of identical images); '
    "null means not available (e.g. equivalent_iterations when the teacher never reached the student's objective)"
)


class FidelityInputError(ValueError):
    """A missing run folder, checkpoint or store, an unknown config, or an empty split."""


# --------------------------------------------------------------------------- pure metrics


def equivalent_iterations(trace_total: Sequence[float], student_objective: float) -> int | None:
    """The teacher iterations the student's result is worth (k*).

    ``trace_total[k]`` is the teacher's objective after ``k`` L-BFGS iterations
    (``k = 0``: the initial image; the last entry: the image the teacher returned).
    Returns the first ``k`` with ``trace_total[k] <= student_objective``: ``0`` if even
    the teacher's starting image is at least as good as the student, ``None`` if the
    teacher never got that low within its budget (the student beats the teacher's final
    result: k* > iterations run). NaN entries never count as reached. This is the measure
    Johnson et al. (2016) read off their loss curves by hand.
    """
    for k, value in enumerate(trace_total):
        if value <= student_objective:  # False for NaN
            return k
    return None


def finest_scale_trace(trace: dict[str, list[float]]) -> list[float]:
    """The teacher's objective per iterate, as comparable with a student's 8-bit output.

    ``trace["total_8bit"]`` when the teacher recorded it (the objective of each iterate
    clamped and rounded to 8 bits, every few iterations; iterates without a value count
    as ``inf``, so k* rounds up to the next recorded one), else ``trace["total"]`` (older
    stores). Iterates of coarser scales are set to ``inf``: a coarse-to-fine teacher's
    early iterates are smaller images whose objective is not comparable with a full-size
    image's; masking keeps the indices (k still counts every iteration) but never lets a
    coarse iterate be the one that "reached" the student.
    """
    quantised = trace.get("total_8bit")
    if quantised and len(quantised) == len(trace["total"]):
        totals = [math.inf if v is None else float(v) for v in quantised]
    else:
        totals = [float(v) for v in trace["total"]]
    scales = trace.get("scale")
    if not scales or len(scales) != len(totals):
        return totals
    finest = max(scales)
    return [v if s == finest else math.inf for v, s in zip(totals, scales)]


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; 1 for 0/0, +-inf for x/0."""
    if denominator == 0:
        if numerator == 0:
            return 1.0
        return math.copysign(math.inf, numerator)
    return numerator / denominator


def _hwc(image: torch.Tensor) -> np.ndarray:
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    return image.detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two (3, H, W) images in [0, 1] (``data_range=1``); ``inf`` when identical."""
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _hwc(a), _hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"PSNR of images of different shapes {x.shape} and {y.shape}")
    if np.array_equal(x, y):
        return math.inf
    return float(peak_signal_noise_ratio(x, y, data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (3, H, W) images in [0, 1] (skimage, ``channel_axis``, ``data_range=1``).

    The window shrinks (odd, >= 3) for images smaller than skimage's default 7 px.
    """
    from skimage.metrics import structural_similarity

    x, y = _hwc(a), _hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM of images of different shapes {x.shape} and {y.shape}")
    side = min(x.shape[:2])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {x.shape[:2]}")
    win_size = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(x, y, channel_axis=2, data_range=1.0, win_size=win_size))


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] to the 256 levels an 8-bit PNG holds (what ``save_image`` writes)."""
    return images.clamp(0, 1).mul(255).round().div(255)


def embedding_distances(e_student: np.ndarray, e_teacher: np.ndarray, e_style: np.ndarray) -> dict[str, float]:
    """Euclidean distances between Gram embeddings, absolute and relative to ``||e_style||``."""
    style_norm = float(np.linalg.norm(e_style))
    pairs = {
        "student_teacher": np.linalg.norm(e_student - e_teacher),
        "student_style": np.linalg.norm(e_student - e_style),
        "teacher_style": np.linalg.norm(e_teacher - e_style),
    }
    out = {name: float(value) for name, value in pairs.items()}
    out.update({f"{name}_relative": safe_ratio(float(value), style_norm) for name, value in pairs.items()})
    out["style_norm"] = style_norm
    return out


def tsne_2d(embeddings: np.ndarray, *, random_state: int = 0, max_pca: int = 50) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D t-SNE of ``embeddings`` (n, D): PCA to ``min(max_pca, n - 1)`` components first.

    Perplexity is ``min(30, n - 1)`` so that a handful of points (fewer than sklearn's
    default perplexity of 30) works. Returns ``(points (n, 2), info)`` where ``info`` holds
    the perplexity, the PCA components and the random state. One point maps to (0, 0).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    info: dict[str, Any] = {"points": n, "random_state": random_state}
    if n < 2:
        info.update(perplexity=None, pca_components=0)
        return np.zeros((n, 2)), info
    components = max(1, min(max_pca, n - 1, x.shape[1]))
    reduced = PCA(n_components=components, random_state=random_state).fit_transform(x)
    if reduced.shape[1] < 2:  # t-SNE's PCA initialisation needs at least 2 features
        reduced = np.concatenate([reduced, np.zeros((n, 2 - reduced.shape[1]))], axis=1)
    perplexity = float(min(30, n - 1))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=random_state)
    points = tsne.fit_transform(reduced)
    info.update(perplexity=perplexity, pca_components=components)
    return points, info


def json_safe(value: Any) -> Any:
    """A copy of ``value`` with non-finite floats as the strings "inf", "-inf", "nan" (see module docs)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# --------------------------------------------------------------------------- criterion-based metrics


def default_embedding_layers(criterion) -> tuple[str, ...]:
    """The two shallowest style layers: a moderate embedding size (10k dims for VGG-19's relu1_1+relu2_1)."""
    return tuple(criterion.style_layers[:2])


def style_target_embedding(criterion, layers: Sequence[str]) -> np.ndarray:
    """The criterion's (blended) style target as an embedding, in the layout of ``style_embedding``."""
    parts = []
    for layer in layers:
        if layer not in criterion.style_layers:
            raise ValueError(f"embedding layer {layer!r} is not a style layer of the criterion {criterion.style_layers}")
        gram = criterion.target_gram(layer)
        rows, cols = torch.triu_indices(gram.shape[-1], gram.shape[-1], device=gram.device)
        parts.append(gram[:, rows, cols])
    return torch.cat(parts, dim=1)[0].detach().cpu().double().numpy()


@torch.no_grad()
def style_embeddings(criterion, images: torch.Tensor, layers: Sequence[str]) -> np.ndarray:
    """``criterion.style_embedding`` of (B, 3, H, W) images as float64 numpy (B, D)."""
    return criterion.style_embedding(images, layers).detach().cpu().double().numpy()


@torch.no_grad()
def compare_images(
    criterion,
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
    loss-network-free figures of :mod:`distill.stylemetrics` for teacher and student.
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


def _baselines_and_stylisation(content, teacher, student, style) -> dict[str, Any]:
    from distill.stylemetrics import match_colour_statistics, stylisation_figures

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


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_student(student: torch.nn.Module, content: torch.Tensor, *, runs: int = 10, warmup: int = 2) -> list[float]:
    """Milliseconds of ``runs`` timed forward passes of one (1, 3, H, W) image, after ``warmup`` untimed ones."""
    device = content.device
    for _ in range(warmup):
        student(content)
    _sync(device)
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        student(content)
        _sync(device)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def retime_teacher(criterion, content: torch.Tensor, teacher_config, *, iterations: int = 3) -> dict[str, float]:
    """Time a short teacher run (``iterations`` L-BFGS iterations at full size) on ``content`` (1, 3, H, W).

    Returns {"seconds", "iterations", "seconds_per_iteration"}. Used when the store's
    timings were measured on another device type.
    """
    from teachers.gatys import stylize

    config = dataclasses.replace(teacher_config, iterations=max(1, iterations), scales=(1.0,))
    result = stylize(criterion, content, config=config)
    spent = max(1, result.iterations_run[0])
    return {"seconds": result.seconds, "iterations": spent, "seconds_per_iteration": result.seconds / spent}


# --------------------------------------------------------------------------- aggregation


def _mean(values: Sequence[float]) -> float:
    values = list(values)
    if not values:
        return math.nan
    if any(math.isnan(v) for v in values):
        return math.nan
    if any(math.isinf(v) for v in values):
        signs = {math.copysign(1, v) for v in values if math.isinf(v)}
        return math.nan if len(signs) > 1 else math.copysign(math.inf, signs.pop())
    return float(statistics.fmean(values))


def _summary(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    return {
        "mean": _mean(values),
        "median": float(statistics.median(values)) if values else math.nan,
        "min": float(min(values)) if values else math.nan,
        "max": float(max(values)) if values else math.nan,
    }


def k_star_text(k: int | None, iterations_run: int) -> str:
    """"12", or "> 30" when the teacher never reached the student's objective within 30 iterations."""
    return f"> {iterations_run}" if k is None else str(k)


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate numbers over per-image records (see :func:`evaluate_fidelity`)."""
    objective = {
        who: {t: _mean([r["objective"][who][t] for r in records]) for t in TERMS} for who in ("student", "teacher", "content")
    }
    ratio = {
        "mean": {t: _mean([r["ratio"][t] for r in records]) for t in TERMS},
        "of_means": {t: safe_ratio(objective["student"][t], objective["teacher"][t]) for t in TERMS},
    }
    distance_names = records[0]["gram_distance"].keys() if records else ()
    reached = [r["equivalent_iterations"] for r in records if r["equivalent_iterations"] is not None]
    not_reached = [r for r in records if r["equivalent_iterations"] is None]
    k_summary: dict[str, Any] = {
        "reached": len(reached),
        "not_reached": len(not_reached),
        "median_reached": statistics.median_low(reached) if reached else None,
        "min_reached": min(reached) if reached else None,
        "max_reached": max(reached) if reached else None,
    }
    if records:
        # Lower median over all images, an image the teacher never matched counting as larger than any k.
        middle = statistics.median_low(
            (r["equivalent_iterations"] if r["equivalent_iterations"] is not None else math.inf, r["teacher_iterations_run"])
            for r in records
        )
        k_summary["median_text"] = f"> {middle[1]}" if math.isinf(middle[0]) else str(int(middle[0]))
    parts = [f"median k* {k_summary.get('median_text', 'n/a')} (lower median) over {len(records)} image(s)"]
    if not_reached:
        parts.append(f"{len(not_reached)} image(s) better than the teacher's final result (k* > iterations run)")
    k_summary["summary"] = "; ".join(parts)
    summary = {
        "images": len(records),
        "objective": objective,
        "ratio": ratio,
        "psnr": _summary([r["psnr"] for r in records]),
        "ssim": _summary([r["ssim"] for r in records]),
        "gram_distance": {name: _mean([r["gram_distance"][name] for r in records]) for name in distance_names},
        "equivalent_iterations": k_summary,
    }
    if records and all("baselines" in r for r in records):
        summary["agreement"] = agreement(records)
        summary["stylisation"] = {
            who: {name: _mean([r["stylisation"][who][name] for r in records]) for name in STYLISATION_FIGURES}
            for who in ("teacher", "student")
        }
        summary["diagnoses"] = diagnoses(summary)
    return summary


STYLISATION_FIGURES = ("colour_moved", "texture_moved", "structure_kept")
#: A student output counts as stylised when it moved at least this far toward the style.
STYLISED_COLOUR, STYLISED_TEXTURE = 0.3, 0.1


def agreement(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The headline: mean SSIM / PSNR to the teacher of the student and of the two no-student baselines."""
    def means(pick):
        return {"ssim": _mean([pick(r)["ssim"] for r in records]), "psnr": _mean([pick(r)["psnr"] for r in records])}

    result = {
        "student": means(lambda r: r),
        "content": means(lambda r: r["baselines"]["content"]),
        "recoloured": means(lambda r: r["baselines"]["recoloured"]),
    }
    best_name = max(("content", "recoloured"), key=lambda name: result[name]["ssim"])
    result["best_baseline"] = best_name
    result["margin"] = result["student"]["ssim"] - result[best_name]["ssim"]
    result["beats_baselines"] = bool(result["margin"] > 0)
    return result


def diagnoses(summary: dict[str, Any]) -> list[str]:
    """One line per thing that is wrong with the student (empty when nothing is)."""
    lines = []
    agree = summary["agreement"]
    student_ssim = agree["student"]["ssim"]
    best = agree["best_baseline"]
    baseline_text = {"content": "the content photo itself", "recoloured": "the photo recoloured to the style"}[best]
    if not agree["beats_baselines"]:
        lines.append(
            f"below baseline: the student agrees with its teacher less (SSIM {student_ssim:.3f}) than {baseline_text} "
            f"does (SSIM {agree[best]['ssim']:.3f}), an image that needs no student"
        )
        ratio = summary["ratio"]["mean"]["total"]
        if ratio < 1:
            lines.append(
                f"gamed objective: the criterion rates the student better than the teacher (ratio {ratio:.3g}) while it "
                "does not look like the teacher's images: the objective is being gamed, trust the agreement"
            )
    figures = summary["stylisation"]["student"]
    if figures["colour_moved"] < STYLISED_COLOUR or figures["texture_moved"] < STYLISED_TEXTURE:
        lines.append(
            f"not stylised: the student's outputs moved colour {figures['colour_moved']:.2f} and texture "
            f"{figures['texture_moved']:.2f} toward the style (a stylised output reaches {STYLISED_COLOUR} and {STYLISED_TEXTURE})"
        )
    return lines


# --------------------------------------------------------------------------- gates


@dataclass
class GateResult:
    name: str  # the option, e.g. "--min-ssim"
    threshold: float
    value: float
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_gates(
    report: dict[str, Any],
    *,
    min_ssim: float | None = None,
    max_objective_ratio: float | None = None,
    beat_baselines: bool = False,
) -> list[GateResult]:
    """Quality gates on the aggregate numbers: mean SSIM to the teacher >= ``min_ssim``,
    mean objective ratio <= ``max_objective_ratio``, and (``beat_baselines``) SSIM above
    both no-student baselines.

    NaN values fail. Each result carries a one-line message saying by how much it passed or failed.
    """
    gates = []
    agg = report["aggregate"]
    if beat_baselines:
        if "agreement" not in agg:
            gates.append(GateResult("--beat-baselines", 0.0, math.nan, False, "no baselines in the report (no style image)"))
        else:
            agree = agg["agreement"]
            best = agree["best_baseline"]
            margin = float(agree["margin"])
            passed = margin > 0
            gates.append(
                GateResult(
                    "--beat-baselines", float(agree[best]["ssim"]), float(agree["student"]["ssim"]), passed,
                    f"student SSIM {agree['student']['ssim']:.4f} is {'above' if passed else 'not above'} the {best} "
                    f"baseline's {agree[best]['ssim']:.4f} (margin {margin:+.4f})",
                )
            )
    if min_ssim is not None:
        value = float(agg["ssim"]["mean"])
        passed = value >= min_ssim
        gap = (min_ssim - value) if passed is False else (value - min_ssim)
        verdict = f"below {min_ssim:g} by {gap:.4g}" if not passed else f"at least {min_ssim:g} (margin {gap:.4g})"
        gates.append(GateResult("--min-ssim", min_ssim, value, passed, f"mean SSIM {value:.4f} is {verdict}"))
    if max_objective_ratio is not None:
        value = float(agg["ratio"]["mean"]["total"])
        passed = value <= max_objective_ratio
        gap = (value - max_objective_ratio) if not passed else (max_objective_ratio - value)
        verdict = (
            f"above {max_objective_ratio:g} by {gap:.4g}" if not passed else f"at most {max_objective_ratio:g} (margin {gap:.4g})"
        )
        gates.append(
            GateResult(
                "--max-objective-ratio", max_objective_ratio, value, passed,
                f"mean student/teacher objective ratio {value:.4g} is {verdict}",
            )
        )
    return gates


# --------------------------------------------------------------------------- the whole evaluation


@dataclass(frozen=True)
class FidelityOptions:
    """How to evaluate a student against its teacher (the options of ``scripts/compare.py``)."""

    split: str = "heldout"  # "heldout", "train" or "all" entries of the store
    checkpoint: str = "best"  # "best", "last" (RUN_DIR/checkpoints/<name>.safetensors) or a checkpoint path
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    weights: str | None = None  # loss-network weights override (e.g. a local file for "pretrained"); None = the teacher's
    config_hash: str | None = None  # teacher config in the store; None = the checkpoint's, else the store's only one
    heldout_fraction: float | None = None  # None = the training run's (checkpoint metadata), else 0.1
    max_images: int | None = None  # evaluate at most this many images of the split
    embedding_layers: tuple[str, ...] | None = None  # Gram layers for distances and t-SNE; None = two shallowest
    timing_runs: int = 10  # timed student forward passes (median reported)
    timing_warmup: int = 2  # untimed passes first
    retime_iterations: int = 3  # teacher iterations timed when the store's timings are from another device type
    tsne_seed: int = 0  # random_state of PCA and t-SNE


@dataclass
class FidelityResult:
    """Everything a report needs: the numbers (``report``) and the images behind them."""

    report: dict[str, Any]
    contents: list[torch.Tensor]  # (3, H, W) CPU, per image
    teachers: list[torch.Tensor]
    students: list[torch.Tensor]
    styles: list[torch.Tensor]  # the style image(s) as the criterion saw them (resized to style_size)
    names: list[str]  # short per-image labels (content file stems)
    tsne_points: np.ndarray  # (n, 2)
    tsne_groups: list[str]  # group of each point (see GROUPS)
    tsne_images: list[torch.Tensor] = field(default_factory=list)  # the image of each point, for thumbnails


def resolve_checkpoint(run_dir: str | Path | None, checkpoint: str) -> Path:
    """``best`` / ``last`` inside RUN_DIR/checkpoints, or a path; :class:`FidelityInputError` if missing."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise FidelityInputError(f"--checkpoint {checkpoint} needs --run RUN_DIR")
        run = Path(run_dir)
        if not run.is_dir():
            raise FidelityInputError(f"{run}: no such run folder")
        path = run / "checkpoints" / f"{checkpoint}.safetensors"
        if not path.is_file():
            other = "last" if checkpoint == "best" else "best"
            hint = f"; {other}.safetensors exists: pass --checkpoint {other}" if (path.parent / f"{other}.safetensors").is_file() else ""
            raise FidelityInputError(f"{path}: no such checkpoint (has the run saved one yet?){hint}")
        return path
    path = Path(checkpoint)
    if not path.is_file() and run_dir is not None and (Path(run_dir) / checkpoint).is_file():
        path = Path(run_dir) / checkpoint
    if not path.is_file():
        raise FidelityInputError(f"{checkpoint}: no such checkpoint file")
    return path


def _device_type(name: str) -> str:
    try:
        return torch.device(name).type
    except (RuntimeError, ValueError):
        return str(name).split(":")[0]


def _short_name(path: str, index: int) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40].strip("_")
    return stem or f"image{index}"


def prepare(run_dir: str | Path | None, store_root: str | Path, options: FidelityOptions):
    """Check inputs before any heavy work; returns (checkpoint path, metadata, store, pairs, config hash, heldout fraction).

    Raises :class:`FidelityInputError` (or the store's / checkpoint's own errors) with one clear line.
    """
    from distill.store import StoreError, TargetPairs, TargetStore
    from students import read_student_metadata

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
    if options.split not in TargetPairs.SPLITS:
        raise FidelityInputError(f"--split must be one of {', '.join(TargetPairs.SPLITS)}, got {options.split!r}")
    pairs = TargetPairs(store, split=options.split, config_hash=config_hash, heldout_fraction=heldout_fraction)
    if len(pairs) == 0:
        total = len(store.entries(config_hash))
        hint = " (held-out fraction 0)" if options.split == "heldout" and heldout_fraction == 0 else ""
        raise FidelityInputError(
            f"the {options.split} split of {store_path} (config {config_hash[:16]}) is empty{hint}: "
            f"{total} target(s) in total; generate more targets or pass --split all"
        )
    return checkpoint, metadata, store, pairs, config_hash, heldout_fraction


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
    from distill.imaging import resize_image
    from students import load_student
    from teachers.gatys import TeacherConfig  # noqa: F401  (documented type of store.teacher_config)

    checkpoint, metadata, store, pairs, config_hash, heldout_fraction = prepare(run_dir, store_root, options)
    if device is None:
        from distill.cli import resolve_device

        device = resolve_device(options.device)
    teacher_config = store.teacher_config(config_hash)
    criterion = store.build_criterion(config_hash, device=device, weights=options.weights)
    criterion.requires_grad_(False)
    layers = tuple(options.embedding_layers or default_embedding_layers(criterion))
    for layer in layers:
        if layer not in criterion.style_layers:
            raise FidelityInputError(f"embedding layer {layer!r} is not one of the style layers {', '.join(criterion.style_layers)}")
    student, metadata = load_student(checkpoint, device=device)
    student.eval()
    extra = metadata.get("extra") or {}

    count = len(pairs) if options.max_images is None else min(len(pairs), options.max_images)
    # Baselines and stylisation figures are measured against the (first) style, as the teacher saw it.
    reference_style = store.style_images(config_hash)[0]
    records: list[dict[str, Any]] = []
    contents, teachers, outputs, names = [], [], [], []
    embeddings: dict[str, list[np.ndarray]] = {"student": [], "teacher": [], "content": []}
    for index in range(count):
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
            from distill.color import transfer_luminance

            output = transfer_luminance(output, content)
        output = quantize_8bit(output)
        (record,), embedded = compare_images(criterion, content, teacher, output, embedding_layers=layers, style=reference_style)
        trace = finest_scale_trace(store.trace(entry))
        k = equivalent_iterations(trace, record["objective"]["student"]["total"])
        per_iteration = entry.seconds / max(1, entry.iterations_run)
        record.update(
            {
                "index": index,
                "key": entry.key,
                "name": _short_name(entry.content_path, index),
                "content_path": entry.content_path,
                "size": list(content.shape[-2:]),
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
        )
        records.append(record)
        for group in embeddings:
            embeddings[group].append(embedded[group][0])
        contents.append(content[0].cpu())
        teachers.append(teacher[0].cpu())
        outputs.append(output[0].cpu())
        names.append(record["name"])
        if progress is not None:
            progress(index + 1, count)

    entries = [pairs.entry(i) for i in range(count)]
    speed = _speed(student, criterion, teacher_config, contents[0].unsqueeze(0).to(device), entries, device, options)
    for record in records:
        if speed["teacher_source"] != "store":
            per_iteration = speed["teacher_seconds_per_iteration"]
            record["teacher_seconds_to_match"] = (
                None if record["equivalent_iterations"] is None else record["equivalent_iterations"] * per_iteration
            )

    # t-SNE: style image(s) as the criterion saw them, then teacher, student and content embeddings.
    styles = store.style_images(config_hash)
    style_size = teacher_config.criterion.style_size
    styles = [resize_image(s, long_side=style_size) if style_size else s for s in styles]
    style_embedded = [style_embeddings(criterion, s.unsqueeze(0).to(device), layers)[0] for s in styles]
    groups = ["style"] * len(styles) + ["teacher"] * count + ["student"] * count + ["content"] * count
    labels = [f"style {j}" for j in range(len(styles))] + [f"{g}: {n}" for g in ("teacher", "student", "content") for n in names]
    matrix = np.stack(style_embedded + embeddings["teacher"] + embeddings["student"] + embeddings["content"])
    points, tsne_info = tsne_2d(matrix, random_state=options.tsne_seed)
    tsne_images = list(styles) + teachers + outputs + contents

    weights = criterion.weights_description
    random_weights = weights.startswith("random")
    teacher_weights = sorted({e.weights for e in store.entries(config_hash)})
    warnings: list[str] = []
    if random_weights:
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
    if count < len(pairs):
        warnings.append(f"evaluated {count} of the {len(pairs)} images of the split (--max-images)")

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
            "parameters": sum(p.numel() for p in student.parameters()),
            "step": extra.get("step"),
            "trained_on": trained_on,
            "trained_heldout": extra.get("heldout"),
        },
        "targets": {
            "store": str(store.root),
            "config_hash": config_hash,
            "teacher_config": _plain(teacher_config),
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
        "tsne": {
            **tsne_info,
            "layers": list(layers),
            "coordinates": [
                {"group": g, "label": label, "x": float(p[0]), "y": float(p[1])} for g, label, p in zip(groups, labels, points)
            ],
        },
        "warnings": warnings,
    }
    if random_weights:
        report["warning"] = warnings[0]
    return FidelityResult(
        report=report,
        contents=contents,
        teachers=teachers,
        students=outputs,
        styles=styles,
        names=names,
        tsne_points=points,
        tsne_groups=groups,
        tsne_images=tsne_images,
    )


def _speed(student, criterion, teacher_config, content, entries, device, options: FidelityOptions) -> dict[str, Any]:
    """Student ms/image (median of timed runs) and teacher s/image (store timings or a re-timed short run)."""
    runs = time_student(student, content, runs=options.timing_runs, warmup=options.timing_warmup)
    student_ms = float(statistics.median(runs))
    iterations = [e.iterations_run for e in entries]
    mean_iterations = float(statistics.fmean(iterations))
    store_types = sorted({_device_type(e.device) for e in entries})
    speed: dict[str, Any] = {
        "device": str(device),
        "timing_size": list(content.shape[-2:]),  # [H, W]
        "student_ms_per_image": student_ms,
        "student_ms_runs": runs,
        "student_timing": f"median of {len(runs)} runs after {options.timing_warmup} warm-up, batch 1, "
        f"torch.inference_mode, {content.shape[-1]}x{content.shape[-2]} px (W x H)",
        "teacher_iterations_per_image": mean_iterations,
        "teacher_devices_in_store": sorted({e.device for e in entries}),
    }
    if store_types == [device.type]:
        teacher_seconds = float(statistics.fmean(e.seconds for e in entries))
        batch_sizes = sorted({e.batch_size for e in entries})
        speed.update(
            teacher_source="store",
            teacher_source_detail=(
                f"mean of the store's recorded teacher timings ({device.type}, batch size "
                f"{', '.join(map(str, batch_sizes))}; batch seconds / batch size)"
            ),
            teacher_seconds_per_image=teacher_seconds,
            teacher_seconds_per_iteration=teacher_seconds / max(1.0, mean_iterations),
        )
    else:
        timed = retime_teacher(criterion, content, teacher_config, iterations=options.retime_iterations)
        teacher_seconds = timed["seconds_per_iteration"] * mean_iterations
        speed.update(
            teacher_source="retimed",
            teacher_source_detail=(
                f"the store's timings are from {', '.join(store_types)}, not {device.type}: re-timed "
                f"{timed['iterations']} teacher iterations here ({timed['seconds']:.3g} s) and extrapolated "
                f"{timed['seconds_per_iteration']:.3g} s/iteration x {mean_iterations:g} iterations"
            ),
            teacher_seconds_per_image=teacher_seconds,
            teacher_seconds_per_iteration=timed["seconds_per_iteration"],
            teacher_retimed=timed,
        )
    speed["speedup"] = safe_ratio(teacher_seconds, student_ms / 1000.0)
    return speed


def _plain(config: Any) -> Any:
    from distill.config import to_dict

    return to_dict(config)
