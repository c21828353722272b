"""Files of a fidelity report: report.json, index.html, grid.png, tsne.png, tsne_scatter.png.

:func:`write_report` takes a :class:`distill.fidelity.FidelityResult` and writes, into
REPORT_DIR, every file atomically::

    report.json           every number (non-finite floats as "inf"/"-inf"/"nan" strings)
    index.html            self-contained page; images by relative path, opens from disk
    grid.png              one row per image: content | teacher | student
    tsne.png              t-SNE of Gram embeddings with image thumbnails (framed by group)
    tsne_scatter.png      the same points as a plain scatter with a legend
    images/NN_<name>_{content,teacher,student}.png, images/style_J.png

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from distill.fidelity import GROUPS, TERMS, FidelityResult, json_safe
from distill.fileio import atomic_path, write_text_atomic
from distill.imaging import save_image

GROUP_COLOURS = {"style": "#d62728", "teacher": "#1f77b4", "student": "#ff7f0e", "content": "#2ca02c"}
COLUMNS = ("content", "teacher", "student")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def thumbnail(image: torch.Tensor, long_side: int) -> np.ndarray:
    """(H, W, 3) uint8 thumbnail with the given long side."""
    pil = Image.fromarray(to_uint8(image))
    scale = long_side / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    return np.asarray(pil.resize(size, Image.Resampling.LANCZOS))


def make_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    *,
    labels: Sequence[str] = COLUMNS,
    names: Sequence[str] | None = None,
    gap: int = 4,
    min_cell: int = 160,
) -> Image.Image:
    """One row per image (content | teacher | student) under a header with the column names.

    Cells are as large as the largest image; small images are enlarged by an integer
    factor (nearest neighbour, so pixels stay visible) until a cell is ``min_cell`` px on
    its long side. Smaller images are centred on white. ``names``: row labels on the left.
    """
    if not rows:
        raise ValueError("make_grid needs at least one row")
    cell_h = max(img.shape[-2] for row in rows for img in row)
    cell_w = max(img.shape[-1] for row in rows for img in row)
    factor = max(1, -(-min_cell // max(cell_h, cell_w)))
    cell_h, cell_w = cell_h * factor, cell_w * factor
    columns = max(len(row) for row in rows)
    font = _font(13)
    header = 20
    margin = 0
    if names:
        margin = int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font) for n in names)) + 2 * gap
    grid = Image.new(
        "RGB",
        (margin + columns * cell_w + (columns + 1) * gap, header + len(rows) * cell_h + (len(rows) + 1) * gap),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels[:columns]):
        x = margin + gap + c * (cell_w + gap)
        width = draw.textlength(label, font=font)
        draw.text((x + (cell_w - width) / 2, 3), label, fill="black", font=font)
    for r, row in enumerate(rows):
        top = header + gap + r * (cell_h + gap)
        if names:
            draw.text((gap, top + cell_h / 2 - 7), names[r], fill="black", font=font)
        for c, img in enumerate(row):
            tile = Image.fromarray(to_uint8(img))
            if factor > 1:
                tile = tile.resize((tile.width * factor, tile.height * factor), Image.Resampling.NEAREST)
            x = margin + gap + c * (cell_w + gap) + (cell_w - tile.width) // 2
            grid.paste(tile, (x, top + (cell_h - tile.height) // 2))
    return grid


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _save_pil(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _legend_handles(groups: Sequence[str]):
    from matplotlib.patches import Patch

    present = [g for g in GROUPS if g in groups]
    return [Patch(facecolor="white", edgecolor=GROUP_COLOURS[g], linewidth=2.5, label=g) for g in present]


def plot_tsne_thumbnails(
    points: np.ndarray,
    groups: Sequence[str],
    images: Sequence[torch.Tensor],
    path: str | Path,
    *,
    title: str,
    thumb_px: int = 44,
) -> Path:
    """The lecture's "imscatter": each image's thumbnail at its t-SNE point, framed in its group's colour."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    figure = _new_figure((9, 9))
    ax = figure.add_subplot(1, 1, 1)
    colours = [GROUP_COLOURS.get(g, "black") for g in groups]
    ax.scatter(points[:, 0], points[:, 1], s=4, c=colours)  # sets the data limits
    for point, group, image in zip(points, groups, images):
        box = AnnotationBbox(
            OffsetImage(thumbnail(image, thumb_px), zoom=1.0),
            (float(point[0]), float(point[1])),
            frameon=True,
            pad=0.2,
            bboxprops={"edgecolor": GROUP_COLOURS.get(group, "black"), "linewidth": 2.5},
        )
        ax.add_artist(box)
    ax.margins(0.18)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(handles=_legend_handles(groups), loc="best", fontsize=9)
    return _save_figure(figure, Path(path))


def plot_tsne_scatter(
    points: np.ndarray, groups: Sequence[str], labels: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Plain t-SNE scatter coloured by group, with a legend and small point labels."""
    figure = _new_figure((7, 6))
    ax = figure.add_subplot(1, 1, 1)
    for group in GROUPS:
        index = [i for i, g in enumerate(groups) if g == group]
        if index:
            ax.scatter(points[index, 0], points[index, 1], s=60, c=GROUP_COLOURS[group], label=group,
                       marker="*" if group == "style" else "o", edgecolors="black", linewidths=0.5)
    if len(points) <= 40:
        for point, label in zip(points, labels):
            ax.annotate(label.split(": ")[-1], (float(point[0]), float(point[1])), fontsize=7,
                        xytext=(4, 3), textcoords="offset points", color="#333333")
    ax.margins(0.12)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=9)
    return _save_figure(figure, Path(path))


# --------------------------------------------------------------------------- HTML


def fmt(value: Any, digits: int = 4) -> str:
    """A number for humans: ``inf`` for infinity, ``n/a`` for None, 4 significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _src(relative: str) -> str:
    return _e(quote(relative))


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.banner { background: #b00020; color: white; padding: 14px 18px; font-size: 1.15em; font-weight: bold; border-radius: 4px; }
.warn { background: #fff4ce; border-left: 5px solid #e0a800; padding: 8px 12px; margin: 6px 0; }
.fail { background: #fde7e9; border-left: 5px solid #b00020; padding: 8px 12px; margin: 6px 0; font-weight: bold; }
.pass { background: #e6f4ea; border-left: 5px solid #188038; padding: 8px 12px; margin: 6px 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.meta td { text-align: left; }
.pair { display: flex; gap: 8px; align-items: flex-start; flex-wrap: wrap; }
figure { margin: 0; text-align: center; } figcaption { font-size: 0.85em; color: #555; }
.pair img { width: 256px; image-rendering: auto; border: 1px solid #ccc; }
.item { border: 1px solid #e3e3e3; padding: 10px; margin: 12px 0; border-radius: 4px; }
.plots img { max-width: 100%; border: 1px solid #ddd; }
.styles img { height: 128px; border: 1px solid #ccc; }
code { background: #f5f5f5; padding: 1px 4px; }
"""


def _headline(agg: dict[str, Any]) -> list[str]:
    """Agreement with the teacher next to the no-student baselines, and the stylisation figures."""
    agree, figures = agg["agreement"], agg["stylisation"]
    rows = [
        ("student", agree["student"], True),
        ("baseline: the content photo itself", agree["content"], False),
        ("baseline: the photo recoloured to the style", agree["recoloured"], False),
    ]
    parts = ["<h2>Headline: agreement with the teacher on " + f"{agg['images']} image(s)</h2><table>",
             "<tr><th class='l'></th><th>SSIM to teacher</th><th>PSNR to teacher (dB)</th></tr>"]
    for name, values, bold in rows:
        cell = (lambda v: f"<b>{fmt(v)}</b>") if bold else fmt
        parts.append(f"<tr><td class='l'>{_e(name)}</td><td>{cell(values['ssim'])}</td><td>{cell(values['psnr'])}</td></tr>")
    verdict = "above" if agree["beats_baselines"] else "NOT above"
    parts.append("</table>")
    parts.append(f"<p>The student is <b>{verdict}</b> the best baseline ({_e(agree['best_baseline'])}) by "
                 f"{agree['margin']:+.3f} SSIM.</p>")
    parts.append("<table><tr><th class='l'>stylisation (no loss network)</th><th>colour moved to style</th>"
                 "<th>texture moved beyond recolouring</th><th>structure of the photo kept</th></tr>")
    for who in ("teacher", "student"):
        f = figures[who]
        parts.append(f"<tr><td class='l'>{who}</td><td>{f['colour_moved']:.2f}</td><td>{f['texture_moved']:.2f}</td>"
                     f"<td>{f['structure_kept']:.2f}</td></tr>")
    parts.append("</table><p>Colour: how far the pixel colours moved from the photo's toward the style's (1 = the "
                 "style's). Texture: the same for gradient and spectrum statistics, relative to the photo recoloured "
                 "to the style (0 = no more than a recolouring). Structure: correlation of the photo's edges with the "
                 "output's.</p>")
    return parts


def render_html(report: dict[str, Any], files: dict[str, Any]) -> str:
    """The report page. ``files``: relative paths of the written files (see :func:`write_report`)."""
    agg, speed, targets, run = report["aggregate"], report["speed"], report["targets"], report["run"]
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Fidelity report: {_e((run.get('student') or {}).get('name', 'student'))} vs Gatys teacher</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    if report["random_weights"]:
        parts.append(
            '<div class="banner">RANDOM LOSS-NETWORK WEIGHTS: the loss network was not pretrained '
            f"({_e(report['weights'])}). Objectives, ratios, k* and Gram distances are those of a random texture "
            "model; the agreement and stylisation figures below do not use the loss network.</div>"
        )
    student = run.get("student") or {}
    parts.append(f"<h1>Teacher vs student: fidelity report</h1>")
    for line in agg.get("diagnoses", []):
        parts.append(f'<div class="fail">{_e(line)}</div>')
    for warning in report.get("warnings", []):
        if not (report["random_weights"] and warning == report.get("warning")):
            parts.append(f'<div class="warn">{_e(warning)}</div>')
    for gate in report.get("gates", []):
        css = "pass" if gate["passed"] else "fail"
        verdict = "passed" if gate["passed"] else "FAILED"
        parts.append(f'<div class="{css}">gate {_e(gate["name"])} {verdict}: {_e(gate["message"])}</div>')

    meta = [
        ("student", f"{student.get('name', '?')} {json.dumps(student.get('kwargs', {}))}, {fmt(run.get('parameters'))} parameters"),
        ("checkpoint", f"{run['checkpoint']} ({run['checkpoint_kind']}, step {fmt(run.get('step'))})"),
        ("target store", f"{targets['store']} (config {targets['config_hash'][:16]})"),
        ("split", f"{targets['split']}: {targets['images']} of {targets['split_images']} image(s), held-out fraction {fmt(targets['heldout_fraction'])}"),
        ("teacher", _teacher_summary(targets["teacher_config"])),
        ("loss network", report["weights"]),
        ("device", report["device"]),
        ("Gram embedding layers", ", ".join(report["embedding_layers"])),
        ("created", report["created"]),
    ]
    parts.append('<table class="meta">' + "".join(f"<tr><th class='l'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta) + "</table>")

    if "agreement" in agg:
        parts.extend(_headline(agg))

    # Secondary: the objective the teacher optimised
    parts.append("<h2>Objective (secondary: a low objective alone is not fidelity)</h2><table>")
    parts.append("<tr><th class='l'>objective (mean)</th>" + "".join(f"<th>{t}</th>" for t in TERMS) + "</tr>")
    for who in ("student", "teacher", "content"):
        parts.append(f"<tr><td class='l'>{who}</td>" + "".join(f"<td>{fmt(agg['objective'][who][t])}</td>" for t in TERMS) + "</tr>")
    parts.append("<tr><td class='l'><b>student / teacher</b> (mean of per-image ratios)</td>"
                 + "".join(f"<td><b>{fmt(agg['ratio']['mean'][t])}</b></td>" for t in TERMS) + "</tr>")
    parts.append("<tr><td class='l'>ratio of the means</td>" + "".join(f"<td>{fmt(agg['ratio']['of_means'][t])}</td>" for t in TERMS) + "</tr>")
    parts.append("</table><table>")
    k = agg["equivalent_iterations"]
    gd = agg["gram_distance"]
    rows = [
        ("PSNR student vs teacher (dB)", f"mean {fmt(agg['psnr']['mean'])}, median {fmt(agg['psnr']['median'])}, min {fmt(agg['psnr']['min'])}"),
        ("SSIM student vs teacher", f"mean {fmt(agg['ssim']['mean'])}, median {fmt(agg['ssim']['median'])}, min {fmt(agg['ssim']['min'])}"),
        ("equivalent teacher iterations k*", k["summary"]),
        ("Gram distance / ||style||", f"student-teacher {fmt(gd.get('student_teacher_relative'))}, student-style "
         f"{fmt(gd.get('student_style_relative'))}, teacher-style {fmt(gd.get('teacher_style_relative'))}"),
        ("teacher s / image", f"{fmt(speed['teacher_seconds_per_image'])} s ({speed['teacher_source']}: {speed['teacher_source_detail']})"),
        ("student ms / image", f"{fmt(speed['student_ms_per_image'])} ms ({speed['student_timing']})"),
        ("speed-up", f"{fmt(speed['speedup'])}x on {speed['device']}"),
    ]
    parts.extend(f"<tr><th class='l'>{_e(a)}</th><td class='l'>{_e(b)}</td></tr>" for a, b in rows)
    parts.append("</table>")
    parts.append(
        "<p>k* is the first teacher iteration whose objective is at most the student's (0: the teacher's starting "
        "image was already as good; &gt; N: the student beats the teacher's final result after N iterations). "
        "Images are compared as 8-bit images. Ratios &lt; 1 mean the student has the lower (better) objective.</p>"
    )

    # Per image
    parts.append("<h2>Images: content | teacher | student</h2>")
    for record, names in zip(report["images"], files["images"]):
        parts.append('<div class="item">')
        parts.append(f"<b>{_e(record['index'])}. {_e(record['name'])}</b> <code>{_e(record['content_path'])}</code> "
                     f"{record['size'][1]}x{record['size'][0]} px")
        parts.append('<div class="pair">')
        for column in COLUMNS:
            parts.append(f'<figure><img src="{_src(names[column])}" alt="{_e(column)} {_e(record["name"])}">'
                         f"<figcaption>{column}</figcaption></figure>")
        parts.append("<div><table><tr><th class='l'>objective</th>" + "".join(f"<th>{t}</th>" for t in TERMS) + "</tr>")
        for who in ("student", "teacher", "content"):
            parts.append(f"<tr><td class='l'>{who}</td>" + "".join(f"<td>{fmt(record['objective'][who][t])}</td>" for t in TERMS) + "</tr>")
        parts.append("<tr><td class='l'><b>ratio</b></td>" + "".join(f"<td><b>{fmt(record['ratio'][t])}</b></td>" for t in TERMS) + "</tr></table>")
        g = record["gram_distance"]
        parts.append(
            "<table>"
            f"<tr><th class='l'>PSNR</th><td>{fmt(record['psnr'])} dB</td><th class='l'>SSIM</th><td>{fmt(record['ssim'])}</td></tr>"
            f"<tr><th class='l'>k*</th><td>{_e(record['equivalent_iterations_text'])} / {record['teacher_iterations_run']}</td>"
            f"<th class='l'>teacher s to match</th><td>{fmt(record['teacher_seconds_to_match'])}</td></tr>"
            f"<tr><th class='l'>Gram d(s,t)/|style|</th><td>{fmt(g['student_teacher_relative'])}</td>"
            f"<th class='l'>d(s,style) / d(t,style)</th><td>{fmt(g['student_style_relative'])} / {fmt(g['teacher_style_relative'])}</td></tr>"
            "</table></div>"
        )
        parts.append("</div></div>")

    # Plots
    parts.append('<h2>Style embeddings (t-SNE of Gram matrices)</h2><div class="plots">')
    tsne = report["tsne"]
    parts.append(
        f"<p>Flattened Gram matrices of {_e(', '.join(tsne['layers']))}, PCA to {fmt(tsne.get('pca_components'))} "
        f"components, t-SNE with perplexity {fmt(tsne.get('perplexity'))} (random_state {tsne['random_state']}). "
        "Frames: <span style='color:#d62728'>style</span>, <span style='color:#1f77b4'>teacher</span>, "
        "<span style='color:#ff7f0e'>student</span>, <span style='color:#2ca02c'>content</span>.</p>"
    )
    parts.append(f'<p><img src="{_src(files["tsne"])}" alt="t-SNE with thumbnails"></p>')
    parts.append(f'<p><img src="{_src(files["tsne_scatter"])}" alt="t-SNE scatter"></p></div>')
    parts.append('<h2>Style image(s)</h2><div class="styles">')
    parts.extend(f'<img src="{_src(path)}" alt="style {j}">' for j, path in enumerate(files["styles"]))
    parts.append("</div>")
    parts.append(
        f'<h2>Files</h2><p><a href="{_src(files["json"])}">report.json</a> (every number) · '
        f'<a href="{_src(files["grid"])}">grid.png</a> · <a href="{_src(files["tsne"])}">tsne.png</a> · '
        f'<a href="{_src(files["tsne_scatter"])}">tsne_scatter.png</a></p>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _teacher_summary(config: dict[str, Any]) -> str:
    c = config.get("criterion", {})
    return (
        f"Gatys L-BFGS, {config.get('iterations')} iterations at {config.get('size')} px, init {config.get('init')}, "
        f"scales {config.get('scales')}; {c.get('backbone')} ({c.get('weights')}), alpha {c.get('content_weight')}, "
        f"beta {c.get('style_weight')}, gamma {c.get('tv_weight')}"
    )


def write_report(result: FidelityResult, out_dir: str | Path) -> dict[str, Any]:
    """Write every report file into ``out_dir`` (atomically, file by file); returns the relative paths.

    The images come first and ``report.json`` / ``index.html`` last, so a page never
    references an image that is not yet there.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report = result.report
    files: dict[str, Any] = {
        "json": "report.json", "html": "index.html", "grid": "grid.png",
        "tsne": "tsne.png", "tsne_scatter": "tsne_scatter.png", "images": [], "styles": [],
    }
    for i, name in enumerate(result.names):
        entry = {}
        for column, image in zip(COLUMNS, (result.contents[i], result.teachers[i], result.students[i])):
            relative = f"images/{i:02d}_{name}_{column}.png"
            save_image(image, out / relative)
            entry[column] = relative
        files["images"].append(entry)
        report["images"][i]["files"] = entry
    for j, style in enumerate(result.styles):
        relative = f"images/style_{j}.png"
        save_image(style, out / relative)
        files["styles"].append(relative)

    rows = list(zip(result.contents, result.teachers, result.students))
    _save_pil(make_grid(rows, names=result.names), out / files["grid"])
    random_note = " - loss network has RANDOM weights" if report["random_weights"] else ""
    title = f"t-SNE of Gram embeddings ({', '.join(report['embedding_layers'])}){random_note}"
    thumb_px = int(max(24, min(56, 300 / max(1, len(result.tsne_points)) ** 0.5)))  # smaller when crowded
    plot_tsne_thumbnails(
        result.tsne_points, result.tsne_groups, result.tsne_images, out / files["tsne"], title=title, thumb_px=thumb_px
    )
    labels = [c["label"] for c in report["tsne"]["coordinates"]]
    plot_tsne_scatter(result.tsne_points, result.tsne_groups, labels, out / files["tsne_scatter"], title=title)

    report["files"] = {k: v for k, v in files.items() if k not in ("images",)}
    write_text_atomic(out / files["json"], json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    write_text_atomic(out / files["html"], render_html(report, files))
    return files
