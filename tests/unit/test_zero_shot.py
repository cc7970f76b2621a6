"""TI2V-Zero on the tiny T2V backbone: first frame, determinism, clamped known frames, resampling, settings."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat

from dv.diffusion.guidance import Conditions
from dv.diffusion.sampling import SamplerConfig, ddim_scheduler
from dv.diffusion.zero_shot import ti2v_zero_latents, ti2v_zero_sample
from dv.errors import ConfigError
from tests.tiny import tiny_t2v

SIZE = 16  # pixels; the ×2 space-to-depth autoencoder makes 8×8 latents, the tiny U-Net's sample size


@pytest.fixture(scope="module")
def module():
    return tiny_t2v().eval()


def images(b: int, seed: int = 0) -> torch.Tensor:
    """Reference images (B, 3, H, W) in [-1, 1]."""
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Spy:
    """A denoiser that records every call's input and timesteps, then runs the real one."""

    def __init__(self, denoise):
        self.denoise = denoise
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.outputs: list[torch.Tensor] = []

    def __call__(self, sample, t, text, image_features=None):
        self.calls.append((sample.clone(), t.clone()))
        out = self.denoise(sample, t, text, image_features)
        self.outputs.append(out.clone())
        return out


def run_latents(module, denoise, *, b=1, num_frames=3, window=3, steps=3, resample_steps=1, s_text=3.0, seed=0):
    """ti2v_zero_latents on the tiny backbone; returns the latents and the image latents."""
    backbone = module.backbone
    first = rearrange(backbone.autoencoder.encode(rearrange(images(b), "b c h w -> b c 1 h w")), "b c 1 h w -> b c h w")
    cond = Conditions(text=backbone.encode_text(["a dog runs"] * b), null_text=backbone.encode_text([""] * b))
    generators = [torch.Generator().manual_seed(seed + i) for i in range(b)]
    config = SamplerConfig(steps=steps, s_text=s_text)
    latents = ti2v_zero_latents(
        denoise,
        ddim_scheduler(module.noise_scheduler),
        first,
        cond,
        num_frames,
        window,
        config,
        generators,
        resample_steps=resample_steps,
        progress=False,
    )
    return latents, first


def test_shape_range_and_first_frame(module):
    # Frame 0 is the given image itself (not decoded), so it matches bit for bit; the latents' frame 0 is the
    # image latent, which for the lossless space-to-depth autoencoder decodes back to the same pixels.
    imgs = images(2)
    video = ti2v_zero_sample(
        module.backbone,
        module.noise_scheduler,
        ["a cat", "a dog"],
        imgs,
        num_frames=4,
        config=SamplerConfig(steps=2),
        seeds=[0, 1],
        resample_steps=1,
        window=3,
        progress=False,
    )
    assert video.shape == (2, 3, 4, SIZE, SIZE)
    assert torch.isfinite(video).all() and video.min() >= -1 and video.max() <= 1
    assert torch.equal(video[:, :, 0], imgs)
    assert not torch.allclose(video[:, :, 1], video[:, :, 2])  # new frames are generated, not copies
    latents, first = run_latents(module, module.denoiser, b=2)
    assert torch.equal(latents[:, :, 0], first)
    assert torch.equal(module.backbone.autoencoder.decode(latents[:, :, :1])[:, :, 0], imgs)


def test_same_seed_same_video_and_batch_equals_one_by_one(module):
    kw = dict(num_frames=3, config=SamplerConfig(steps=2, eta=0.5), resample_steps=1, progress=False)
    caps, imgs = ["a cat jumps", "waves on a beach"], images(2)
    batch = ti2v_zero_sample(module.backbone, module.noise_scheduler, caps, imgs, seeds=[3, 4], **kw)
    again = ti2v_zero_sample(module.backbone, module.noise_scheduler, caps, imgs, seeds=[3, 4], **kw)
    assert torch.equal(batch, again)
    for i, seed in enumerate([3, 4]):
        one = ti2v_zero_sample(
            module.backbone, module.noise_scheduler, caps[i : i + 1], imgs[i : i + 1], seeds=[seed], **kw
        )
        # Batched matmuls round differently from single ones; a noise-order bug would differ by O(1).
        torch.testing.assert_close(one[0], batch[i], atol=1e-4, rtol=1e-4)
    other = ti2v_zero_sample(module.backbone, module.noise_scheduler, caps, imgs, seeds=[5, 6], **kw)
    assert not torch.allclose(other[:, :, 1:], batch[:, :, 1:])


def test_known_frames_are_forward_noised_queue_at_every_call(module):
    # At each call the K−1 known frames must be sqrt(ᾱ_t)·s_0 + sqrt(1−ᾱ_t)·ε with s_0 the repeat-and-slide
    # queue of clean latents and ε ~ N(0, I). The implied ε is recovered and must look standard normal; a
    # frame left to the sampler, or a wrong queue, gives |ε| ≫ 1 at small t (sqrt(1−ᾱ_1) ≈ 0.03).
    steps, resample, window, num_frames = 3, 1, 3, 4
    spy = Spy(module.denoiser)
    latents, first = run_latents(
        module, spy, num_frames=num_frames, window=window, steps=steps, resample_steps=resample
    )
    acp = module.noise_scheduler.alphas_cumprod
    per_frame = steps * (resample + 1)
    assert len(spy.calls) == (num_frames - 1) * per_frame
    history = torch.cat([repeat(first, "b c h w -> b c k h w", k=window - 1), latents[:, :, 1:]], dim=2)
    for n, (sample, t) in enumerate(spy.calls):
        j = n // per_frame + 1  # the frame being generated
        assert sample.shape[0] == 2 and sample.shape[2] == window  # [null text, text] in one call
        assert torch.equal(sample[:1], sample[1:])
        queue = history[:, :, j - 1 : j - 1 + window - 1]
        a = acp[t[0]]
        eps = (sample[:1, :, :-1] - a.sqrt() * queue) / (1 - a).sqrt()
        assert eps.mean().abs() < 0.15 and (eps.std() - 1).abs() < 0.15, (n, eps.mean(), eps.std())
        # The noise differs between known frames, also where the queue repeats the image.
        assert not torch.allclose(eps[:, :, 0], eps[:, :, 1])
        if n % per_frame == 0:  # DDPM inversion: the new frame starts as the newest known frame noised to t_1
            eps_new = (sample[:1, :, -1] - a.sqrt() * queue[:, :, -1]) / (1 - a).sqrt()
            assert eps_new.mean().abs() < 0.2 and (eps_new.std() - 1).abs() < 0.2
    # The new frame is not clamped: at the last call it is far less noisy than its DDPM-inversion start.
    assert not torch.allclose(spy.calls[-1][0][:1, :, -1], spy.calls[-per_frame][0][:1, :, -1])


@pytest.mark.parametrize("resample", [0, 2])
def test_resample_steps_multiply_denoiser_calls(module, resample):
    steps, num_frames = 2, 3
    spy = Spy(module.denoiser)
    run_latents(module, spy, num_frames=num_frames, steps=steps, resample_steps=resample)
    assert len(spy.calls) == (num_frames - 1) * steps * (resample + 1)
    scheduler = ddim_scheduler(module.noise_scheduler)
    scheduler.set_timesteps(steps)
    expected = [t for _ in range(num_frames - 1) for t in scheduler.timesteps for _ in range(resample + 1)]
    assert [int(t[0]) for _, t in spy.calls] == [int(t) for t in expected]


def test_resampling_renoises_the_new_frame_from_t_prev_to_t(module):
    # Recompute each DDIM step of the new frame from the recorded ε; the next call must see that result
    # (a new step) or that result re-noised by one DDIM interval, sqrt(k)·z + sqrt(1−k)·ε with
    # k = ᾱ(t_i)/ᾱ(t_{i−1}) and ε ~ N(0, I) (resampling).
    steps, resample, s_text = 3, 2, 3.0
    spy = Spy(module.denoiser)
    run_latents(module, spy, num_frames=2, steps=steps, resample_steps=resample, s_text=s_text)
    scheduler = ddim_scheduler(module.noise_scheduler)
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod
    for n in range(len(spy.calls) - 1):
        (sample, t), out = spy.calls[n], spy.outputs[n]
        eps_null, eps_text = out[:1, :, -1:], out[1:, :, -1:]
        eps = eps_null + s_text * (eps_text - eps_null)
        stepped = scheduler.step(eps, t[0], sample[:1, :, -1:]).prev_sample
        following = spy.calls[n + 1][0][:1, :, -1:]
        i, u = divmod(n, resample + 1)
        if u == resample:  # the last run of step i: the next step starts from its result
            torch.testing.assert_close(following, stepped)
            continue
        t_prev = scheduler.timesteps[i + 1] if i + 1 < steps else None
        keep = acp[t[0]] / (acp[t_prev] if t_prev is not None else scheduler.final_alpha_cumprod)
        renoise = (following - keep.sqrt() * stepped) / (1 - keep).sqrt()
        assert renoise.mean().abs() < 0.2 and (renoise.std() - 1).abs() < 0.2, (n, renoise.mean(), renoise.std())


def test_resampling_changes_the_video(module):
    without, _ = run_latents(module, module.denoiser, resample_steps=0)
    with_, _ = run_latents(module, module.denoiser, resample_steps=2)
    assert not torch.allclose(without[:, :, 1:], with_[:, :, 1:])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(captions=[]), "prompt"),
        (dict(resample_steps=-1), "resample_steps"),
        (dict(resample_steps=1.5), "resample_steps"),
        (dict(num_frames=1), "num_frames"),
        (dict(window=1), "window"),
        (dict(seeds=[0, 1]), "seeds"),
        (dict(images=torch.zeros(1, 3, 15, 16)), "multiples"),
        (dict(config=SamplerConfig(steps=0)), "steps"),
        (dict(config=SamplerConfig(s_text=-1.0)), "guidance"),
    ],
)
def test_bad_settings_raise_config_error(module, change, match):
    kw = dict(
        captions=["a cat"], images=images(1), num_frames=3, config=SamplerConfig(steps=2), seeds=[0], progress=False
    )
    kw.update(change)
    with pytest.raises(ConfigError, match=match):
        ti2v_zero_sample(module.backbone, module.noise_scheduler, **kw)


def test_every_problem_is_reported_at_once(module):
    with pytest.raises(ConfigError) as info:
        ti2v_zero_sample(
            module.backbone,
            module.noise_scheduler,
            [],
            images(1),
            num_frames=1,
            config=SamplerConfig(steps=2),
            seeds=[0],
            resample_steps=-1,
            window=0,
            progress=False,
        )
    for name in ("num_frames", "window", "resample_steps", "prompt"):
        assert name in str(info.value)
