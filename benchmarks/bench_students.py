"""Benchmark every registered student: inference latency and training throughput.

Inference: ms per image at 256, 512 and 1024 px (batch 1, torch.inference_mode,
warm-up, median of --runs).  Training: images/s for forward + backward + Adam
step with an L1 loss at 256 px, batch 4.  Random weights (pretrained=False).

Writes a markdown table to benchmarks/results/students_<device>.md.

    python benchmarks/bench_students.py                      # CPU, fp32
    python benchmarks/bench_students.py --device cuda        # bf16 autocast + channels_last
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
# Lets `python benchmarks/bench_students.py` run from a plain checkout (no pip install).
sys.path.insert(0, str(REPO_ROOT))

from students import create_student, list_students  # noqa: E402

INFERENCE_SIDES = (256, 512, 1024)
TRAIN_SIDE = 256
TRAIN_BATCH = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default=None,
        help="bf16 runs under torch.autocast (default: bf16 on cuda, fp32 on cpu)",
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="channels_last memory format (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="default: usable CPU cores")
    parser.add_argument("--students", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    args.channels_last = on_gpu if args.channels_last is None else args.channels_last
    args.output = args.output or REPO_ROOT / "benchmarks" / "results" / f"students_{args.device}.md"
    return args


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(device: str) -> str:
    parts = [f"{cpu_model()}, {usable_cores()} cores, {torch.get_num_threads()} threads"]
    if device == "cuda":
        parts.append(torch.cuda.get_device_name())
    with contextlib.suppress(OSError, AttributeError):
        parts.append("load avg %.2f" % os.getloadavg()[0])  # other jobs distort CPU timings
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_median_seconds(
    steps: list[Callable[[], object]], *, device: str, runs: int, warmup: int
) -> list[float]:
    """Median wall time of each step.

    Steps run round-robin rather than one after another, so that load from
    other processes on a shared machine affects every student alike and the
    ratios between them stay meaningful.
    """
    for _ in range(warmup):
        for step in steps:
            step()
    synchronize(device)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(runs):
        for step, step_times in zip(steps, times):
            start = time.perf_counter()
            step()
            synchronize(device)
            step_times.append(time.perf_counter() - start)
    return [statistics.median(step_times) for step_times in times]


def build(name: str, args: argparse.Namespace, *, unfrozen: bool = False) -> nn.Module:
    model = create_student(name)
    if unfrozen:
        model.unfreeze_encoder()
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_images(batch: int, side: int, args: argparse.Namespace) -> torch.Tensor:
    images = torch.rand(batch, 3, side, side, device=args.device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.dtype == "bf16":
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def runs_at(side: int, args: argparse.Namespace) -> int:
    return min(args.runs, 3) if side >= 1024 and args.device == "cpu" else args.runs


def inference_ms(models: dict[str, nn.Module], args: argparse.Namespace) -> dict[str, dict[int, float]]:
    results: dict[str, dict[int, float]] = {name: {} for name in models}
    for side in INFERENCE_SIDES:
        images = make_images(1, side, args)

        def step(model: nn.Module) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode(), autocast(args):
                    return model(images)
            return run

        # Fewer runs at 1024 px keep the CPU benchmark in minutes, not hours.
        runs = runs_at(side, args)
        warmup = min(args.warmup, 1) if side >= 1024 and args.device == "cpu" else args.warmup
        seconds = interleaved_median_seconds(
            [step(model.eval()) for model in models.values()],
            device=args.device, runs=runs, warmup=warmup,
        )
        for name, elapsed in zip(models, seconds):
            results[name][side] = elapsed * 1000
        print(f"  inference {side} px done", file=sys.stderr)
    return results


def training_images_per_second(model: nn.Module, args: argparse.Namespace) -> float:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = make_images(TRAIN_BATCH, TRAIN_SIDE, args)
    targets = make_images(TRAIN_BATCH, TRAIN_SIDE, args)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(args):
            loss = F.l1_loss(model(images), targets)
        loss.backward()
        optimizer.step()

    (seconds,) = interleaved_median_seconds(
        [step], device=args.device, runs=args.runs, warmup=args.warmup
    )
    return TRAIN_BATCH / seconds


def markdown_report(
    args: argparse.Namespace,
    parameters: dict[str, int],
    inference: dict[str, dict[int, float]],
    training: dict[str, float],
) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    layout = "channels_last" if args.channels_last else "contiguous (NCHW)"
    lines = [
        f"# Student benchmark ({args.device}, {args.dtype}, {layout})",
        "",
        f"Machine: {machine_description(args.device)}. Date: {date}.",
        "",
        f"Inference: ms per image, batch 1, median of {args.runs} runs "
        f"({runs_at(1024, args)} at 1024 px), students timed round-robin. "
        f"Training: images/s, forward + backward + Adam, L1 loss, "
        f"{TRAIN_SIDE} px, batch {TRAIN_BATCH}. Random weights.",
        "",
        "| student | params | trainable | "
        + " | ".join(f"{side} px ms" for side in INFERENCE_SIDES)
        + " | train img/s |",
        "|---|---:|---:|" + "---:|" * len(INFERENCE_SIDES) + "---:|",
    ]
    for row_name, train_rate in training.items():
        name = row_name.split(" ")[0]
        total, trainable = parameters[row_name]
        latency = " | ".join(
            f"{inference[name][side]:.1f}" if row_name == name else "–" for side in INFERENCE_SIDES
        )
        lines.append(
            f"| {row_name} | {total / 1e6:.2f} M | {trainable / 1e6:.2f} M | {latency} | {train_rate:.1f} |"
        )
    if "johnson" in inference and "fast" in inference:
        speedup = inference["johnson"][512] / inference["fast"][512]
        verdict = "meets" if speedup >= 3 else "MISSES"
        lines += ["", f"`fast` vs `johnson` at 512 px: {speedup:.1f}x faster ({verdict} the >= 3x target)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads or usable_cores())
    torch.manual_seed(0)
    names = args.students or list_students()

    models = {name: build(name, args) for name in names}
    inference = inference_ms(models, args)

    training: dict[str, float] = {}
    parameters: dict[str, tuple[int, int]] = {}
    training_rows = [(name, False) for name in names]
    if "timm_encoder" in names:
        training_rows.append(("timm_encoder", True))  # step 2 of the recipe costs more
    for name, unfrozen in training_rows:
        row_name = f"{name} (encoder unfrozen)" if unfrozen else name
        model = build(name, args, unfrozen=unfrozen)
        parameters[row_name] = (
            sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
        training[row_name] = training_images_per_second(model, args)
        print(f"  training {row_name} done", file=sys.stderr)

    report = markdown_report(args, parameters, inference, training)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
