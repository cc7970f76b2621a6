"""Seconds per video and U-Net calls per step: dv's sampler against diffusers' stock TextToVideoSDPipeline.

Both run the same work in one process: the same U-Net and VAE weights, the same DDIM schedule, step
count, guidance and prompt embeddings (dv's text encoder computes them once for both, so only the
sampling loop and the VAE decode are timed). The stock pipeline can do text-to-video only; dv's
text+image mode (Eq. 5 with the retention branch) is timed beside it.

    pip install transformers   # the stock pipeline imports it; dv does not need it
    python benchmarks/sampling.py --recipe recipes/demo.yaml [--steps 50] [--repeats 3] [--device cuda]

It records the figures in benchmarks/README.md (between the sampling markers).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
from pathlib import Path

import torch

from dv.bench.plain import time_calls
from dv.checkpoint import recipe_video_shape
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig
from dv.recipe import build_model

README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- sampling:begin -->", "<!-- sampling:end -->"


class CallCounter:
    """Counts forward calls of a module (U-Net calls per step)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def kl_vae_like(module, device):
    """An AutoencoderKL with the module's latent geometry: the stock pipeline needs a diffusers VAE."""
    from diffusers import AutoencoderKL

    ae = module.backbone.autoencoder
    if ae.config.kind == "kl":
        return ae.model
    c, down = ae.latent_channels, ae.downscale
    levels = down.bit_length()  # downscale 2**(levels-1)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32,) * levels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=c,
        norm_num_groups=8,
        layers_per_block=1,
        scaling_factor=1.0,
    )
    ae.model, ae.config.kind, ae.scaling_factor = vae, "kl", 1.0  # both samplers decode with this VAE
    return vae.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    from diffusers import TextToVideoSDPipeline  # noqa: PLC0415 - the stock pipeline needs transformers, which dv does not

    frames, size = recipe_video_shape(args.recipe)
    module = build_model(args.recipe)
    module.configure_model()
    vae = kl_vae_like(module, args.device)
    module = module.to(args.device).eval()
    counter = CallCounter(module.backbone.unet)
    prompt = "the camera pans left over a photo of a cat"
    config = SamplerConfig(steps=args.steps, s_text=9.0, s_image=1.5)
    sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, frames, size)
    image = torch.rand(1, 3, size, size, device=args.device) * 2 - 1

    pipe = TextToVideoSDPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=module.backbone.unet, scheduler=sampler.scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    text = module.backbone.encode_text([prompt])
    null = module.backbone.encode_text([""])

    def stock():
        pipe(
            prompt_embeds=text,
            negative_prompt_embeds=null,
            num_frames=frames,
            height=size,
            width=size,
            num_inference_steps=args.steps,
            guidance_scale=config.s_text,
            output_type="pt",
            generator=torch.Generator(args.device).manual_seed(0),
        )

    backbone_only = VideoSampler(module.backbone, None, module.noise_scheduler, frames, size)

    def dv_backbone():
        backbone_only.sample([prompt], None, config, [0], progress=False)

    def dv_t2v():
        sampler.sample([prompt], None, config, [0], progress=False)

    def dv_ti2v():
        sampler.sample([prompt], image, config, [0], progress=False)

    rows = []
    for name, fn in (
        ("diffusers TextToVideoSDPipeline, text-to-video (same work as the next row)", stock),
        ("dv, text-to-video, backbone only", dv_backbone),
        ("dv, text-to-video with the branch on the white image (Eq. 4)", dv_t2v),
        ("dv, text+image-to-video (Eq. 5, branch)", dv_ti2v),
    ):
        counter.calls = 0
        fn()
        calls_per_step = counter.calls / args.steps
        seconds = statistics.median(time_calls(fn, torch.device(args.device), warmup=1, repeats=args.repeats))
        rows.append((name, seconds, calls_per_step))
    base = rows[0][1]
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    lines = [
        BEGIN,
        "## Sampling: seconds per video",
        "",
        f"- device: {device}; date: {datetime.date.today()}; torch {torch.__version__}",
        f"- command: `python benchmarks/sampling.py --recipe {args.recipe} --steps {args.steps} --repeats {args.repeats}`",
        f"- one video of {frames}×{size}×{size}, {args.steps} DDIM steps, s_t = 9, VAE decode included, median of {args.repeats} after a warm-up",
        "",
        "| sampler | s / video | U-Net calls / step | time vs stock |",
        "|---|---|---|---|",
    ]
    for name, seconds, calls in rows:
        lines.append(f"| {name} | {seconds:.3f} | {calls:.0f} | {seconds / base:.2f}× |")
    lines += [
        "",
        "Rows 1 and 2 do the same work (U-Net with CFG, DDIM, VAE decode); rows 3 and 4 also run the",
        "retention branch in every call, rows 4 with batch 3 (Eq. 5) in one call per step. The tiny recipe is",
        "launch-bound on a CPU; figures for the full recipe need a GPU (none was available here).",
        END,
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        text_md = README.read_text() if README.exists() else "# Benchmarks\n"
        if BEGIN in text_md:
            text_md = text_md[: text_md.index(BEGIN)] + table + text_md[text_md.index(END) + len(END) :]
        else:
            text_md = text_md.rstrip() + "\n\n" + table + "\n"
        README.write_text(text_md)


if __name__ == "__main__":
    main()
