"""The fidelity report as one self-contained HTML page (images by relative path, opens from disk)."""

from __future__ import annotations

import html
import json
import math
from typing import Any
from urllib.parse import quote

from distill.report.figures import COLUMNS
from distill.report.measures import TERMS


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
    if "teacher_mirrored" in agree:
        rows.append(("reference: the teacher itself, on the mirrored photo", agree["teacher_mirrored"], False))
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
    """The report page. ``files``: relative paths of the written files (see :func:`distill.report.files.write_report`)."""
    run = report["run"]
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Fidelity report: {_e((run.get('student') or {}).get('name', 'student'))} vs Gatys teacher</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    parts += _notices(report)
    parts += _meta_table(report)
    if "agreement" in report["aggregate"]:
        parts += _headline(report["aggregate"])
    parts += _objective_tables(report["aggregate"], report["speed"])
    parts += _image_items(report, files)
    parts += _plots_and_files(report, files)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _notices(report: dict[str, Any]) -> list[str]:
    """The random-weights banner, the title, then diagnoses, warnings and gates: what to read first."""
    parts: list[str] = []
    agg = report["aggregate"]
    if report["random_weights"]:
        parts.append(
            '<div class="banner">RANDOM LOSS-NETWORK WEIGHTS: the loss network was not pretrained '
            f"({_e(report['weights'])}). Objectives, ratios, k* and Gram distances are those of a random texture "
            "model; the agreement and stylisation figures below do not use the loss network.</div>"
        )
    parts.append("<h1>Teacher vs student: fidelity report</h1>")
    for line in agg.get("diagnoses", []):
        parts.append(f'<div class="fail">{_e(line)}</div>')
    for warning in report.get("warnings", []):
        if not (report["random_weights"] and warning == report.get("warning")):
            parts.append(f'<div class="warn">{_e(warning)}</div>')
    for gate in report.get("gates", []):
        css = "pass" if gate["passed"] else "fail"
        verdict = "passed" if gate["passed"] else "FAILED"
        parts.append(f'<div class="{css}">gate {_e(gate["name"])} {verdict}: {_e(gate["message"])}</div>')
    return parts


def _meta_table(report: dict[str, Any]) -> list[str]:
    """Which student, checkpoint, store, teacher and loss network the report is about."""
    parts: list[str] = []
    run, targets = report["run"], report["targets"]
    student = run.get("student") or {}
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
    return parts


def _objective_tables(agg: dict[str, Any], speed: dict[str, Any]) -> list[str]:
    """The objective the teacher optimised (secondary), PSNR/SSIM, k*, Gram distances and speed."""
    parts: list[str] = []
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
    return parts


def _image_items(report: dict[str, Any], files: dict[str, Any]) -> list[str]:
    """Per image: content | teacher | student with its numbers."""
    parts: list[str] = []
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
    return parts


def _plots_and_files(report: dict[str, Any], files: dict[str, Any]) -> list[str]:
    """The t-SNE plots, the style image(s) and links to the other files."""
    parts: list[str] = []
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
    return parts


def _teacher_summary(config: dict[str, Any]) -> str:
    c = config.get("criterion", {})
    return (
        f"Gatys L-BFGS, {config.get('iterations')} iterations at {config.get('size')} px, init {config.get('init')}, "
        f"scales {config.get('scales')}; {c.get('backbone')} ({c.get('weights')}), alpha {c.get('content_weight')}, "
        f"beta {c.get('style_weight')}, gamma {c.get('tv_weight')}"
        + (f", flat-area weight {c['flat_area_weight']}" if c.get("flat_area_weight") else "")
    )
