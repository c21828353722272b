#!/usr/bin/env python
"""Teacher speed: seconds per objective evaluation and per image, batched vs a loop.

For each size and batch size B, it times ``--iters`` L-BFGS evaluations of a batch of B
images at once, and of B single-image runs one after another, and reports seconds per
evaluation and per image. Writes a markdown table to benchmarks/results/teacher_<device>.md.

    python benchmarks/bench_teacher.py --sizes 256 --batches 1 4 --iters 5
    python benchmarks/bench_teacher.py --device cuda --sizes 256 512 --batches 1 4 --iters 20
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from distill.objective.config import CriterionConfig
from distill.objective.criterion import build_criterion
from distill.samples import stained_glass
from teachers.gatys import TeacherConfig, stylize


def machine_description(device: torch.device) -> str:
    """CPU model, cores, accelerator and library versions: the line every result file starts with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {torch.get_num_threads()} threads"]
    if device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    parts.append(f"torch {torch.__version__}")
    parts.append(datetime.date.today().isoformat())
    return "; ".join(parts)


def time_teacher(criterion, config, content, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    stylize(criterion, content, config=config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iters", type=int, default=5, help="evaluations per run (tolerances are disabled so all run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)

    criterion_config = CriterionConfig(weights="random", style_size=256)  # speed does not depend on the weights
    criterion = build_criterion(criterion_config, [stained_glass(size=256)], device=device)
    rows = []
    for size in args.sizes:
        config = TeacherConfig(criterion=criterion_config, size=size, iterations=args.iters, tolerance_grad=0, tolerance_change=0)
        warm = torch.rand(1, 3, 64, 64, device=device)
        stylize(criterion, warm, config=TeacherConfig(criterion=criterion_config, size=64, iterations=2))
        for batch in args.batches:
            content = torch.rand(batch, 3, size, size, device=device)
            batched = time_teacher(criterion, config, content, device)
            looped = sum(time_teacher(criterion, config, content[i : i + 1], device) for i in range(batch))
            rows.append((size, batch, batched, looped))
            print(f"{size}px B={batch}: batched {batched:.2f}s, loop {looped:.2f}s", flush=True)

    lines = [
        f"# Teacher speed ({device.type})",
        "",
        machine_description(device),
        "",
        f"VGG-19 loss network (random weights; speed does not depend on them), {args.iters} L-BFGS evaluations per run.",
        "",
        "| size | batch | batched s/eval | batched s/img | loop s/eval (per img) | loop s/img | batched speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, batch, batched, looped in rows:
        lines.append(
            f"| {size} | {batch} | {batched / args.iters:.3f} | {batched / batch:.2f} | "
            f"{looped / args.iters / batch:.3f} | {looped / batch:.2f} | {looped / batched:.2f}x |"
        )
    out = args.out or Path(__file__).parent / "results" / f"teacher_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
