"""Reference images from files: any image a person might pass, made RGB, upright and square like training frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageOps, UnidentifiedImageError

from dv.data.video import resize_crop
from dv.errors import DataError


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3): alpha composited on white, 16-bit and float scaled to 8-bit, palette and gray expanded."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            hi = max(float(arr.max()), 1.0) if arr.max() > 1 else 1.0
        arr = np.clip(arr / hi * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """uint8 (size, size, 3) from an image file: EXIF-upright, short side resized to `size`, centre-cropped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"image {str(path)!r} is not a file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{str(path)!r} is not an image PIL can read ({type(e).__name__}); use PNG, JPEG or WebP"
        ) from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise DataError(f"image {str(path)!r} is empty")
    frames = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True))[None]
    return resize_crop(frames, size)[0]


def image_to_model(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (H, W, 3) or (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], what the samplers take."""
    pixels = torch.as_tensor(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    return rearrange(pixels, "b h w c -> b c h w").float().div(127.5).sub(1)
