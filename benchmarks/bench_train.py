#!/usr/bin/env python
"""Images/s of the full student training step: student forward, the teacher's criterion
(content + Gram style + TV) plus the distillation term, backward, Adam step.

It runs exactly the functions the trainer runs (distill.train.objective.forward_objective and
backward_step) on synthetic content/target batches, with a VGG-19 loss network with
random weights (the cost does not depend on the weights; no download needed).

    python benchmarks/bench_train.py                         # CPU, johnson + fast, 128 and 256 px, batch 4
    python benchmarks/bench_train.py --device cuda --precision bf16 --channels-last --out benchmarks/results/train_cuda.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "n/a"


def bench_one(student_name: str, size: int, *, args: argparse.Namespace, criterion, device: torch.device) -> dict:
    import students
    from distill.train.config import TrainConfig
    from distill.train.objective import backward_step, forward_objective

    config = TrainConfig(
        student=student_name, batch_size=args.batch_size, crop_size=size, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, distill_kind=tuple(args.distill_kind.split(",")),
        distill_weight=1.0,
    )
    torch.manual_seed(0)
    student = students.create_student(student_name).to(device).train()
    if args.channels_last:
        student = student.to(memory_format=torch.channels_last)
    model = torch.compile(student) if args.compile else student
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(args.batch_size, 3, size, size, generator=generator).to(device)
    target = torch.rand(args.batch_size, 3, size, size, generator=generator).to(device)
    if args.channels_last:
        content = content.contiguous(memory_format=torch.channels_last)
        target = target.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        objective, _ = forward_objective(model, criterion, content, target, config=config, device=device)
        backward_step(objective, student, optimizer, scaler)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    median = sorted(times)[len(times) // 2]
    return {
        "student": student_name,
        "size": size,
        "median_step_s": median,
        "images_per_s": args.batch_size / median,
        "params_m": sum(p.numel() for p in student.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", default="johnson,fast")
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--distill-kind", default="feature", help="comma-separated distill terms")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--out", help="write a Markdown table here")
    args = p.parse_args(argv)

    import students
    from distill.objective.config import CriterionConfig
    from distill.objective.criterion import build_criterion

    device = torch.device(args.device)
    available = students.list_students()
    names = [n for n in args.students.split(",") if n]
    missing = [n for n in names if n not in available]
    if missing:
        print(f"skipping unregistered student(s) {missing}; registered: {available}", file=sys.stderr)
        names = [n for n in names if n in available]
    style = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(1))
    criterion = build_criterion(CriterionConfig(weights="random", style_size=256), [style], device=device)
    if args.channels_last:
        criterion = criterion.to(memory_format=torch.channels_last)

    load_before = _load_average()
    rows = []
    for name in names:
        for size in (int(s) for s in args.sizes.split(",")):
            row = bench_one(name, size, args=args, criterion=criterion, device=device)
            rows.append(row)
            print(f"{name:>12} {size:4d} px  batch {args.batch_size}: {row['images_per_s']:7.2f} img/s "
                  f"({row['median_step_s'] * 1e3:.0f} ms/step)", flush=True)

    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}; host CPU {cpu_model()}"
    else:
        machine = f"{cpu_model()}, {torch.get_num_threads()} threads"
    lines = [
        "# Student training throughput",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine}",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- device {device}, precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}",
        f"- step = student forward + criterion (VGG-19, random weights, relu1_1..relu5_1 Grams, relu4_2 content, TV) "
        f"+ distill ({args.distill_kind}) + backward + Adam; batch {args.batch_size}, synthetic images",
        f"- median of {args.steps} timed steps after {args.warmup} warm-up step(s)",
        f"- load average (1 min) before / after: {load_before} / {_load_average()} "
        "(a shared machine: other jobs inflate the times)",
        "",
        "| student | params (M) | size (px) | ms / step | images / s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['student']} | {row['params_m']:.2f} | {row['size']} | {row['median_step_s'] * 1e3:.0f} "
                     f"| {row['images_per_s']:.2f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        from distill.core.files import write_text_atomic

        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
