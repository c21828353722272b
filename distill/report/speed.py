"""How fast the student is, next to the teacher, on the same device type."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from distill.core.devices import synchronize
from distill.objective.criterion import StyleCriterion
from distill.report.measures import safe_ratio
from distill.report.options import FidelityOptions
from distill.targets.generation import time_teacher
from distill.targets.store import TargetEntry

if TYPE_CHECKING:  # the store's teacher config, read here as data: the report never runs the teacher itself
    from teachers.gatys import TeacherConfig


@torch.inference_mode()
def time_student(student: torch.nn.Module, content: torch.Tensor, *, runs: int = 10, warmup: int = 2) -> list[float]:
    """Milliseconds of ``runs`` timed forward passes of one (1, 3, H, W) image, after ``warmup`` untimed ones."""
    device = content.device
    for _ in range(warmup):
        student(content)
    synchronize(device)
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        student(content)
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def measure_speed(
    student: torch.nn.Module,
    criterion: StyleCriterion,
    teacher_config: TeacherConfig,
    content: torch.Tensor,
    entries: Sequence[TargetEntry],
    device: torch.device,
    options: FidelityOptions,
) -> dict[str, Any]:
    """Student ms/image (median of timed runs) and teacher s/image (store timings or a re-timed short run).

    ``content``: (1, 3, H, W) on ``device``; ``entries``: the evaluated targets, whose
    recorded teacher timings are used when they were measured on ``device``'s type.
    """
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
        timed = time_teacher(criterion, content, teacher_config, iterations=options.retime_iterations)
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


def _device_type(name: str) -> str:
    try:
        return torch.device(name).type
    except (RuntimeError, ValueError):
        return str(name).split(":")[0]
