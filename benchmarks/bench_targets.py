#!/usr/bin/env python
"""Teacher-target throughput on the CPU: one process vs two shard processes on one store.

    python benchmarks/bench_targets.py [--size 64] [--iters 20] [--images 8]

Generates ``--images`` random content images and one style, then runs
``scripts/generate_targets.py`` on a fresh store per setting (random loss-network
weights: no download needed; the cost per iteration is the same as with pretrained
weights). Two shard processes are started at once on the same store. Writes a Markdown
table to ``benchmarks/results/targets_cpu.md``.

targets/s (loop) counts from the first process entering its generation loop to the last
one leaving it, so it excludes the ~10 s of Python/torch imports per process, which
"end to end" includes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "generate_targets.py"
sys.path.insert(0, str(ROOT))

from distill.core.files import write_text_atomic  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_inputs(folder: Path, images: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    content_dir = folder / "contents"
    content_dir.mkdir(parents=True)
    for i in range(images):
        # Smooth random images (upsampled noise) look more like photos than white noise does.
        small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(content_dir / f"content{i:02d}.png")
    style = folder / "style.png"
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(style)
    return content_dir, style


def run_setting(
    *, name: str, processes: int, threads: int, batch: int, content_dir: Path, style: Path, work: Path, args
) -> dict:
    store = work / f"store-{name}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    common = [
        sys.executable, str(SCRIPT), "--content-dir", str(content_dir), "--style", str(style), "--out", str(store),
        "--size", str(args.size), "--iters", str(args.iters), "--weights", "random", "--style-size", str(args.size),
        "--device", "cpu", "--batch-size", str(batch), "--quiet",
    ]  # fmt: skip
    summaries = [work / f"{name}-{i}.json" for i in range(processes)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*common, "--shard", f"{i}/{processes}", "--summary-json", str(summaries[i])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: generate_targets failed ({proc.returncode}):\n{err[-2000:]}")
    wall = time.perf_counter() - started
    data = [json.loads(path.read_text()) for path in summaries]
    new = sum(d["new"] for d in data)
    loop = max(d["finished"] for d in data) - min(d["started"] for d in data)
    return {
        "name": name,
        "processes": processes,
        "threads": threads,
        "batch": batch,
        "new": new,
        "loop_s": loop,
        "wall_s": wall,
        "loop_rate": new / loop,
        "wall_rate": new / wall,
        "teacher_s_per_image": sum(d["teacher_seconds"] for d in data) / new,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "targets_cpu.md")
    parser.add_argument("--note", default="", help="extra line for the results file (e.g. that the machine was shared)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    settings = [
        ("1 process x 1 thread", 1, 1, 1),
        ("1 process x 2 threads", 1, min(2, cores), 1),
        ("2 processes x 1 thread (--shard 0/2, 1/2)", 2, 1, 1),
        ("1 process x 1 thread, --batch-size 4", 1, 1, 4),
    ]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_targets_") as tmp:
        work = Path(tmp)
        content_dir, style = make_inputs(work / "inputs", args.images, args.size)
        for index, (name, processes, threads, batch) in enumerate(settings):
            print(f"[{index + 1}/{len(settings)}] {name} ...", flush=True)
            row = run_setting(
                name=f"s{index}", processes=processes, threads=threads, batch=batch,
                content_dir=content_dir, style=style, work=work, args=args,
            )  # fmt: skip
            row["label"] = name
            rows.append(row)
            print(f"    {row['loop_rate']:.3f} targets/s (loop), {row['wall_rate']:.3f} end to end", flush=True)
    load_after = os.getloadavg()

    base = rows[0]["loop_rate"]
    lines = [
        "# Teacher-target throughput, CPU",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}, {cores} logical cores visible",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}",
        f"- workload: {args.images} random {args.size}x{args.size} contents, {args.iters} L-BFGS evaluations, "
        "VGG-19 with random weights (same cost as pretrained), fresh store per row",
        "- command: `python benchmarks/bench_targets.py"
        + (f" --size {args.size}" if args.size != 64 else "")
        + (f" --iters {args.iters}" if args.iters != 20 else "")
        + (f" --images {args.images}" if args.images != 8 else "")
        + "`",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += [
        "",
        "| setting | targets | loop s | targets/s (loop) | speed-up | end-to-end s | targets/s (end to end) | teacher s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['new']} | {row['loop_s']:.1f} | {row['loop_rate']:.3f} | "
            f"{row['loop_rate'] / base:.2f}x | {row['wall_s']:.1f} | {row['wall_rate']:.3f} | {row['teacher_s_per_image']:.2f} |"
        )
    lines += [
        "",
        "loop: from the first process entering its generation loop to the last leaving it (excludes Python/torch "
        "imports, store set-up and hashing; includes building the loss network, ~3 s per process). "
        "end to end: wall time of the whole command(s). "
        "teacher s/image: time inside `stylize` divided by images (per process; overlapping processes both count).",
        "",
    ]
    text = "\n".join(lines)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
