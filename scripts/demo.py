#!/usr/bin/env python
"""The main job in one command, offline, on built-in sample data:

  1. teacher targets for sample photos with a generated stained-glass style
  2. a feed-forward student (the training default, timm_encoder) trained on them
  3. the fidelity report: student vs teacher
  4. the student exported to ONNX (parity-checked) and run on a sample photo
  5. where the report is

Each stage runs the same script a user would run, and prints the command first.
Rerunning resumes: finished targets are skipped and training continues from its last
checkpoint.

    python scripts/demo.py --out demo_output                      # offline: random-weight loss network
    python scripts/demo.py --out demo_output --weights pretrained # real VGG-19 weights (needs a download once)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="everything goes here (default %(default)s)")
    parser.add_argument("--weights", default="random", help="loss network: random (offline, default), pretrained, or a weights file")
    parser.add_argument("--size", type=int, default=96, help="teacher and training size, long side in px (default %(default)s)")
    parser.add_argument("--iters", type=int, default=150, help="teacher L-BFGS evaluations per image (default %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="student training steps (default %(default)s)")
    parser.add_argument("--student", default="timm_encoder", help="student architecture (default %(default)s, the training default)")
    parser.add_argument("--images", type=int, default=7, help="number of sample photos (default %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default %(default)s)")
    args = parser.parse_args()

    from distill.core.imageio import save_image
    from distill.samples import stained_glass, write_sample_contents

    out = args.out.resolve()
    data, store, run, report, exported = out / "data", out / "targets", out / "run", out / "report", out / "export"
    started = time.perf_counter()
    if args.weights == "random":
        print(
            "NOTE: offline mode: the loss network has RANDOM weights (no download needed): a seeded texture network "
            "that stylises, not learned VGG-19 features. Use --weights pretrained for those.",
            flush=True,
        )
    style = save_image(stained_glass(size=256), data / "style" / "stained_glass.png")
    contents = write_sample_contents(data / "content", long_side=max(args.size * 2, 256), count=args.images, square=True)
    print(f"sample data: {len(contents)} photos in {data / 'content'}, style {style}", flush=True)

    teacher = ["--weights", args.weights, "--size", str(args.size), "--iters", str(args.iters)]
    _stage(1, "teacher targets", "generate_targets.py", "--content-dir", data / "content", "--style", style, "--out", store,
           "--batch-size", "4", "--device", args.device, *teacher)

    training = ["--targets", store, "--out", run, "--student", args.student, "--steps", str(args.steps),
                "--batch-size", "4", "--crop-size", str(min(args.size, 64)), "--lr", "3e-3", "--device", args.device,
                "--eval-interval", "50", "--image-interval", "50", "--eval-size", str(args.size),
                # A few sample photos: hold out more than the usual 10% so the report has several images.
                "--set", "heldout_fraction=0.3"]
    if (run / "checkpoints" / "last_state.pt").exists():
        training = ["--out", run, "--resume", "--steps", str(args.steps), "--device", args.device]
    _stage(2, "train the student", "train_student.py", *training)

    # The gate asks whether the student agrees with its teacher better than two images that
    # need no student (the photo, and the photo recoloured to the style); the report says why not,
    # and shows how far the teacher agrees with itself on the mirrored photos (its self-agreement).
    compared = _stage(3, "compare student and teacher", "compare.py", "--run", run, "--targets", store, "--out", report,
                      "--device", args.device, "--beat-baselines", "--teacher-self-agreement", check=False)
    if compared not in (0, 1):  # 1 only means the gate failed: the report and its summary say why
        return compared

    onnx_file = exported / "student.onnx"
    _stage(4, "export to ONNX", "export_student.py", "--checkpoint", run / "checkpoints" / "best.safetensors",
           "--format", "onnx", "--out", onnx_file)
    _stage(5, "stylise a photo with the exported model", "stylize.py", "--model", onnx_file, "--input", contents[0],
           "--output", exported / f"{contents[0].stem}_stylized.png")

    minutes = (time.perf_counter() - started) / 60
    print(f"\nDone in {minutes:.1f} min.")
    print(f"  report:  {report / 'index.html'}   (open it in a browser; grid.png and tsne.png beside it)")
    print(f"  student: {run / 'checkpoints' / 'best.safetensors'}  exported: {onnx_file}")
    print(f"  TensorBoard: tensorboard --logdir {run / 'tensorboard'}")
    if args.weights == "random":
        print("  (random-weight loss network: see the banner in the report)")
    return 0


def _stage(number: int, title: str, script: str, *arguments: object, check: bool = True) -> int:
    command = [sys.executable, str(ROOT / "scripts" / script), *map(str, arguments)]
    print(f"\n[{number}/5] {title}\n$ {shlex.join(['python', 'scripts/' + script, *map(str, arguments)])}", flush=True)
    # The stages import this checkout, whether or not (or wherever) the package is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = subprocess.call(command, cwd=ROOT, env=env)
    if check and code != 0:
        print(f"demo: stage {number} ({title}) failed with exit code {code}; rerun the demo to resume", file=sys.stderr)
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
