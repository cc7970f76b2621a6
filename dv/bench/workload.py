"""What a benchmark runs: a recipe's model with random weights, and a synthetic batch of the recipe's shapes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import lightning as L
import torch

from dv.errors import ConfigError
from dv.recipe import build_model, load_recipe

CAPTION = "the camera pans slowly to the left over a city street at dusk, people walking, cars passing"


@dataclass
class Workload:
    """A built module on its device and one synthetic CPU batch {"video": uint8 (B, T, H, W, C), "caption": [...]}."""

    recipe: str
    module: L.LightningModule
    batch: dict
    device: torch.device
    precision: str
    """Lightning precision of both loops: the recipe's trainer.precision on a GPU, '32-true' on the CPU."""
    gradient_clip_val: float | None
    """The recipe's trainer.gradient_clip_val: part of dv's training step."""

    @property
    def batch_size(self) -> int:
        """Clips per step."""
        return self.batch["video"].shape[0]

    @property
    def bf16(self) -> bool:
        """Whether both loops run under bf16 autocast."""
        return self.precision.startswith("bf16")

    def autocast(self):
        """bf16 autocast when the precision says so, else nothing."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        """'batch 2 × 8 frames × 32×32, precision 32-true, checkpointing none, compile off'."""
        _, t, h, w, _ = self.batch["video"].shape
        cfg = self.module.backbone_config
        compiled = f"on ({cfg.compile_mode or 'default'})" if cfg.compile else "off"
        return (
            f"batch {self.batch_size} × {t} frames × {h}×{w}, precision {self.precision}, "
            f"checkpointing {cfg.checkpointing}, compile {compiled}"
        )


def video_shape(recipe: dict) -> tuple[int, int, int | None]:
    """(frames, size, batch size) of the recipe's data section (16, 256 and None when it says nothing)."""
    data = (recipe.get("data") or {}).get("init_args") or {}
    return int(data.get("num_frames") or 16), int(data.get("frame_size") or 256), data.get("batch_size")


def synthetic_batch(batch_size: int, frames: int, size: int, seed: int = 0) -> dict:
    """Random uint8 clips (B, T, H, W, C) and captions: the loader's batch format, with no decoding cost."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (batch_size, frames, size, size, 3), generator=g, dtype=torch.uint8)
    return {"video": video, "caption": [CAPTION] * batch_size}


def meta_workload(recipe_path: str, batch_size: int | None) -> tuple:
    """(module built on the meta device, frames, size, batch size, bf16) of a recipe: its shapes, no memory."""
    recipe = load_recipe(recipe_path)
    frames, size, recipe_batch = video_shape(recipe)
    batch_size = batch_size or int(recipe_batch or 1)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    module = build_model(recipe_path)
    if getattr(module, "backbone_config", None) is None:
        raise ConfigError(f"dv bench knows modules with a backbone (T2VModule and its subclasses), not {type(module).__name__}")
    with torch.device("meta"):
        module.configure_model()
    precision = str((recipe.get("trainer") or {}).get("precision") or "bf16-mixed")
    return module, frames, size, batch_size, precision.startswith("bf16")


def build_workload(recipe_path: str, batch_size: int | None, device: str, compile: bool | None = None) -> Workload:
    """The recipe's model with random weights (speed does not depend on them) on `device`, and a batch.

    `compile` overrides the recipe's backbone.compile (torch._dynamo.explain needs the eager modules).
    """
    recipe = load_recipe(recipe_path)
    frames, size, recipe_batch = video_shape(recipe)
    batch_size = batch_size or int(recipe_batch or 1)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    module = build_model(recipe_path)
    cfg = getattr(module, "backbone_config", None)
    if cfg is None:
        raise ConfigError(f"dv bench knows modules with a backbone (T2VModule and its subclasses), not {type(module).__name__}")
    # Random weights: no weight files are needed, and the timings are those of the real shapes.
    cfg.unet_weights, cfg.autoencoder.weights, cfg.text.checkpoint = [], None, None
    if compile is not None:
        cfg.compile = compile
    module.configure_model()
    module.to(dev)
    trainer = recipe.get("trainer") or {}
    precision = str(trainer.get("precision") or "bf16-mixed") if dev.type == "cuda" else "32-true"
    return Workload(
        recipe=recipe_path,
        module=module,
        batch=synthetic_batch(batch_size, frames, size),
        device=dev,
        precision=precision,
        gradient_clip_val=trainer.get("gradient_clip_val"),
    )
