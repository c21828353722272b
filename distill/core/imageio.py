"""Image loading and saving with one clear error per bad file.

Inside the library every image is a float tensor in [0, 1], RGB, shape (3, H, W) for one
image or (B, 3, H, W) for a batch. This module is the only place that turns files into
such tensors and back, and the only place that rounds them to the 8-bit levels a file
holds.

PIL's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is process-wide, so
this module never changes it: :func:`load_image` checks ``max_pixels`` itself. PIL still
warns above its limit and refuses twice its limit; the command line sets PIL's limit to
:data:`DEFAULT_MAX_PIXELS` so that only these checks speak.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from distill.core.errors import BadImageError, ConfigError
from distill.core.files import atomic_path

#: Images above this many pixels are refused before decoding (decompression-bomb guard).
#: 40 MP photos must pass; 2x headroom covers large panoramas.
DEFAULT_MAX_PIXELS = 100_000_000

#: Suffix -> the format :func:`save_image` writes for it.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Read an image file as a float RGB tensor of shape (3, H, W) in [0, 1].

    EXIF orientation is applied. Grayscale, palette, RGBA/LA (composited on white),
    CMYK (through its ICC profile when it has one) and 16-bit images are converted to
    8-bit-precision-or-better RGB. Raises :class:`BadImageError` for a missing path,
    an empty, truncated, corrupt or non-image file, or one over ``max_pixels``.
    """
    path = Path(path)
    if not path.exists():
        raise BadImageError(f"{path}: no such file")
    if path.is_dir():
        raise BadImageError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise BadImageError(f"{path}: {width}x{height} pixels {_over_limit(max_pixels)}")
            img.load()
            img = ImageOps.exif_transpose(img)
            array = _to_rgb_float(img)
    except BadImageError:
        raise
    except Image.DecompressionBombError:
        if max_pixels is None:  # PIL's own, process-wide guard spoke
            raise BadImageError(
                f"{path}: exceeds PIL's limit of {Image.MAX_IMAGE_PIXELS:,} pixels (decompression-bomb guard; "
                "raise PIL.Image.MAX_IMAGE_PIXELS to read it)"
            ) from None
        raise BadImageError(f"{path}: {_over_limit(max_pixels)}") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file, or a format that cannot be read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: truncated or corrupt image ({exc})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as stored, read from its header only (the pixels are not decoded).

    EXIF orientation is not applied (reading it makes PIL decode some formats); a rotated
    photo may have its sides swapped, and the same pixel count. Raises
    :class:`BadImageError` for a missing or unidentifiable file; a file whose header reads
    but whose pixels are corrupt is only found by :func:`load_image`.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: no such file" if not path.exists() else f"{path}: is a folder, not an image file")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: not an image file, or a format that cannot be read ({exc})") from None
    return height, width


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a (3, H, W) or (1, 3, H, W) tensor in [0, 1] as an 8-bit image, atomically.

    The format follows the suffix; use ``.png`` for lossless output. Values are clamped
    to [0, 1] and rounded, not truncated.
    """
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image expects shape (3, H, W), got {tuple(image.shape)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image), mode="RGB").save(tmp, format=output_format(path))
    return path


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, clamped and rounded (not truncated): what a file holds."""
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] (any shape) to the 256 levels an 8-bit PNG holds (what :func:`save_image` writes)."""
    return images.clamp(0, 1).mul(255).round().div(255)


def resize_image(
    image: torch.Tensor,
    *,
    long_side: int | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool | None = None,
) -> torch.Tensor:
    """Resize (3, H, W) or (B, 3, H, W) images in [0, 1] bilinearly; the result is clamped to [0, 1].

    Give either ``long_side`` (keeps the aspect ratio; the longer side becomes this many
    pixels) or an exact ``size`` as (H, W). Returns the same rank as the input, and the
    input itself when the size does not change. ``antialias``: ``None`` antialiases only
    when shrinking (the usual choice); ``True`` also when enlarging.
    """
    if (long_side is None) == (size is None):
        raise ValueError("give exactly one of long_side or size")
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    height, width = x.shape[-2:]
    if size is None:
        scale = long_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if tuple(size) == (height, width):
        return image
    if antialias is None:
        antialias = size[0] < height or size[1] < width
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias).clamp(0, 1)
    return x if batched else x[0]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All files under ``folder`` (recursively) with a common image suffix, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _to_rgb_float(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 array (H, W, 3) in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: keep the full precision instead of PIL's
        # clipping conversion to 8-bit 'L'.
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / peak, 0, 1).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels have no colour of their own; white is what a viewer shows.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        with contextlib.suppress(Exception):  # a broken embedded profile falls back to PIL's formula
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    return img.convert("RGB")


def _over_limit(max_pixels: int) -> str:
    return f"exceeds the limit of {max_pixels:,} pixels (decompression-bomb guard; pass max_pixels=None to lift it)"


def output_format(path: str | os.PathLike) -> str:
    """The PIL format that :func:`save_image` writes for ``path``'s suffix; :class:`ConfigError` if none."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"{path}: unsupported output suffix {suffix!r}; use one of {sorted(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]
