"""Numbers over all images of a report: means, k* summary, agreement with baselines, diagnoses, gates."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.report.measures import TERMS, safe_ratio


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
    if records and all("self_agreement" in r for r in records):
        # Not a baseline: the teacher against itself (see FidelityOptions.teacher_self_agreement).
        result["teacher_mirrored"] = means(lambda r: r["self_agreement"])
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
    # Texture is asked of a student only when its teacher paints texture: a photorealistic
    # teacher (--photoreal) changes colours and keeps the photo's texture, and so should its student.
    teacher_paints = summary["stylisation"]["teacher"]["texture_moved"] >= STYLISED_TEXTURE
    if figures["colour_moved"] < STYLISED_COLOUR or (teacher_paints and figures["texture_moved"] < STYLISED_TEXTURE):
        lines.append(
            f"not stylised: the student's outputs moved colour {figures['colour_moved']:.2f} and texture "
            f"{figures['texture_moved']:.2f} toward the style (a stylised output reaches {STYLISED_COLOUR} and {STYLISED_TEXTURE})"
        )
    return lines


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
