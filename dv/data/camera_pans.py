"""The camera-pans sample set's vocabulary: scikit-image's photographs, the six camera moves, their captions, and the
held-out photos' reference views. The shard builder (data_prep/camera_pans.py) renders clips from these; the app's
examples and the claims experiment read them without the builder.
"""

from __future__ import annotations

import functools

import numpy as np
from einops import rearrange, repeat

WINDOW_FRACTION = 0.6  # a 256 px window sees 60% of the photo's short side: room to move

# The real photographs skimage ships in its wheel (load without pooch), with what they show.
# Left out: horse (a binary silhouette), logo, cell (nearly flat: motion would not be recoverable).
PHOTOS: dict[str, str] = {
    "astronaut": "an astronaut",
    "brick": "a brick wall",
    "camera": "a man with a camera",
    "chelsea": "a cat",
    "clock": "a clock",
    "coffee": "a cup of coffee",
    "coins": "old coins",
    "grass": "grass",
    "gravel": "gravel",
    "hubble_deep_field": "distant galaxies",
    "immunohistochemistry": "stained tissue under a microscope",
    "moon": "the surface of the moon",
    "page": "a page of printed text",
    "retina": "a human retina",
    "rocket": "a rocket on a launch pad",
    "text": "handwritten formulas on paper",
}
VAL_PHOTOS = ("coffee", "gravel", "moon", "rocket")  # held out: val clips show photos train never saw

MOVES: dict[str, str] = {
    "pan-left": "pans left",
    "pan-right": "pans right",
    "pan-up": "pans up",
    "pan-down": "pans down",
    "zoom-in": "zooms in",
    "zoom-out": "zooms out",
}


def caption_for(photo: str, move: str, subject: str | None = None) -> str:
    """Caption naming the camera move and the subject (the photo's, or `subject` for a picture not in PHOTOS)."""
    return f"the camera {MOVES[move]} over a photo of {subject or PHOTOS[photo]}"


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A skimage sample photo as uint8 RGB (H, W, 3), read-only and cached per process."""
    import skimage.data  # here, not at the top: a shard build of video files never needs it

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = repeat(img, "h w -> h w c", c=3)
    img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
    img.flags.writeable = False
    return img


def reference_view(photo: str, size: int) -> np.ndarray:
    """The photo's centred window at the scale of a pan's frames, uint8 (size, size, 3): a held-out reference image."""
    # torch here, not at the top: the shard builder imports this module, and a build of video files loads no torch.
    import torch
    import torch.nn.functional as F

    img = rearrange(torch.tensor(load_photo(photo)), "h w c -> 1 c h w").float()
    h, w = img.shape[-2:]
    side = WINDOW_FRACTION * min(h, w)
    top, left = int(round((h - side) / 2)), int(round((w - side) / 2))
    crop = img[..., top : top + int(round(side)), left : left + int(round(side))]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(rearrange(out.round().clamp(0, 255).to(torch.uint8), "1 c h w -> h w c").numpy())
