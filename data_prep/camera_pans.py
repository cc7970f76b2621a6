"""camera-pans: the embedded sample set, rendered from scikit-image's photographs, no download.

The photos, moves and captions live in dv.data.camera_pans (the library reads them too); this adapter renders them.

Each source is one photo × one camera move (pan left/right/up/down, zoom
in/out); its clips (``--clips-per-video``, default 2) are variants with
different start positions and speeds, all deterministic in ``--seed``. A
virtual camera window moves over the photo with sub-pixel motion (bilinear
resampling), rendered straight at ``--size``.

Motion conventions, as seen in the rendered frames: "pans left" moves the
window left over the photo, so the picture content drifts *right* in the
frame; "pans up" makes content drift down; "zooms in" shrinks the window, so
content grows. Pans move 2.5-4.5 output pixels per frame (``--pan-speed``)
and zooms change scale by 2-3% per frame, steady over the clip, so phase
correlation between consecutive frames recovers the direction.

Synthetic clips have no source stride: frames are rendered one per clip frame,
``meta.stride`` is 1 and ``frame_indices`` are 0..T-1 whatever ``--stride``
says; ``source_fps`` is the nominal 8 fps the clips are encoded at, and
``source_size`` the photo's (w, h). With ``--stride-range LOW HIGH`` each
source renders its clips at a stride s drawn from the range: frame i is the
camera at time i·s of the stride-1 clip (s times the motion per frame), and
``meta.stride`` is s.
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from einops import rearrange, repeat

from data_prep.writer import Record
from dv.data import dead_leaves
from dv.data.camera_pans import MOVES, PHOTOS, VAL_PHOTOS, WINDOW_FRACTION, caption_for, load_photo, reference_view
from dv.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: the shard workers never load it
    import torch

__all__ = [
    "MOVES",
    "PHOTOS",
    "VAL_PHOTOS",
    "WINDOW_FRACTION",
    "PanRenderer",
    "caption_for",
    "load_photo",
    "records",
    "reference_view",
]

SPLITS = ("train", "val")
DEFAULT_SHARD_SIZE = 8
DEFAULT_CLIPS_PER_VIDEO = 2
FPS = 8.0
DEFAULT_PAN_SPEED = (2.5, 4.5)
"""Output pixels per frame a pan moves, drawn per clip."""
# Window travel direction (dx, dy) in photo coordinates; image y grows downwards.
_PAN_DIRECTION = {"pan-left": (-1, 0), "pan-right": (1, 0), "pan-up": (0, -1), "pan-down": (0, 1)}
_CHANNEL_ORDERS = tuple(itertools.permutations(range(3)))
MAX_VIEWS = 4 * 2 * len(_CHANNEL_ORDERS)
"""Views of a photo: 4 quarter-turns × mirrored or not × 6 orders of the colour channels."""


@dataclass(frozen=True)
class PanRenderer:
    """Renders clips of one photo × move; picklable, so pool workers render in parallel."""

    photo: str
    move: str
    seed: int
    fps: float = FPS
    views: int = 1
    """How many views of the photo clips draw from (1: the photo as it is; up to 48: its 8 quarter-turns and
    mirror images × 6 orders of the colour channels), one per clip, deterministic in the seed."""
    synthetic: bool = False
    """`photo` names a family of dead-leaves pictures (dv.data.dead_leaves), one new picture per clip."""
    pan_speed: tuple[float, float] = DEFAULT_PAN_SPEED
    """The range a pan's speed is drawn from, in output pixels per frame at the rendered size (equal ends: one
    speed for every clip)."""

    @property
    def source_size(self) -> tuple[int, int]:
        """The photo's (w, h); a dead-leaves family's pictures are all dead_leaves.SIZE square."""
        if self.synthetic:
            return dead_leaves.SIZE, dead_leaves.SIZE
        h, w = load_photo(self.photo).shape[:2]
        return w, h

    def _photo(self, clip_index: int) -> np.ndarray:
        """uint8 RGB (H, W, 3) that clip `clip_index` moves over: the named photo, or its own dead-leaves picture."""
        if self.synthetic:
            return dead_leaves.dead_leaves(f"{self.seed}/{self.photo}/{self.move}/{clip_index}")
        return load_photo(self.photo)

    def render(self, clip_index: int, frames: int, size: int, stride: int = 1) -> np.ndarray:
        """uint8 (T, size, size, 3) frames of variant `clip_index` of this move, `stride` time steps apart."""
        # torch is imported where it renders: the builder imports every adapter, and video sources need no torch.
        import torch
        import torch.nn.functional as F

        x = rearrange(torch.tensor(self._photo(clip_index)), "h w c -> 1 c h w").float()
        x = self._view(x, clip_index)
        # Pre-scale so the window is about `size` photo pixels: sampling then never shrinks
        # much, and bilinear needs no anti-aliasing.
        scale = size / WINDOW_FRACTION / min(x.shape[-2:])
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=scale < 1, align_corners=False)
        h, w = x.shape[-2:]
        cx, cy, side = self._path(clip_index, frames, size, w, h, stride)
        grid = _window_grid(cx, cy, side, size, w, h)
        x = repeat(x, "1 c h w -> t c h w", t=frames)
        out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
        out = rearrange(out.round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c")
        return np.ascontiguousarray(out.numpy())

    def _view(self, x: torch.Tensor, clip_index: int) -> torch.Tensor:
        """The photo (1, C, H, W) as clip `clip_index` sees it: one of `views` views, drawn from its own stream (a
        build with views: 1 renders what builds before the option rendered)."""
        if self.views <= 1:
            return x
        import torch

        views = min(self.views, MAX_VIEWS)
        view = random.Random(f"{self.seed}/{self.photo}/{self.move}/{clip_index}/view").randrange(views)
        turns, mirror, channels = view % 4, view // 4 % 2, view // 8
        x = torch.rot90(x, turns, dims=(-2, -1))
        x = x.flip(-1) if mirror else x
        return x[:, list(_CHANNEL_ORDERS[channels])]

    def _path(self, clip_index: int, frames: int, size: int, w: int, h: int, stride: int = 1):
        """Window centre (cx, cy) and side per frame, in photo pixels."""
        import torch

        rng = random.Random(f"{self.seed}/{self.photo}/{self.move}/{clip_index}")
        # Time of each frame: a clip at stride s shows every s-th frame of the stride-1 camera path.
        t = torch.arange(frames, dtype=torch.float64) * stride
        if self.move in _PAN_DIRECTION:
            dx, dy = _PAN_DIRECTION[self.move]
            side = float(size)
            speed = rng.uniform(*self.pan_speed) * side / size  # photo px per frame
            travel = speed * float(t[-1])
            room_x, room_y = w - side - abs(dx) * travel, h - side - abs(dy) * travel
            if room_x < 0 or room_y < 0:  # very long clips: slow down to fit the photo
                speed *= max(0.0, min(w - side, h - side)) / max(travel, 1e-6)
                travel = speed * float(t[-1])
                room_x, room_y = w - side - abs(dx) * travel, h - side - abs(dy) * travel
            x0 = side / 2 + rng.uniform(0, max(room_x, 0)) + (travel if dx < 0 else 0)
            y0 = side / 2 + rng.uniform(0, max(room_y, 0)) + (travel if dy < 0 else 0)
            return x0 + dx * speed * t, y0 + dy * speed * t, torch.full_like(t, side)
        rate = rng.uniform(0.02, 0.03)  # relative change of the window side per frame
        grow = (1 + rate) ** t if self.move == "zoom-out" else (1 - rate) ** t
        widest = float(grow.max())
        base = min(size * 1.0, min(w, h) / widest) if widest > 1 else min(size * 1.45, min(w, h))
        side = base * grow
        big = float(side.max())
        cx = big / 2 + rng.uniform(0, max(w - big, 0))
        cy = big / 2 + rng.uniform(0, max(h - big, 0))
        return torch.full_like(t, cx), torch.full_like(t, cy), side


def _window_grid(cx, cy, side, size: int, w: int, h: int) -> torch.Tensor:
    """grid_sample grid (T, size, size, 2) for square windows centred at (cx, cy) with the given sides."""
    import torch

    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5  # output pixel centres, [-0.5, 0.5)
    xs = rearrange(cx, "t -> t 1") + rearrange(side, "t -> t 1") * rearrange(u, "x -> 1 x")
    ys = rearrange(cy, "t -> t 1") + rearrange(side, "t -> t 1") * rearrange(u, "y -> 1 y")
    # align_corners=False: normalised -1/+1 are the outer edges of the photo's border pixels.
    gx = repeat(2 * xs / w - 1, "t x -> t y x", y=size)
    gy = repeat(2 * ys / h - 1, "t y -> t y x", x=size)
    return rearrange([gx, gy], "xy t y x -> t y x xy").float()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """camera-pans' own option (it also uses --seed, --clips-per-video, --frames, --size)."""
    g = parser.add_argument_group("camera-pans")
    g.add_argument(
        "--photo-views",
        type=int,
        default=1,
        help="training clips show their photo in one of N views (quarter-turns, mirror images, colour-channel orders;"
        " at most 48), so that a caption names the photo but not what the clip shows; held-out clips keep the photo"
        " as it is (default 1: every clip as it is)",
    )
    g.add_argument(
        "--synthetic-photos",
        type=int,
        default=0,
        help="add N families of dead-leaves pictures (overlapping discs, a new picture per clip) to the training split,"
        " each under the six moves, captioned 'a photo of coloured discs': a model must learn to move any picture,"
        " not recall the photos (default 0)",
    )
    g.add_argument(
        "--pan-speed",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=DEFAULT_PAN_SPEED,
        help="pans move LOW to HIGH output pixels per frame at --size, drawn per clip; equal values give every pan one"
        " speed, so a photo and a caption fix the clip (default 2.5 4.5)",
    )


def settings(args: argparse.Namespace) -> dict[str, int | list[float]]:
    """camera-pans' options recorded in each shard's settings (none at their defaults: earlier builds stay whole)."""
    views = getattr(args, "photo_views", 1)
    synthetic = getattr(args, "synthetic_photos", 0)
    if not 1 <= views <= MAX_VIEWS:
        raise ConfigError(
            f"--photo-views must be 1 to {MAX_VIEWS} (the photo's 8 turns and mirror images × 6 channel orders), "
            f"not {views}"
        )
    if synthetic < 0:
        raise ConfigError(f"--synthetic-photos must be 0 or more, not {synthetic}")
    low, high = speed = tuple(float(v) for v in getattr(args, "pan_speed", DEFAULT_PAN_SPEED))
    if not 0 < low <= high:
        raise ConfigError(f"--pan-speed needs 0 < LOW <= HIGH, not {low} {high}")
    out = {"photo_views": views} if views != 1 else {}
    out |= {"pan_speed": list(speed)} if speed != DEFAULT_PAN_SPEED else {}
    return out | ({"synthetic_photos": synthetic} if synthetic else {})


def records(args: argparse.Namespace) -> dict[str, list[Record]]:
    """Records per split: every photo × move; VAL_PHOTOS go to val, the rest (and any dead-leaves families) to
    train."""
    out: dict[str, list[Record]] = {split: [] for split in SPLITS}
    chosen = settings(args)
    train_views = chosen.get("photo_views", 1)
    speed = tuple(chosen.get("pan_speed", DEFAULT_PAN_SPEED))
    for photo in PHOTOS:
        split = "val" if photo in VAL_PHOTOS else "train"
        views = train_views if split == "train" else 1
        for move in MOVES:
            renderer = PanRenderer(photo=photo, move=move, seed=args.seed, views=views, pan_speed=speed)
            meta = {"photo": photo, "move": move}
            out[split].append(Record(f"{photo}-{move}", renderer, caption_for(photo, move), meta))
    for family in range(chosen.get("synthetic_photos", 0)):
        photo = f"discs-{family:04d}"
        for move in MOVES:
            renderer = PanRenderer(photo=photo, move=move, seed=args.seed, synthetic=True, pan_speed=speed)
            meta = {"photo": photo, "move": move}
            caption = caption_for(photo, move, subject=dead_leaves.SUBJECT)
            out["train"].append(Record(f"{photo}-{move}", renderer, caption, meta))
    return out
