"""Image loading: modes, orientation, and one clear error per bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.core.errors import BadImageError as ImageLoadError
from distill.core.imageio import list_images, load_image, resize_image, save_image


def _gradient_rgb(width=12, height=8):
    x = np.linspace(0, 255, width, dtype=np.uint8)
    array = np.stack([np.tile(x, (height, 1)), np.tile(x[::-1], (height, 1)), np.full((height, width), 90, np.uint8)], 2)
    return Image.fromarray(array, "RGB")


def test_rgb_round_trip(tmp_path):
    image = _gradient_rgb()
    image.save(tmp_path / "a.png")
    tensor = load_image(tmp_path / "a.png")
    assert tensor.shape == (3, 8, 12) and tensor.dtype == torch.float32
    assert torch.allclose(tensor * 255, torch.from_numpy(np.array(image)).permute(2, 0, 1).float(), atol=1e-3)
    save_image(tensor, tmp_path / "b.png")
    assert torch.equal(load_image(tmp_path / "b.png"), tensor)


def test_exif_orientation_is_applied(tmp_path):
    image = _gradient_rgb(width=12, height=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "rotated.jpg").shape == (3, 12, 8)


def test_grayscale_palette_rgba_cmyk(tmp_path):
    Image.new("L", (4, 4), 128).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (3, 4, 4) and torch.allclose(gray, torch.full_like(gray, 128 / 255))

    _gradient_rgb().convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (3, 8, 12)

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red shows as white
    rgba.save(tmp_path / "rgba.png")
    assert torch.allclose(load_image(tmp_path / "rgba.png"), torch.ones(3, 4, 4))

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = load_image(tmp_path / "cmyk.jpg")
    assert red[0].mean() > 0.9 and red[1].mean() < 0.1 and red[2].mean() < 0.1


def test_sixteen_bit_keeps_precision(tmp_path):
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    tensor = load_image(tmp_path / "deep.png")
    assert torch.allclose(tensor[0], torch.from_numpy(values / 65535.0).float(), atol=1e-6)
    assert tensor[0, 0, 1] > 0  # 1000/65535 would vanish in an 8-bit conversion


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image at all", "not an image"),
        ("corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 50, "corrupt"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as error:
        load_image(path)
    assert name in str(error.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "whole.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.png: truncated or corrupt"):
        load_image(tmp_path / "cut.png")


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_limit(tmp_path):
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(tmp_path / "big.png", max_pixels=10_000)
    assert load_image(tmp_path / "big.png", max_pixels=None).shape == (3, 300, 300)


def test_resize_and_listing(tmp_path):
    image = torch.rand(3, 30, 60)
    assert resize_image(image, long_side=20).shape == (3, 10, 20)
    assert resize_image(image.unsqueeze(0), size=(7, 9)).shape == (1, 3, 7, 9)
    (tmp_path / "sub").mkdir()
    for name in ("a.PNG", "sub/b.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_image(torch.rand(3, 4, 4), tmp_path / "out.png")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # not the owner-only mode of a temp file
