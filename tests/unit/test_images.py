"""Reference images: any file a person might pass works, or fails with one sentence."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dv.data.images import load_image
from dv.errors import DataError


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_formats(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(gradient(40, 60)).save(path)
    out = load_image(path, 32)
    assert out.shape == (32, 32, 3) and out.dtype.is_floating_point is False


def test_grayscale_and_16_bit(tmp_path):
    Image.fromarray(np.full((20, 20), 100, np.uint8), mode="L").save(tmp_path / "g.png")
    assert (load_image(tmp_path / "g.png", 16) == 100).all()
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert (load_image(tmp_path / "g16.png", 16) == 255).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 8:, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 16).numpy()
    assert (out[:, :6] == 255).all(), "transparent pixels become white"
    assert (out[:, 10:] == [255, 0, 0]).all()


def test_exif_rotation_is_applied(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = 255  # white left half of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display: the white half goes to the top
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "r.jpg", 20).numpy().astype(int)
    assert out[:3].mean() > 200 and out[-3:].mean() < 50


def test_tiny_huge_and_non_square_are_resized_and_centre_cropped(tmp_path):
    Image.fromarray(gradient(3, 5)).save(tmp_path / "tiny.png")
    assert load_image(tmp_path / "tiny.png", 32).shape == (32, 32, 3)
    Image.fromarray(gradient(1200, 3000)).save(tmp_path / "huge.png")
    out = load_image(tmp_path / "huge.png", 64).numpy().astype(int)
    assert out.shape == (64, 64, 3)
    # centre crop of a horizontal gradient: red runs around the middle, not from 0
    assert 70 < out[:, 0, 0].mean() < 85 and 170 < out[:, -1, 0].mean() < 185  # x from 900 to 2100 of 3000


def test_bad_paths_and_files_fail_with_one_sentence(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png", 16)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="not an image"):
        load_image(tmp_path / "notes.png", 16)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError):
        load_image(tmp_path / "empty.jpg", 16)
    with pytest.raises(DataError, match="not a file"):
        load_image(tmp_path, 16)
