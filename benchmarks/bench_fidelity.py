#!/usr/bin/env python
"""How close does a student get to its teacher on photos it never saw?

1. Photos: a training set (the shared photo pairs' photos, a few video frames and
   the sample photos installed packages carry, each also as two crops at other scales)
   and a held-out set that no training or model selection ever touches.
2. Teacher targets for both with the offline default teacher (one target store each).
3. Students (``johnson``, ``fast``, ``timm_encoder``) trained with the default recipe and
   with distillation off (``distill_weight 0``, plain Johnson et al. training).
4. On the held-out photos: SSIM and PSNR to the teacher, the two no-student baselines
   (the photo; the photo recoloured to the style), the stylisation figures of teacher and
   student, training minutes on this machine and student milliseconds per 512 px image.

Writes ``benchmarks/results/fidelity_<device>.md`` and a gallery (photo | teacher |
students). Every stage resumes: rerun the same command after an interruption.

    python benchmarks/bench_fidelity.py                          # ../shared/data, rain-princess style
    python benchmarks/bench_fidelity.py --students fast --recipes default --steps 300
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
from bench_teacher import machine_description  # noqa: E402

from distill.core.config import replace as config_replace  # noqa: E402
from distill.cli.console import ProgressBar, write_line  # noqa: E402
from distill.core.devices import resolve_device  # noqa: E402
from distill.objective.config import CriterionConfig  # noqa: E402
from distill.report.options import FidelityOptions  # noqa: E402
from distill.report.fidelity import evaluate_fidelity  # noqa: E402
from distill.report.speed import time_student  # noqa: E402
from distill.core.imageio import list_images, load_image, resize_image, save_image  # noqa: E402
from distill.samples import sample_photo_paths  # noqa: E402
from distill.targets.generation import generate_targets  # noqa: E402
from distill.train.config import resolve_config  # noqa: E402
from distill.train.loop import train  # noqa: E402
from students import load_student  # noqa: E402
from distill.core.affine import affine_residual  # noqa: E402
from distill.targets.store import TargetStore  # noqa: E402
from teachers.gatys import TeacherConfig, photoreal_teacher  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
#: Photos no training run or model selection ever sees.
HELDOUT = ("content/amber.jpg", "photoreal/content/in3.png", "photoreal/content/in16.png")
HELDOUT_SAMPLES = ("astronaut", "coffee", "chelsea")
TRAIN_SAMPLES = ("rocket", "motorcycle", "hubble", "grace_hopper")
RECIPES = {
    "default": {},
    "no-distill": {"distill_weight": 0.0},
}
#: Per-student settings within the ~45 min a run may take on a loaded 2-core machine:
#: fast takes 3x the default learning rate (72 k parameters, 2000 steps); johnson is ~2.5x
#: slower per step, so it gets 1000 steps and starts as the identity (input skip) to
#: spend them on the style rather than on learning to copy the photo.
STUDENT_SETTINGS = {
    "fast": {"lr": 3e-3, "steps": 2000},
    "johnson": {"steps": 1000, "student_kwargs": {"input_skip": True}},
    "timm_encoder": {"steps": 1000},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--style", type=Path, help="style painting (default: DATA/style/rain-princess-cropped.jpg)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "fidelity", help="photos, stores and runs (default %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="teacher and evaluation size, long side (default %(default)s)")
    parser.add_argument("--iters", type=int, default=200, help="teacher L-BFGS iterations (default %(default)s)")
    parser.add_argument("--students", nargs="+", default=["johnson", "fast", "timm_encoder"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--pairs", nargs="+", metavar="STUDENT:RECIPE", help="only these runs (default: every student x recipe)")
    parser.add_argument("--steps", type=int, help="training steps per student (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="TrainConfig override for every run")
    parser.add_argument(
        "--teacher-set", action="append", default=[], metavar="FIELD=VALUE",
        help="TeacherConfig override (dotted for the criterion: criterion.style_weight=5); its targets join the same stores",
    )
    parser.add_argument("--label", default="", help="suffix of the results file and gallery")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--crops", type=int, default=2, help="training crops per photo at other scales (default %(default)s)")
    parser.add_argument(
        "--photoreal", action="store_true",
        help="photorealistic teacher (--photoreal) with a photo as the style (default DATA/photoreal/style/in53.png); "
        "adds the affine residual against plain Gatys on the held-out photos",
    )
    args = parser.parse_args()
    if args.photoreal:
        args.work = args.work if args.work != HERE / "work" / "fidelity" else HERE / "work" / "fidelity_photoreal"
        args.label = args.label or "_photoreal"

    device = resolve_device(args.device)
    default_style = args.data / ("photoreal/style/in53.png" if args.photoreal else "style/rain-princess-cropped.jpg")
    style = args.style or default_style
    train_dir, heldout_dir = prepare_photos(args.data, args.work, size=args.size, exclude=style, crops=args.crops)
    plain = TeacherConfig(
        criterion=CriterionConfig(weights="random", style_size=args.size), size=args.size, iterations=args.iters
    )
    plain = config_replace(plain, **_assignments(args.teacher_set))
    plain = plain.resolved()
    teacher = photoreal_teacher(plain).resolved() if args.photoreal else plain
    stores, config_hashes = {}, {}
    folders = [("train", train_dir, teacher), ("heldout", heldout_dir, teacher)]
    if args.photoreal:  # plain Gatys on the held-out photos: the reference of the affine residual
        folders.append(("heldout_plain", heldout_dir, plain))
    for name, folder, config in folders:
        stores[name] = args.work / f"store_{name}"
        started = time.perf_counter()
        summary = generate_targets(
            content_dir=folder, style_paths=[style], store_root=stores[name], teacher_config=config,
            batch_size=4, device=str(device), log=print,
        )
        config_hashes[name] = summary.config_hash
        print(f"{name} targets: {summary.new} new, {summary.present} present ({time.perf_counter() - started:.0f} s)", flush=True)

    overrides = _assignments(args.set)
    rows, outputs = [], {}
    pairs = [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else [(s, r) for s in args.students for r in args.recipes]
    for student, recipe in pairs:
        # A run belongs to the targets it learns from: a changed teacher gets a new run, not a resumed one.
        run_dir = args.work / "runs" / f"{student}_{recipe}{args.label}_{config_hashes['train'][:8]}"
        settings = {
            "targets": str(stores["train"]), "student": student, "device": str(device),
            # Small photos (long side = the teacher's size): crops that fit the shortest ones,
            # evaluation at the teacher's own size.
            "crop_size": 64, "batch_size": 8, "eval_size": args.size, "eval_interval": 100,
            "checkpoint_interval": 100, "image_interval": 500, **STUDENT_SETTINGS.get(student, {}), **RECIPES[recipe],
        }
        if args.steps:
            settings["steps"] = args.steps
        settings["config_hash"] = config_hashes["train"]  # other teachers' targets may share the store
        settings.update(overrides)
        minutes = run_training(run_dir, settings)
        # The teacher's own agreement across a mirror depends on the teacher only: measured once.
        row, images = evaluate(run_dir, stores["heldout"], device, plain_store=stores.get("heldout_plain"),
                               config_hash=config_hashes["heldout"], plain_hash=config_hashes.get("heldout_plain"),
                               teacher_self_agreement=not rows)
        row["ssim_teacher_mirrored"] = row["ssim_teacher_mirrored"] if not rows else rows[0]["ssim_teacher_mirrored"]
        row.update(student=student, recipe=recipe, train_minutes=minutes)
        rows.append(row)
        outputs[(student, recipe)] = images
        print(format_row(row), flush=True)

    name = f"fidelity{args.label}_{device.type}"
    (HERE / "results" / f"{name}.md").write_text(render(rows, args, device, style, teacher, stores, config_hashes))
    save_image(gallery(outputs, pairs[0][1]), HERE / "results" / f"{name}_gallery.png")
    print(f"wrote {HERE / 'results' / (name + '.md')}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _assignments(items: list[str]) -> dict:
    """Command-line FIELD=VALUE items as a dict; values are read as JSON (numbers, lists, true/false/null)
    where they parse, else kept as strings (``student=fast``)."""
    def value_of(text: str):
        try:
            return json.loads(text)
        except ValueError:
            return text

    return {key: value_of(value) for key, value in (item.split("=", 1) for item in items)}


def prepare_photos(data: Path, work: Path, *, size: int, exclude: Path | None = None, crops: int = 2) -> tuple[Path, Path]:
    """Training and held-out photo folders (PNG, long side 2x the teacher's size); ``exclude``: the style photo."""
    train_dir, heldout_dir = work / "photos_train", work / "photos_heldout"
    if train_dir.is_dir() and heldout_dir.is_dir():
        return train_dir, heldout_dir
    samples = sample_photo_paths()
    heldout = [data / p for p in HELDOUT] + [samples[n] for n in HELDOUT_SAMPLES if n in samples]
    held_photos = {path.resolve() for path in heldout} | ({exclude.resolve()} if exclude else set())
    training = [p for p in list_images(data / "photoreal" / "content") if p.resolve() not in held_photos]
    training += [p for p in list_images(data / "photoreal" / "style") if p.resolve() not in held_photos]
    training += list_images(data / "video" / "mountain")[::8]
    training += [samples[n] for n in TRAIN_SAMPLES if n in samples]
    long_side = 2 * size
    for path in heldout:
        save_image(resize_image(load_image(path), long_side=long_side), heldout_dir / f"{_stem(path)}.png")
    generator = torch.Generator().manual_seed(0)
    for path in training:
        image = resize_image(load_image(path), long_side=long_side)
        save_image(image, train_dir / f"{_stem(path)}.png")
        # Two crops at other scales: the teacher's texture has a fixed size in pixels, so a
        # student must see photos at several scales to learn it (targets are made per crop).
        for index, fraction in enumerate((0.5, 0.7, 0.85)[:crops]):
            height, width = image.shape[-2:]
            crop_h, crop_w = max(16, round(height * fraction)), max(16, round(width * fraction))
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            crop = image[:, top:top + crop_h, left:left + crop_w]
            save_image(resize_image(crop, long_side=long_side), train_dir / f"{_stem(path)}_crop{index}.png")
    return train_dir, heldout_dir


def _stem(path: Path) -> str:
    return f"{path.parent.name}_{path.stem}"


def run_training(run_dir: Path, settings: dict) -> float:
    """Train (or resume) a run to its step count; returns the training minutes of all its sessions."""
    timing = run_dir / "bench_minutes.json"
    spent = json.loads(timing.read_text())["minutes"] if timing.exists() else 0.0
    resume = (run_dir / "checkpoints" / "last_state.pt").exists()
    config = resolve_config(overrides={**settings, "heldout_fraction": 0.15}, run_dir=run_dir, resume=resume)
    started = time.perf_counter()
    with ProgressBar(desc="train", unit="step") as bar:
        result = train(config, run_dir=run_dir, resume=resume, log=lambda line: write_line(line, file=sys.stdout),
                       progress=bar.update_to)
    spent += (time.perf_counter() - started) / 60
    run_dir.mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps({"minutes": spent, "step": result.step}))
    return spent


def evaluate(
    run_dir: Path, heldout_store: Path, device: torch.device, *, plain_store: Path | None = None,
    config_hash: str | None = None, plain_hash: str | None = None, teacher_self_agreement: bool = False,
) -> tuple[dict, dict]:
    options = FidelityOptions(split="all", checkpoint="best", heldout_fraction=0.0, timing_runs=3, config_hash=config_hash,
                              teacher_self_agreement=teacher_self_agreement)
    result = evaluate_fidelity(run_dir=run_dir, store_root=heldout_store, options=options, device=device)
    plain = None if plain_store is None else plain_gatys_images(result, plain_store, plain_hash)
    residuals = None if plain is None else affine_residuals(result, plain)
    agg = result.report["aggregate"]
    student, _ = load_student(run_dir / "checkpoints" / "best.safetensors", device=device)
    ms_512 = statistics.median(time_student(student.eval(), torch.rand(1, 3, 512, 512, device=device), runs=5))
    row = {
        "ssim": agg["agreement"]["student"]["ssim"],
        "psnr": agg["agreement"]["student"]["psnr"],
        "ssim_content": agg["agreement"]["content"]["ssim"],
        "ssim_recoloured": agg["agreement"]["recoloured"]["ssim"],
        "psnr_content": agg["agreement"]["content"]["psnr"],
        "psnr_recoloured": agg["agreement"]["recoloured"]["psnr"],
        "ssim_teacher_mirrored": agg["agreement"].get("teacher_mirrored", {}).get("ssim"),
        "teacher": agg["stylisation"]["teacher"],
        "student_figures": agg["stylisation"]["student"],
        "objective_ratio": agg["ratio"]["mean"]["total"],
        "ms_512": ms_512,
        "diagnoses": agg["diagnoses"],
        "images": agg["images"],
        "residuals": residuals,
    }
    images = {"content": result.contents, "teacher": result.teachers, "student": result.students, "names": result.names,
              "plain": plain}
    return row, images


def plain_gatys_images(result, plain_store: Path, config_hash: str | None = None) -> list[torch.Tensor]:
    """Plain Gatys's result for each held-out photo of ``result``, from the plain store (matched by file name)."""
    by_name = {Path(e.content_path).stem: e.target_path for e in TargetStore(plain_store).entries(config_hash, traces=False)}
    return [load_image(by_name[name]) for name in result.names]


def affine_residuals(result, plain: list[torch.Tensor]) -> dict[str, float]:
    """Mean affine residual (distill.core.affine) of teacher, student and plain Gatys on the held-out photos."""
    sums = {"teacher": 0.0, "student": 0.0, "plain": 0.0}
    for content, teacher, student, plain_image in zip(result.contents, result.teachers, result.students, plain):
        sums["teacher"] += affine_residual(teacher, content)
        sums["student"] += affine_residual(student, content)
        sums["plain"] += affine_residual(plain_image, content)
    return {key: value / len(result.names) for key, value in sums.items()}


def format_row(row: dict) -> str:
    figures = row["student_figures"]
    residuals = row["residuals"]
    if residuals:
        print(f"   affine residual: student {residuals['student']:.4f}, teacher {residuals['teacher']:.4f}, "
              f"plain Gatys {residuals['plain']:.4f} (student / plain {residuals['student'] / residuals['plain']:.2f})")
    return (
        f"{row['student']:>13} {row['recipe']:<10} SSIM {row['ssim']:.3f} (photo {row['ssim_content']:.3f}, recoloured "
        f"{row['ssim_recoloured']:.3f}, teacher mirrored {_fmt(row['ssim_teacher_mirrored'])}) PSNR {row['psnr']:.2f} dB; student colour {figures['colour_moved']:.2f} texture "
        f"{figures['texture_moved']:.2f} structure {figures['structure_kept']:.2f}; {row['train_minutes']:.1f} min; "
        f"{row['ms_512']:.0f} ms/512px"
    )


def render(rows, args, device, style, teacher, stores, config_hashes) -> str:
    counts = {name: len(TargetStore(path).entries(config_hashes[name])) for name, path in stores.items()}
    lines = [
        f"# Student fidelity on held-out photos ({device.type})",
        "",
        machine_description(device),
        "",
        f"Command: `python benchmarks/bench_fidelity.py{' --photoreal' if args.photoreal else ''}"
        f"{' --device ' + device.type if device.type != 'cpu' else ''}{f' --iters {args.iters}' if args.iters != 200 else ''}"
        f"{' --label ' + args.label if args.label and not args.photoreal else ''}{f' --crops {args.crops}' if args.crops != 2 else ''}"
        f"{' --students ' + ' '.join(args.students) if args.students != ['johnson', 'fast', 'timm_encoder'] else ''}"
        f"{' --recipes ' + ' '.join(args.recipes) if args.recipes != list(RECIPES) else ''}"
        f"{''.join(' --teacher-set ' + s for s in args.teacher_set)}{''.join(' --set ' + s for s in args.set)}{' --steps ' + str(args.steps) if args.steps else ''}"
        f"{' --pairs ' + ' '.join(args.pairs) if args.pairs else ''}`. Per-student settings: {STUDENT_SETTINGS}. "
        f"Teacher: offline default{' with ' + ', '.join(args.teacher_set) if args.teacher_set else ''} ({teacher.criterion.backbone}, {teacher.criterion.style_statistic}"
        f"{f', --photoreal (weight {teacher.photoreal_weight:g})' if teacher.photoreal_weight else ''}), {args.size} px, "
        f"{args.iters} iterations, style `{style.name}`. Training targets: {counts['train']} (photos"
        f"{f' and crops at {args.crops} other scales' if args.crops else ''}); held-out photos: {counts['heldout']} ({', '.join(Path(p).stem for p in HELDOUT)}, "
        f"{', '.join(HELDOUT_SAMPLES)}), never used in training or model selection.",
        "",
        "SSIM / PSNR: the student's output vs the teacher's image, whole held-out photos at the teacher's size. "
        "Baselines that need no student: the photo itself and the photo recoloured to the style's colour mean and "
        "covariance. Stylisation figures (colour moved toward the style, texture moved beyond recolouring, "
        "structure kept) as in the stylisation benchmark. Minutes: training wall time on this machine. "
        "ms: student forward at 512x512, median of 5. Teacher mirrored: the teacher itself, run again on each "
        "held-out photo mirrored left-right (and mirrored back), against its stored target: how far the teacher "
        "agrees with itself.",
        "",
        "| student | recipe | SSIM | PSNR dB | photo SSIM | recoloured SSIM | teacher mirrored SSIM | beats both | colour | texture | structure | objective ratio | train min | ms / 512 px |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        figures = row["student_figures"]
        beats = row["ssim"] > max(row["ssim_content"], row["ssim_recoloured"])
        lines.append(
            f"| {row['student']} | {row['recipe']} | {row['ssim']:.3f} | {row['psnr']:.2f} | {row['ssim_content']:.3f} | "
            f"{row['ssim_recoloured']:.3f} | {_fmt(row['ssim_teacher_mirrored'])} | {'yes' if beats else '**no**'} | {figures['colour_moved']:.2f} | "
            f"{figures['texture_moved']:.2f} | {figures['structure_kept']:.2f} | {row['objective_ratio']:.3g} | "
            f"{row['train_minutes']:.1f} | {row['ms_512']:.0f} |"
        )
    if rows:
        teacher_figures = rows[0]["teacher"]
        lines += ["", f"Teacher on the same photos: colour {teacher_figures['colour_moved']:.2f}, texture "
                      f"{teacher_figures['texture_moved']:.2f}, structure {teacher_figures['structure_kept']:.2f}."]
        with_residuals = [r for r in rows if r["residuals"]]
        if with_residuals:
            lines += [
                "", "Photorealism (mean affine residual over the held-out photos: RMS error of the best affine colour map "
                "from the photo in 3x3 windows; plain Gatys = the offline default teacher without the photorealism term, "
                "same style and iterations):", "",
                "| student | recipe | student | teacher | plain Gatys | student / plain |", "|---|---|---:|---:|---:|---:|",
            ]
            for r in with_residuals:
                res = r["residuals"]
                lines.append(f"| {r['student']} | {r['recipe']} | {res['student']:.4f} | {res['teacher']:.4f} | "
                             f"{res['plain']:.4f} | {res['student'] / res['plain']:.2f} |")
        flagged = [(r, line) for r in rows for line in r["diagnoses"]]
        if flagged:
            lines += ["", "What the report flags:", ""]
            lines += [f"- {r['student']} / {r['recipe']}: {line}" for r, line in flagged]
    lines += ["", f"Gallery: `benchmarks/results/fidelity{args.label}_{device.type}_gallery.png` (photo | "
                  f"{'plain Gatys | ' if args.photoreal else ''}teacher | "
                  f"{' | '.join(r['student'] for r in rows if r['recipe'] == rows[0]['recipe'])}, recipe {rows[0]['recipe'] if rows else ''})."]
    return "\n".join(lines) + "\n"


def gallery(outputs: dict, recipe: str) -> torch.Tensor:
    students = [key for key in outputs if key[1] == recipe]
    if not students:
        return torch.ones(3, 8, 8)
    first = outputs[students[0]]
    rows = []
    for index in range(len(first["content"])):
        plain = [first["plain"][index]] if first.get("plain") else []
        tiles = [first["content"][index], *plain, first["teacher"][index]] + [outputs[key]["student"][index] for key in students]
        rows.append(torch.cat([torch.nn.functional.pad(t, (2, 2, 2, 2), value=1.0) for t in tiles], dim=2))
    width = max(r.shape[-1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows], dim=1)


if __name__ == "__main__":
    main()
