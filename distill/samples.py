"""Built-in sample data, so the toolkit runs offline with nothing downloaded.

Content: photographs that installed dependencies already carry (scikit-image's sample
images and matplotlib's portrait of Grace Hopper). Style: a stained-glass mosaic that
this module draws procedurally.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill.core.errors import UnavailableError
from distill.core.imageio import load_image, resize_image, save_image

#: (name, package, file) of photographs shipped inside installed packages.
_SAMPLE_PHOTOS = (
    ("astronaut", "skimage", "astronaut.png"),
    ("coffee", "skimage", "coffee.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("motorcycle", "skimage", "motorcycle_left.png"),
    ("hubble", "skimage", "hubble_deep_field.jpg"),
    ("grace_hopper", "matplotlib", "grace_hopper.jpg"),
)


def sample_photo_paths() -> dict[str, Path]:
    """Paths of the sample photographs available in this installation (name -> file)."""
    folders: dict[str, Path] = {}
    try:
        import skimage

        folders["skimage"] = Path(skimage.data_dir)
    except ImportError:
        pass
    try:
        import matplotlib

        folders["matplotlib"] = Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        pass
    found = {}
    for name, package, filename in _SAMPLE_PHOTOS:
        path = folders.get(package, Path(os.devnull)) / filename
        if path.is_file():
            found[name] = path
    return found


def write_sample_contents(
    folder: str | os.PathLike, *, long_side: int, count: int | None = None, square: bool = False
) -> list[Path]:
    """Write up to ``count`` sample photographs, resized to ``long_side``, as PNGs into ``folder``.

    ``square=True`` centre-crops each photo to a square first: images of one shape can
    share a batch in the batched teacher.
    """
    photos = list(sample_photo_paths().items())[:count]
    if not photos:
        raise UnavailableError("no sample photographs found: scikit-image and matplotlib ship them; is either installed?")
    written = []
    for name, path in photos:
        image = load_image(path)
        if square:
            side = min(image.shape[-2:])
            top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
            image = image[:, top : top + side, left : left + side]
        image = resize_image(image, long_side=long_side)
        written.append(save_image(image, Path(folder) / f"{name}.png"))
    return written


def stained_glass(*, size: int = 256, cells: int = 48, seed: int = 0) -> torch.Tensor:
    """A procedural stained-glass mosaic: (3, size, size) in [0, 1].

    Voronoi cells in saturated jewel colours with a soft light gradient inside each
    pane, separated by dark lead lines: strong, local colour statistics that a Gram
    matrix captures well.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    centres = rng.uniform(0, size, size=(cells, 2)).astype(np.float32)
    distance = (ys[..., None] - centres[:, 0]) ** 2 + (xs[..., None] - centres[:, 1]) ** 2
    order = np.argsort(distance, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    d1 = np.sqrt(np.take_along_axis(distance, nearest[..., None], -1)[..., 0])
    d2 = np.sqrt(np.take_along_axis(distance, second[..., None], -1)[..., 0])

    palette = np.array(
        [[0.75, 0.1, 0.12], [0.1, 0.25, 0.7], [0.95, 0.75, 0.1], [0.1, 0.55, 0.3], [0.55, 0.15, 0.6], [0.95, 0.45, 0.1], [0.2, 0.65, 0.8]],
        dtype=np.float32,
    )
    colours = palette[rng.integers(0, len(palette), cells)] * rng.uniform(0.75, 1.1, size=(cells, 1)).astype(np.float32)
    image = colours[nearest]
    # Light through glass: brighter towards each pane's centre.
    glow = 1.0 - 0.35 * np.clip(d1 / (d1 + d2 + 1e-6) * 2, 0, 1)
    image = image * glow[..., None]
    # Lead lines where a pixel is nearly equidistant from two centres.
    lead = np.clip((d2 - d1 - 1.0) / 1.5, 0, 1)
    image = image * lead[..., None] + 0.06 * (1 - lead[..., None])
    return torch.from_numpy(np.clip(image, 0, 1)).permute(2, 0, 1).contiguous()
