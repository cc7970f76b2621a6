"""The sampler as a CUDA graph needs it: DDIM arithmetic from device tables, per-step inputs made once, and the
`sampling.compile` switch (torch.compile of the denoiser) changing nothing but speed."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from dv.diffusion.guidance import Conditions
from dv.diffusion.sampling import SamplerConfig, ddim_sample, ddim_scheduler, ddim_step, ddim_tables, recipe_sampling
from dv.errors import ConfigError
from dv.models.denoiser import Denoiser
from tests.tiny import tiny_dreamvideo


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.8])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_table_step_equals_diffusers_step_bit_for_bit(prediction_type, eta, spacing):
    train = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )
    scheduler = ddim_scheduler(train)
    tables = ddim_tables(scheduler, 7, eta)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(scheduler.timesteps):
        sample, out, noise = (torch.randn(2, 4, 3, 5, 5, generator=g) for _ in range(3))
        want = scheduler.step(out, int(t), sample, eta=eta, variance_noise=noise if eta else None).prev_sample
        got = ddim_step(tables, i, out, sample, noise if eta else None)
        assert torch.equal(got, want), f"step {i} (t={int(t)})"
    assert tables.timesteps.tolist() == scheduler.timesteps.tolist()


def tiny_run(module, steps=3, eta=0.0):
    """The inputs of one ddim_sample call on the tiny DreamVideo model (batch 2, Eq. 5)."""
    b = 2
    images = module.branch.encode_image(torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    null = module.branch.encode_image(torch.ones(b, 3, 8, 8))
    text = torch.randn(b, 16, 32, generator=torch.Generator().manual_seed(2))
    cond = Conditions(text=text, null_text=torch.zeros_like(text), image=images, null_image=null)
    config = SamplerConfig(steps=steps, eta=eta, s_text=3.0, s_image=1.5)
    return cond, config, (b, 12, 3, 4, 4)


def test_the_loop_builds_no_step_inputs():
    """Every step's denoiser inputs come from tensors made before the loop: one conditions batch, one timestep table."""
    module = tiny_dreamvideo().eval()
    denoiser = Denoiser(module.backbone.unet, module.branch)
    cond, config, shape = tiny_run(module, steps=4)
    seen = []

    def recording(z, t, text, image):
        seen.append((t, text, image))
        return denoiser(z, t, text, image)

    generators = [torch.Generator().manual_seed(s) for s in range(shape[0])]
    ddim_sample(recording, ddim_scheduler(module.noise_scheduler), shape, cond, config, generators, progress=False)
    assert len(seen) == 4
    assert all(text is seen[0][1] and image is seen[0][2] for _, text, image in seen), "conditions batched once"
    storages = {t.untyped_storage().data_ptr() for t, _, _ in seen}
    assert len(storages) == 1, "the timesteps are rows of one table, not a tensor built per step"
    reference = ddim_scheduler(module.noise_scheduler)
    reference.set_timesteps(4)
    assert [t.tolist() for t, _, _ in seen] == [[int(t)] * 3 * shape[0] for t in reference.timesteps]


def test_recipe_sampling_section():
    assert recipe_sampling({"model": {}}) == {}
    assert recipe_sampling({"sampling": {"compile": True}}) == {"compile": True}
    with pytest.raises(ConfigError, match="unknown sampling setting"):
        recipe_sampling({"sampling": {"compiled": True}})
    with pytest.raises(ConfigError, match="compile_mode"):
        recipe_sampling({"sampling": {"compile": True, "compile_mode": "fast"}})
    with pytest.raises(ConfigError, match="true or false"):
        recipe_sampling({"sampling": {"compile": "yes"}})


@pytest.mark.slow  # inductor compiles the tiny U-Net for minutes on a loaded 2-core machine (10 min measured)
def test_compile_switch_changes_nothing():
    """torch.compile(mode='reduce-overhead') of the denoiser (a CUDA graph on a GPU, inductor's kernels on a CPU)
    gives the eager latents up to float rounding, and a second run reuses the compiled denoiser."""
    torch._dynamo.reset()
    module = tiny_dreamvideo().eval()
    denoiser = Denoiser(module.backbone.unet, module.branch)
    cond, config, shape = tiny_run(module, steps=3, eta=0.5)  # η > 0: the noise path too
    scheduler = ddim_scheduler(module.noise_scheduler)

    def run(compile_):
        config.compile = compile_
        generators = [torch.Generator().manual_seed(s) for s in range(shape[0])]
        return ddim_sample(denoiser, scheduler, shape, cond, config, generators, progress=False)

    eager = run(False)
    compiled = run(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not torch.equal(compiled, torch.zeros_like(compiled))
    again = run(True)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)
    assert list(denoiser.__dict__["_dv_compiled"]) == ["reduce-overhead"], "one compiled denoiser, kept"
