#!/usr/bin/env python
"""One table from several bench_fidelity.py runs (a sweep of students, steps and teachers).

bench_fidelity.py writes one results file per ``--label``; a sweep runs many labels at
once (``benchmarks/run_cuda.sh`` runs them side by side on one GPU). This reads each
label's results file and its training run's ``metrics.jsonl`` (the agreement with the
teacher on the store's held-out share, every ``eval_interval`` steps), and writes
``results/fidelity_sweep_<device>.md``: per run the held-out figures, the margin over
the better no-student baseline, and the agreement curve, so it shows whether more steps,
another student or another teacher moves a student closer to its teacher. The per-label
files move to ``results/fidelity_runs/``.

    python benchmarks/fidelity_sweep.py --device cuda fast6k johnson4k timm2k
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COLUMNS = ("student", "recipe", "ssim", "psnr", "photo", "recoloured", "mirrored", "beats", "colour", "texture", "structure",
           "ratio", "minutes", "ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", nargs="+", help="the --label of each bench_fidelity.py run (without the leading _)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "fidelity", help="bench_fidelity.py's --work")
    args = parser.parse_args()
    runs = [read_run(label, args.device, args.work) for label in args.labels]
    out = RESULTS / f"fidelity_sweep_{args.device}.md"
    out.write_text(render(runs, args.device))
    archive = RESULTS / "fidelity_runs"
    archive.mkdir(exist_ok=True)
    for label in args.labels:
        for path in RESULTS.glob(f"fidelity_{label}_{args.device}*"):
            shutil.move(str(path), archive / path.name)
    print(f"wrote {out}; per-run files in {archive}")


def read_run(label: str, device: str, work: Path) -> dict:
    """The figures of one label: its table row, teacher figures, command, machine and curve."""
    path = RESULTS / f"fidelity_{label}_{device}.md"
    if not path.exists():
        path = RESULTS / "fidelity_runs" / path.name
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| student")]
    if len(rows) != 1:
        raise SystemExit(f"{path}: expected one student row, found {len(rows)}")
    values = [cell.strip() for cell in rows[0].strip("|").split("|")]
    columns = COLUMNS if len(values) == len(COLUMNS) else tuple(c for c in COLUMNS if c != "mirrored")  # older files
    cells = {"mirrored": "-", **dict(zip(columns, values))}
    teacher = re.search(r"Teacher on the same photos: colour (-?\d+\.\d+), texture (-?\d+\.\d+), structure (-?\d+\.\d+)", text)
    command = re.search(r"Command: `([^`]*)`", text).group(1)
    variant = re.search(r"Teacher: offline default(?: with ([^(]*))? \(", text).group(1) or "default"
    iterations = re.search(r", (\d+) iterations, style", text).group(1)
    machine = text.splitlines()[2]
    # bench_fidelity.py names a run after its targets' teacher (``_<hash8>``); earlier runs lack the suffix.
    run_name = f"{cells['student']}_{cells['recipe']}_{label}"
    candidates = [work / "runs" / run_name, *(work / "runs").glob(f"{run_name}_" + "?" * 8)]
    found = [path / "metrics.jsonl" for path in candidates if (path / "metrics.jsonl").exists()]
    metrics = max(found, key=lambda path: path.stat().st_mtime) if found else None
    curve = []
    if metrics is not None:
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        curve = [(r["step"], r["ssim"]) for r in records if r.get("kind") == "heldout" and "ssim" in r]
    return {"label": label, "cells": cells, "teacher": teacher.groups() if teacher else None, "command": command,
            "variant": variant.strip(), "iterations": iterations, "machine": machine, "curve": curve}


def render(runs: list[dict], device: str) -> str:
    lines = [
        f"# Student fidelity sweep ({device})",
        "",
        runs[0]["machine"],
        "",
        "Runs of `benchmarks/bench_fidelity.py` (rain-princess, 128 px teacher, the 6 held-out photos of the CPU table), "
        "run side by side on the one device, so minutes are shared-device minutes. **SSIM** to the teacher on the "
        "held-out photos; **margin**: SSIM minus the better no-student baseline (the photo, or the photo recoloured "
        "to the style). **Curve**: SSIM to the teacher on the training store's held-out share (crops of training "
        "photos never trained on) at steps 250, 750, 1250, ...; **peak** its best value and step.",
        "",
        "| run | student | teacher | SSIM | photo | recoloured | margin | student colour / texture / structure | "
        "teacher colour / texture / structure | steps | peak (step) | curve | train min | ms / 512 px |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|---|---|---:|---:|",
    ]
    for run in runs:
        c = run["cells"]
        margin = float(c["ssim"]) - max(float(c["photo"]), float(c["recoloured"]))
        curve = run["curve"]
        steps = curve[-1][0] if curve else "-"
        peak = max(curve, key=lambda point: point[1]) if curve else None
        shown = " ".join(f"{value:.3f}" for _, value in curve[::2]) if curve else "-"
        teacher = " / ".join(run["teacher"]) if run["teacher"] else "-"
        variant = f"{run['variant']}, {run['iterations']} it"
        lines.append(
            f"| {run['label']} | {c['student']} | {variant} | {c['ssim']} | {c['photo']} | {c['recoloured']} | "
            f"{margin:+.3f} | {c['colour']} / {c['texture']} / {c['structure']} | {teacher} | {steps} | "
            f"{f'{peak[1]:.3f} ({peak[0]})' if peak else '-'} | {shown} | {c['minutes']} | {c['ms']} |"
        )
    lines += ["", "Commands:", ""] + [f"- {run['label']}: `{run['command']}`" for run in runs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
