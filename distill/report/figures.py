"""The pictures of a fidelity report: the image grid and the t-SNE plots.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont

from distill.core.files import atomic_path
from distill.core.imageio import to_uint8
from distill.report.measures import GROUPS

GROUP_COLOURS = {"style": "#d62728", "teacher": "#1f77b4", "student": "#ff7f0e", "content": "#2ca02c"}
COLUMNS = ("content", "teacher", "student")


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


def save_pil(image: Image.Image, path: Path) -> Path:
    """Write a PIL image (e.g. :func:`make_grid`'s) as PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _legend_handles(groups: Sequence[str]) -> list[Patch]:
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
