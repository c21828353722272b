"""Teacher vs student: a fidelity report for a trained student, on held-out photos.

The headline is agreement with the teacher (SSIM, PSNR) next to two baselines that need
no student (the photo itself, and the photo recoloured to the style's colours), plus how
much style the student took and how much of the photo it kept, against the teacher.
Objective ratios, equivalent teacher iterations k*, Gram distances, speed and a t-SNE of
style embeddings follow as secondary figures. Anything wrong (below a baseline, a gamed
objective, not stylised) is one line each, on the console and in red in the report.

    python scripts/compare.py --run runs/mosaic --targets store/ --out report/
    python scripts/compare.py --run runs/mosaic --targets store/ --out report/ --min-ssim 0.6 --beat-baselines

Writes REPORT_DIR/report.json, index.html (open it from disk), grid.png, tsne.png and
tsne_scatter.png; REPORT_DIR must be new, empty or hold an earlier report (which is
replaced): a folder with other files is refused, nothing in it changed. Exit codes: 0 done,
1 a gate failed (the report is still written) or a failure, 2 bad input (missing run,
checkpoint or store, empty split, an --out folder that is not a report's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distill.cli.console import CommandParser, ProgressBar, fail, process_settings, run_main, warn_if_random
from distill.core.devices import resolve_device
from distill.core.errors import StoreError
from distill.core.outputs import check_output_folder
from distill.report.aggregate import check_gates
from distill.report.fidelity import evaluate_fidelity, prepare
from distill.report.files import is_report_folder, write_report
from distill.report.options import FidelityInputError, FidelityOptions
from distill.report.page import fmt
from students import StudentCheckpointError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    defaults = FidelityOptions()
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="training run folder (RUN_DIR with checkpoints/); optional with --checkpoint PATH")
    p.add_argument("--targets", type=Path, required=True, help="the teacher-target store the student was trained on")
    p.add_argument("--out", type=Path, required=True, help="report folder: new, empty, or an earlier report's (replaced)")
    p.add_argument("--split", default=defaults.split, choices=("heldout", "train", "all"), help="store split to evaluate (default %(default)s)")
    p.add_argument("--checkpoint", default=defaults.checkpoint, help="best, last or a checkpoint path (default %(default)s)")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto (default %(default)s)")
    p.add_argument("--weights", help="override the loss network's weights source only (e.g. a local file when the store says pretrained)")
    p.add_argument("--config-hash", help="teacher config in the store (prefix ok); default: the checkpoint's, else the only one")
    p.add_argument("--heldout-fraction", type=float, help="default: the training run's (from the checkpoint), else 0.1")
    p.add_argument("--max-images", type=int, help="evaluate at most N images of the split")
    p.add_argument("--embedding-layers", help="comma-separated style layers for Gram distances and t-SNE (default: the two shallowest)")
    p.add_argument("--timing-runs", type=int, default=defaults.timing_runs, help="timed student runs, median reported (default %(default)s)")
    p.add_argument("--retime-iterations", type=int, default=defaults.retime_iterations,
                   help="teacher iterations to time when the store's timings come from another device type (default %(default)s)")
    p.add_argument("--tsne-seed", type=int, default=defaults.tsne_seed, help="random_state of PCA and t-SNE (default %(default)s)")
    p.add_argument(
        "--teacher-self-agreement", action="store_true",
        help="also run the teacher on each photo mirrored (one teacher run per image): how well the teacher agrees "
        "with itself, the reference for how closely a student can be expected to follow it",
    )
    p.add_argument("--min-ssim", type=float, help="exit 1 if the mean SSIM (student vs teacher) is below this")
    p.add_argument("--beat-baselines", action="store_true",
                   help="exit 1 unless the student agrees with the teacher better than both no-student baselines")
    p.add_argument("--max-objective-ratio", type=float, help="exit 1 if the mean student/teacher objective ratio is above this")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.run is None and args.checkpoint in ("best", "last"):
        fail(f"--run RUN_DIR is needed for --checkpoint {args.checkpoint} (or pass --checkpoint PATH)")
    options = _options(args)  # checks --max-images and --heldout-fraction
    inputs = [("--targets", args.targets)] + ([("--run", args.run)] if args.run is not None else [])
    check_output_folder(args.out, option="--out", inputs=inputs, ours=is_report_folder, what="fidelity report")
    with process_settings():
        device = resolve_device(args.device)
        prepare(args.run, args.targets, options)  # every input error exits 2 before the loss network is built
        with ProgressBar(desc="compare", unit="image") as bar:
            result = evaluate_fidelity(
                run_dir=args.run, store_root=args.targets, options=options, device=device,
                progress=None if args.quiet else bar.update_to,
            )
    report = result.report
    warn_if_random(report["weights"])
    gates = check_gates(
        report, min_ssim=args.min_ssim, max_objective_ratio=args.max_objective_ratio, beat_baselines=args.beat_baselines
    )
    report["gates"] = [gate.to_dict() for gate in gates]
    write_report(result, args.out)
    _print_summary(report, split=args.split, out=args.out)
    failed = [gate for gate in gates if not gate.passed]
    for gate in failed:
        print(f"gate failed: {gate.name} {gate.threshold:g}: {gate.message}", file=sys.stderr)
    return 1 if failed else 0


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 done, 1 a gate failed (the report is still written), 2 bad input."""
    run_main(lambda: main(argv, prog=prog), expected=(FidelityInputError, StoreError, StudentCheckpointError, NotADirectoryError))


def _options(args: argparse.Namespace) -> FidelityOptions:
    return FidelityOptions(
        split=args.split,
        checkpoint=args.checkpoint,
        device=args.device,
        weights=args.weights,
        config_hash=args.config_hash,
        heldout_fraction=args.heldout_fraction,
        max_images=args.max_images,
        embedding_layers=tuple(x.strip() for x in args.embedding_layers.split(",") if x.strip()) if args.embedding_layers else None,
        timing_runs=args.timing_runs,
        retime_iterations=args.retime_iterations,
        tsne_seed=args.tsne_seed,
        teacher_self_agreement=args.teacher_self_agreement,
    )


def _print_summary(report: dict, *, split: str, out: Path) -> None:
    """The headline numbers and every diagnosis, one line each, on stderr."""
    agg, speed = report["aggregate"], report["speed"]
    agree = agg["agreement"]
    print(
        f"compare: {agg['images']} {split} image(s); agreement with the teacher: student SSIM "
        f"{fmt(agree['student']['ssim'])} / PSNR {fmt(agree['student']['psnr'])} dB vs baselines: photo "
        f"{fmt(agree['content']['ssim'])} / {fmt(agree['content']['psnr'])} dB, recoloured photo "
        f"{fmt(agree['recoloured']['ssim'])} / {fmt(agree['recoloured']['psnr'])} dB",
        file=sys.stderr,
    )
    if "teacher_mirrored" in agree:
        print(
            f"compare: reference: the teacher itself, run on the mirrored photos, agrees with its targets at SSIM "
            f"{fmt(agree['teacher_mirrored']['ssim'])} / PSNR {fmt(agree['teacher_mirrored']['psnr'])} dB; "
            "a student near this agrees with the teacher as well as the teacher does with itself",
            file=sys.stderr,
        )
    teacher_fig, student_fig = agg["stylisation"]["teacher"], agg["stylisation"]["student"]
    print(
        "compare: stylisation (colour / texture moved toward the style, structure kept): teacher "
        f"{teacher_fig['colour_moved']:.2f} / {teacher_fig['texture_moved']:.2f} / {teacher_fig['structure_kept']:.2f}, "
        f"student {student_fig['colour_moved']:.2f} / {student_fig['texture_moved']:.2f} / {student_fig['structure_kept']:.2f}",
        file=sys.stderr,
    )
    print(
        f"compare: secondary: objective ratio student/teacher {fmt(agg['ratio']['mean']['total'])}; "
        f"{agg['equivalent_iterations']['summary']}; teacher {fmt(speed['teacher_seconds_per_image'])} s vs student "
        f"{fmt(speed['student_ms_per_image'])} ms per image = {fmt(speed['speedup'])}x ({speed['teacher_source']})",
        file=sys.stderr,
    )
    for line in agg["diagnoses"]:
        print(f"WARNING: {line}", file=sys.stderr)
    print(f"compare: wrote {out / 'index.html'} and report.json, grid.png, tsne.png", file=sys.stderr)
