"""What only a GPU shows: dv's training step and sampler under CUDA and bf16 autocast.

Skipped where torch sees no CUDA device (CI has none); on a GPU machine: `python -m pytest tests/gpu`.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dv.bench.dvpath import SameBatch
from dv.bench.workload import synthetic_batch
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig
from tests.tiny import tiny_dreamvideo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fit(module, steps: int, clip: float | None) -> None:
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(SameBatch(synthetic_batch(2, 4, 16), steps), batch_size=None))


@pytest.mark.parametrize("clip", [1.0, None])
def test_bf16_fit_steps_with_and_without_clipping(clip):
    # Lightning's mixed-precision plugin refuses to clip gradients for a fused AdamW (it unscales inside its
    # step): dv uses the fused kernel only where nothing clips.
    module = tiny_dreamvideo()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    fit(module, 3, clip)
    assert bool(module.optimizers().optimizer.defaults["fused"]) == (clip is None)  # None: not asked for
    changed = {n for n, p in module.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_bf16_sampling_on_the_gpu():
    module = tiny_dreamvideo().cuda().eval()
    sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, num_frames=4, frame_size=16)
    image = torch.rand(1, 3, 16, 16, device="cuda") * 2 - 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        video = sampler.sample(["a red ball"], image, SamplerConfig(steps=3), [0], progress=False)
    assert video.is_cuda and torch.isfinite(video.float()).all()
