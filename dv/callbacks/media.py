"""TensorBoard media: generated videos as animated GIFs and first-frame comparison grids."""

from __future__ import annotations

import io

import numpy as np
import torch
from einops import rearrange
from PIL import Image


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF of uint8 (T, H, W, 3) frames."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    return buf.getvalue()


def add_gif(writer, tag: str, frames: np.ndarray, step: int, fps: float = 8.0) -> None:
    """Log a video to TensorBoard as an animated image (what SummaryWriter.add_video writes, without moviepy)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    t, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def first_frame_grid(reference: torch.Tensor, videos: torch.Tensor) -> np.ndarray:
    """uint8 (B·H, 3·W, 3): per row, reference | generated first frame | generated last frame."""
    rows = torch.stack([reference, videos[:, 0], videos[:, -1]], dim=1)  # (B, 3, H, W, C)
    return rearrange(rows, "b k h w c -> (b h) (k w) c").cpu().numpy()


def custom_scalars_layout(modes: list[str], metrics: list[str]) -> dict:
    """The dashboard layout: training curves, then each metric across sampling modes."""
    training = {
        "loss": ["Multiline", ["train/loss", "val/loss"]],
        "loss by timestep": ["Multiline", [r"train/loss_t.*"]],
        "learning rate": ["Multiline", [r"lr-.*"]],
        "gradient norm": ["Multiline", ["train/grad_norm"]],
        "throughput": ["Multiline", [r"perf/.*"]],
    }
    validation = {name: ["Multiline", [f"val_{mode}/{name}" for mode in modes]] for name in metrics}
    return {"training": training, "validation": validation}
