#!/usr/bin/env python
"""Deep Photo Style Transfer offline: photorealism, region colour and structure on every shared photo pair.

For each pair of ``DATA/photoreal`` (``content/inN.png``, ``style/inN.png`` and their
semantic masks ``content_seg/``, ``style_seg/``), at each size, it runs the teacher twice
with the same masks, criterion and iteration budget:

- **plain**: the offline default teacher (Gatys with region-by-region style statistics);
- **photoreal**: ``--photoreal``: the same plus the matting-Laplacian term, from the photo
  moved to the style's whole colour distribution region by region, guided-filtered at the end;

and measures each result with :mod:`distill.report.photometrics` (no loss network
involved): the affine residual (RMS error of the best local affine colour map from the
photo, 3x3 windows) and its ratio photoreal / plain, the colour moved toward the style's
same region for every shared region, and the structure kept. Then the matting Laplacian's
build time and peak memory, and the photoreal teacher's seconds per iteration and peak
memory, at ``--scaling-sizes`` (each in a fresh process, so peaks do not mix).

Writes ``benchmarks/results/photoreal_<label>_<device>.md`` (scaling: ``photoreal_scaling_<device>.md``) and a gallery (content |
style | plain | photoreal, one row per pair, at the largest size).

    python benchmarks/bench_photoreal.py                         # ../shared/data/photoreal
    python benchmarks/bench_photoreal.py --sample-pairs --label unseen          # photos no tuning saw
    python benchmarks/bench_photoreal.py --scaling-only                         # Laplacian and teacher cost at 256-1024 px
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_teacher import machine_description  # noqa: E402

from distill.core.imageio import list_images, load_image, resize_image, save_image  # noqa: E402
from distill.core.masks import MaskWarning, resize_mask  # noqa: E402
from distill.objective.config import CriterionConfig  # noqa: E402
from distill.objective.criterion import build_criterion  # noqa: E402
from distill.objective.matting import matting_laplacian  # noqa: E402
from distill.report.photometrics import photoreal_figures  # noqa: E402
from distill.samples import sample_photo_paths  # noqa: E402
from teachers.gatys import DEFAULT_PHOTOREAL_WEIGHT, PHOTOREAL_CONTENT_WEIGHT, TeacherConfig, load_mask_pair, photoreal_teacher, stylize  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "photoreal"
#: Pairs no tuning saw (``--sample-pairs``): photos that installed packages carry, each with
#: another photo as its style, without masks (the whole image is one region).
SAMPLE_PAIRS = {
    "astronaut": "video/mountain/frame_0001.png",
    "coffee": "sample:rocket",
    "chelsea": "sample:motorcycle",
    "grace_hopper": "sample:coffee",
}
#: The issue's bar: residual ratio to plain Gatys, every region's colour, structure kept.
BAR = {"residual_ratio": 0.35, "min_region_colour_moved": 0.6, "structure_kept": 0.6}


def teacher_configs(size: int, iterations: int) -> dict[str, TeacherConfig]:
    """The two teachers compared: the offline default, and the same with ``--photoreal``'s settings."""
    criterion = CriterionConfig(weights="random", style_size=size)
    plain = TeacherConfig(criterion=criterion, size=size, iterations=iterations)
    return {"plain": plain.resolved(), "photoreal": photoreal_teacher(plain).resolved()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with content/, style/ and optional content_seg/, style_seg/ (same file names)")
    parser.add_argument("--pairs", nargs="*", help="pair names (default: every content/*)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the Laplacian and teacher time and memory at --scaling-sizes (photoreal_scaling_<device>.md)")
    parser.add_argument("--scaling-sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--scaling-iters", type=int, default=10, help="teacher iterations timed per scaling size")
    parser.add_argument("--label", default="shared")
    parser.add_argument("--sample-pairs", action="store_true",
                        help="unseen pairs made from the sample photos of installed packages (SAMPLE_PAIRS), no masks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scaling-child", nargs=2, metavar=("SIZE", "ITERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore", MaskWarning)  # one-sided regions are expected in the shared masks
    if args.scaling_child:
        print(json.dumps(scaling_figures(args.data, int(args.scaling_child[0]), int(args.scaling_child[1]))))
        return

    device = torch.device(args.device)
    if args.scaling_only:
        scaling = [run_scaling_child(args, size) for size in args.scaling_sizes]
        out = HERE / "results" / f"photoreal_scaling_{device.type}.md"
        out.write_text(render_scaling(scaling, args, device))
        print(f"wrote {out}")
        return
    if args.sample_pairs:
        args.data = prepare_sample_pairs(HERE / "work" / "photoreal_samples")
    names = args.pairs or [p.name for p in list_images(args.data / "content")]
    rows, gallery = [], []
    for size in args.sizes:
        for name in names:
            pair = load_pair(args.data, name)
            results = {}
            for mode, config in teacher_configs(size, args.iters).items():
                results[mode] = run_teacher(pair, config, device=device)
            ratio = results["photoreal"]["figures"].affine_residual / results["plain"]["figures"].affine_residual
            for mode, result in results.items():
                row = {"pair": Path(name).stem, "size": size, "mode": mode, "seconds": result["seconds"],
                       "iterations": result["iterations"], **result["figures"].as_dict(),
                       "residual_ratio": ratio if mode == "photoreal" else 1.0}
                rows.append(row)
                print(format_row(row), flush=True)
            if size == max(args.sizes):
                gallery.append([pair["content_at"](size), resize_image(pair["style"], size=results["plain"]["image"].shape[-2:]),
                                results["plain"]["image"], results["photoreal"]["image"]])
    out = HERE / "results" / f"photoreal_{args.label}_{device.type}.md"
    out.write_text(render(rows, args, device, names))
    gallery_path = HERE / "results" / f"photoreal_{args.label}_gallery.png"
    save_image(gallery_image(gallery), gallery_path)
    print(f"wrote {out} and {gallery_path}")


def prepare_sample_pairs(folder: Path) -> Path:
    """content/NAME.png and style/NAME.png for every :data:`SAMPLE_PAIRS` entry (long side 512)."""
    samples = sample_photo_paths()
    shared = DEFAULT_DATA.parent
    for name, style in SAMPLE_PAIRS.items():
        style_path = samples[style.removeprefix("sample:")] if style.startswith("sample:") else shared / style
        for kind, path in (("content", samples[name]), ("style", style_path)):
            if not (folder / kind / f"{name}.png").is_file():
                save_image(resize_image(load_image(path), long_side=512), folder / kind / f"{name}.png")
    return folder


def load_pair(data: Path, name: str) -> dict:
    """Content, style and their masks (fitted to their photos) of one pair; a pair without masks is one region."""
    content, style = load_image(data / "content" / name), load_image(data / "style" / name)
    content_mask = style_mask = None
    if (data / "content_seg" / name).is_file() and (data / "style_seg" / name).is_file():
        content_mask, style_mask = load_mask_pair(
            str(data / "content_seg" / name), str(data / "style_seg" / name), content.shape[-2:], [style.shape[-2:]]
        )
    return {
        "content": content, "style": style, "content_mask": content_mask, "style_mask": style_mask,
        "content_at": lambda size: resize_image(content, long_side=size),
    }


def run_teacher(pair: dict, config: TeacherConfig, *, device: torch.device) -> dict:
    content = pair["content_at"](config.size).unsqueeze(0).to(device)
    masks = None
    if pair["content_mask"] is not None:
        masks = resize_mask(pair["content_mask"], tuple(content.shape[-2:]))[None].to(device)
    criterion = build_criterion(config.criterion, [pair["style"]], device=device, style_mask=pair["style_mask"])
    started = time.perf_counter()
    result = stylize(criterion, content, config=config, style_image=pair["style"], content_masks=masks,
                     style_mask=pair["style_mask"])
    seconds = time.perf_counter() - started
    image = result.images[0]
    figures = photoreal_figures(image, pair["content"], pair["style"], pair["content_mask"], pair["style_mask"])
    return {"image": image, "figures": figures, "seconds": seconds, "iterations": result.iterations_run[0]}


def scaling_figures(data: Path, size: int, iterations: int) -> dict:
    """Laplacian build seconds and the photoreal teacher's seconds per iteration at ``size`` (run in a fresh process)."""
    torch.set_num_threads(torch.get_num_threads())
    name = list_images(data / "content")[0].name
    pair = load_pair(data, name)
    content = pair["content_at"](size)
    started = time.perf_counter()
    laplacian = matting_laplacian(content)
    build_seconds = time.perf_counter() - started
    laplacian_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del laplacian
    config = teacher_configs(size, iterations)["photoreal"]
    result = run_teacher(pair, config, device=torch.device("cpu"))
    return {
        "size": size, "pixels": int(content.shape[-2] * content.shape[-1]), "pair": Path(name).stem,
        "laplacian_seconds": build_seconds, "laplacian_peak_rss": laplacian_peak,
        "teacher_seconds_per_iteration": result["seconds"] / max(1, result["iterations"]),
        "teacher_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_scaling_child(args, size: int) -> dict:
    command = [sys.executable, __file__, "--data", str(args.data), "--scaling-child", str(size), str(args.scaling_iters)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    print(f"{size} px: Laplacian {figures['laplacian_seconds']:.2f} s, peak RSS {figures['laplacian_peak_rss'] / 2**30:.2f} GiB; "
          f"teacher {figures['teacher_seconds_per_iteration']:.2f} s/iteration, peak RSS {figures['teacher_peak_rss'] / 2**30:.2f} GiB",
          flush=True)
    return figures


def passes(row) -> bool:
    return all(row[key] <= bar if key == "residual_ratio" else row[key] >= bar for key, bar in BAR.items())


def format_row(row) -> str:
    regions = ", ".join(f"{k} {v:+.2f}" for k, v in row["region_colour_moved"].items())
    verdict = ("pass" if passes(row) else "FAIL") if row["mode"] == "photoreal" else ""
    return (
        f"{row['pair']:>6} {row['size']:>4} px {row['mode']:<9} residual {row['affine_residual']:.4f} "
        f"(ratio {row['residual_ratio']:.2f}) regions [{regions}] structure {row['structure_kept']:.2f} "
        f"{row['iterations']} it {row['seconds']:.0f} s {verdict}"
    )


def render(rows, args, device, names) -> str:
    lines = [
        f"# Photorealistic transfer, offline ({args.label} pairs, {device.type})",
        "",
        machine_description(device),
        "",
        f"Command: `python benchmarks/bench_photoreal.py{' --sample-pairs' if args.sample_pairs else ''} --label {args.label} "
        f"--sizes {' '.join(map(str, args.sizes))} --iters {args.iters}`. Pairs: {', '.join(Path(n).stem for n in names)} "
        + ("(sample photos of installed packages, each with another photo as its style, no masks: one region 'all')."
           if args.sample_pairs else "(content, style and their semantic masks)."),
        "",
        "Both teachers use the offline default criterion (random texture network, sliced-Wasserstein statistics taken "
        "region by region with the masks), the same style weight and iterations, from the photo. **plain**: "
        f"Laplacian-pyramid optimisation from the photo, no photorealism term. **photoreal**: `--photoreal` "
        f"(matting-Laplacian weight {DEFAULT_PHOTOREAL_WEIGHT:g}, content weight {PHOTOREAL_CONTENT_WEIGHT:g} against the "
        f"plain teacher's {CriterionConfig().content_weight:g}, pixels, from the photo's colours moved to the style's whole colour "
        "distribution region by region, guided filter with the photo at the end). Figures from `distill.report.photometrics` (no loss network): "
        "**residual**: RMS error of the best affine colour map from the photo in every 3x3 window; **ratio**: "
        "photoreal / plain; **min region**: the least colour moved toward the style's same region over the shared "
        "regions (sliced Wasserstein in CIELAB; distances within 2, about Delta E 4, count as matched); "
        "**structure**: gradient-magnitude correlation with the photo. Bar (photoreal): ratio <= 0.35, every "
        "region >= 0.6, structure >= 0.6.",
        "",
        "| pair | size | mode | residual | ratio | min region | regions | structure | iterations | s | bar |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        regions = ", ".join(f"{k} {v:.2f}" for k, v in row["region_colour_moved"].items())
        verdict = ("pass" if passes(row) else "**fail**") if row["mode"] == "photoreal" else ""
        lines.append(
            f"| {row['pair']} | {row['size']} | {row['mode']} | {row['affine_residual']:.4f} | {row['residual_ratio']:.2f} | "
            f"{row['min_region_colour_moved']:.2f} | {regions} | {row['structure_kept']:.2f} | {row['iterations']} | "
            f"{row['seconds']:.0f} | {verdict} |"
        )
    photoreal = [r for r in rows if r["mode"] == "photoreal"]
    if photoreal:
        lines += [
            "",
            f"Photoreal: {sum(passes(r) for r in photoreal)} of {len(photoreal)} pairs pass; worst ratio "
            f"{max(r['residual_ratio'] for r in photoreal):.2f}, worst region {min(r['min_region_colour_moved'] for r in photoreal):.2f}, "
            f"worst structure {min(r['structure_kept'] for r in photoreal):.2f}.",
        ]
    lines += ["", f"Gallery: `benchmarks/results/photoreal_{args.label}_gallery.png` (content | style | plain | photoreal)."]
    return "\n".join(lines) + "\n"


def render_scaling(scaling, args, device) -> str:
    lines = [
        f"# Photorealistic transfer: cost at larger sizes ({device.type})",
        "",
        machine_description(device),
        "",
        f"Command: `python benchmarks/bench_photoreal.py --scaling-only --scaling-sizes {' '.join(map(str, args.scaling_sizes))}`. "
        f"Pair {scaling[0]['pair']}; each size in a fresh process. Laplacian: building the matting Laplacian of the photo "
        f"(scipy.sparse). Teacher: `--photoreal` timed over {args.scaling_iters} iterations (masks, region statistics and "
        "the photorealism term included); peak RSS of the whole process.",
        "",
        "| size | pixels | Laplacian s | peak RSS after Laplacian | teacher s / iteration | teacher peak RSS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scaling:
        lines.append(
            f"| {s['size']} | {s['pixels']:,} | {s['laplacian_seconds']:.2f} | {s['laplacian_peak_rss'] / 2**30:.2f} GiB | "
            f"{s['teacher_seconds_per_iteration']:.2f} | {s['teacher_peak_rss'] / 2**30:.2f} GiB |"
        )
    return "\n".join(lines) + "\n"


def gallery_image(rows) -> torch.Tensor:
    padded = [torch.cat([torch.nn.functional.pad(t, (2, 2, 2, 2), value=1.0) for t in row], dim=2) for row in rows]
    width = max(r.shape[-1] for r in padded)
    return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in padded], dim=1)


if __name__ == "__main__":
    main()
