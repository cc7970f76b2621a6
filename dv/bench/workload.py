"""What a benchmark runs: a recipe's model with random weights, and a synthetic batch of the recipe's shapes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import lightning as L
import torch

from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError
from dv.models.identity import text_encoder_identity
from dv.recipe import Recipe

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
    latent_batch: dict | None = None
    """The same clips as a latent-shard batch (`dv cache-latents --text`): training steps then run no frozen encoder."""

    @property
    def train_batch(self) -> dict:
        """What a training step reads: the latent batch when there is one, else the uint8 clips."""
        return self.latent_batch if self.latent_batch is not None else self.batch

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
        """'batch 2 × 8 frames × 32×32, precision 32-true, checkpointing none, compile off' and what else is on."""
        _, t, h, w, _ = self.batch["video"].shape
        cfg = self.module.backbone_config
        compiled = f"on ({cfg.compile_mode or 'default'})" if cfg.compile else "off"
        sampling = {"compile_mode": SamplerConfig.compile_mode, **Recipe.load(self.recipe).sampling_settings()}
        channels_last = any(
            p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in self.module.parameters()
        )
        return (
            f"batch {self.batch_size} × {t} frames × {h}×{w}, precision {self.precision}, "
            f"checkpointing {cfg.checkpointing}, compile {compiled}"
            + (", latent batches" if self.latent_batch is not None else "")
            + (f", sampling compile on ({sampling['compile_mode']})" if sampling.get("compile") else "")
            + (", channels-last" if channels_last else "")
            + (", cudnn.benchmark" if torch.backends.cudnn.benchmark else "")
        )


def synthetic_batch(batch_size: int, frames: int, size: int, seed: int = 0) -> dict:
    """Random uint8 clips (B, T, H, W, C) and captions: the loader's batch format, with no decoding cost."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (batch_size, frames, size, size, 3), generator=g, dtype=torch.uint8)
    return {"video": video, "caption": [CAPTION] * batch_size}


def synthetic_latent_batch(module: L.LightningModule, batch: dict, seed: int = 0) -> dict:
    """`batch`'s clips as the data module's latent batch (dv/data/latents.py): a random bf16 posterior of the
    autoencoder's latent shape, the first frames as references, and cached text embeddings."""
    ae, backbone = module.backbone.autoencoder, module.backbone
    b, t, h, w, _ = batch["video"].shape
    g = torch.Generator().manual_seed(seed)
    shape = (b, ae.latent_channels, t, h // ae.downscale, w // ae.downscale)
    text = backbone.encode_text(list(batch["caption"])).cpu().to(torch.bfloat16)
    return {
        "latent_mean": torch.randn(shape, generator=g).to(torch.bfloat16),
        "latent_logvar": torch.full(shape, -6.0, dtype=torch.bfloat16),
        "reference": batch["video"][:, 0].clone(),
        "caption": list(batch["caption"]),
        "meta": [{} for _ in range(b)],
        "vae": [ae.identity()] * b,
        "text_embedding": text,
        "text_encoder": [text_encoder_identity(backbone.text)] * b,
    }


def first_clips(batch: dict, n: int) -> dict:
    """The first `n` clips of a video or latent batch."""
    return {k: v[:n] for k, v in batch.items()}


def to_channels_last(module: torch.nn.Module) -> int:
    """Convolution weights in channels-last layout (2-D convs NHWC, 3-D convs NDHWC); returns how many convs."""
    n = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            fmt = torch.channels_last if isinstance(m, torch.nn.Conv2d) else torch.channels_last_3d
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)
            n += 1
    return n


def recipe_model(recipe_path: str, batch_size: int | None) -> tuple[Recipe, L.LightningModule, int, int, int]:
    """(recipe parsed once, its module constructed but not built, frames, size, batch size) for dv bench: the batch
    size given, else the recipe's; a module without a backbone is a ConfigError."""
    recipe = Recipe.load(recipe_path)
    frames, size = recipe.video_shape()
    batch_size = batch_size or int(getattr(recipe.data_args(), "batch_size", None) or 1)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    module = recipe.build_model()
    if getattr(module, "backbone_config", None) is None:
        raise ConfigError(
            f"dv bench knows modules with a backbone (T2VModule and its subclasses), not {type(module).__name__}"
        )
    return recipe, module, frames, size, batch_size


def meta_workload(recipe_path: str, batch_size: int | None) -> tuple:
    """(module built on the meta device, frames, size, batch size, bf16) of a recipe: its shapes, no memory."""
    recipe, module, frames, size, batch_size = recipe_model(recipe_path, batch_size)
    with torch.device("meta"):
        module.configure_model()
    precision = str(recipe.trainer_args().precision or "bf16-mixed")
    return module, frames, size, batch_size, precision.startswith("bf16")


def build_workload(
    recipe_path: str,
    batch_size: int | None,
    device: str,
    compile: bool | None = None,
    latents: bool = False,
    channels_last: bool = False,
    backbone: dict | None = None,
    video_shape: tuple[int | None, int | None] = (None, None),
) -> Workload:
    """The recipe's model with random weights (speed does not depend on them) on `device`, and a batch.

    `compile` overrides the recipe's backbone.compile (torch._dynamo.explain needs the eager modules);
    `latents` trains from a latent batch (as from `dv cache-latents --text` shards); `channels_last` lays the
    convolution weights out channels-last; `backbone` overrides other backbone settings (e.g. compile_regions);
    `video_shape` (frames, frame size) overrides the recipe's clips where given.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    recipe, module, frames, size, batch_size = recipe_model(recipe_path, batch_size)
    cfg = module.backbone_config
    # Random weights: no weight files are needed, and the timings are those of the real shapes.
    cfg.unet_weights, cfg.autoencoder.weights, cfg.text.checkpoint = [], None, None
    if compile is not None:
        cfg.compile = compile
    for name, value in (backbone or {}).items():
        setattr(cfg, name, value)
    frames, size = video_shape[0] or frames, video_shape[1] or size
    module.configure_model()
    if channels_last:
        to_channels_last(module)
    module.to(dev)
    with torch.no_grad():  # the empty prompt is encoded once per run and cached: keep it out of a step's time and FLOPs
        module.backbone.text.empty_prompt(1)
    trainer = recipe.trainer_args()
    precision = str(trainer.precision or "bf16-mixed") if dev.type == "cuda" else "32-true"
    batch = synthetic_batch(batch_size, frames, size)
    return Workload(
        recipe=recipe_path,
        module=module,
        batch=batch,
        device=dev,
        precision=precision,
        gradient_clip_val=trainer.gradient_clip_val,
        latent_batch=synthetic_latent_batch(module, batch) if latents else None,
    )
