"""Files of a fidelity report: report.json, index.html, grid.png, tsne.png, tsne_scatter.png.

:func:`write_report` takes a :class:`distill.report.options.FidelityResult` and writes, into
REPORT_DIR, every file atomically::

    report.json           every number (non-finite floats as "inf"/"-inf"/"nan" strings)
    index.html            self-contained page; images by relative path, opens from disk
    grid.png              one row per image: content | teacher | student
    tsne.png              t-SNE of Gram embeddings with image thumbnails (framed by group)
    tsne_scatter.png      the same points as a plain scatter with a legend
    images/NN_<name>_{content,teacher,student}.png, images/style_J.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.core.files import write_text_atomic
from distill.core.imageio import save_image
from distill.report.aggregate import json_safe
from distill.report.figures import COLUMNS, make_grid, plot_tsne_scatter, plot_tsne_thumbnails, save_pil
from distill.report.options import REPORT_FORMAT, FidelityResult
from distill.report.page import render_html


#: What a report folder holds besides temporary files: the names :func:`write_report` writes.
REPORT_NAMES = frozenset({"report.json", "index.html", "grid.png", "tsne.png", "tsne_scatter.png", "images"})


def is_report_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds only a fidelity report's files (an earlier report, perhaps unfinished), so it may be rewritten.

    Its report.json, if there, must say it is a fidelity report; any other file means the
    folder is someone else's.
    """
    folder = Path(folder)
    names = {path.name for path in folder.iterdir() if not (path.name.startswith(".") and ".tmp." in path.name)}
    if not names <= REPORT_NAMES:
        return False
    if "report.json" not in names:
        return True
    try:
        return json.loads((folder / "report.json").read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


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
    save_pil(make_grid(rows, names=result.names), out / files["grid"])
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
