"""Zero terminal SNR and trailing DDIM steps (Lin et al. 2023), as the shipped tiny models train and sample."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from dv.diffusion.sampling import ddim_scheduler, ddim_step, ddim_tables
from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, T2VModule

ZERO_SNR = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")


def test_default_schedule_is_modelscope_s():
    m = T2VModule(diffusion=DiffusionConfig())
    assert m.noise_scheduler.alphas_cumprod[-1] > 1e-3, "ModelScope's schedule leaves a trace of the clip at t = 999"
    ddim = ddim_scheduler(m.noise_scheduler)
    ddim.set_timesteps(10)
    assert ddim.config.timestep_spacing == "leading" and int(ddim.timesteps[0]) == 901


def test_zero_terminal_snr_with_trailing_steps():
    m = T2VModule(diffusion=DiffusionConfig(**ZERO_SNR))
    reference = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    torch.testing.assert_close(m.noise_scheduler.alphas_cumprod, reference.alphas_cumprod)
    assert float(m.noise_scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)
    ddim = ddim_scheduler(m.noise_scheduler)
    ddim.set_timesteps(10)
    # Trailing: sampling starts where the schedule is pure noise, which is where sampling's noise is drawn.
    assert int(ddim.timesteps[0]) == 999 and int(ddim.timesteps[-1]) == 99
    assert ddim.config.rescale_betas_zero_snr and ddim.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("weighting", ["hang", "diffusers"])
def test_loss_weights_stay_finite_at_zero_snr(weighting):
    m = T2VModule(diffusion=DiffusionConfig(**ZERO_SNR, snr_gamma=5.0, snr_weighting=weighting))
    w = m.loss_weights(torch.tensor([0, 500, 999]))
    assert torch.isfinite(w).all()
    # At t = 999 the v loss is the x0 error itself: 'diffusers' keeps it whole, 'hang' (min(SNR, γ) = 0) drops it.
    assert float(w[-1]) == (1.0 if weighting == "diffusers" else 0.0)


def test_zero_snr_needs_v_prediction():
    with pytest.raises(ConfigError, match="v_prediction"):
        T2VModule(diffusion=DiffusionConfig(prediction_type="epsilon", rescale_betas_zero_snr=True))
    with pytest.raises(ConfigError, match="timestep_spacing"):
        T2VModule(diffusion=DiffusionConfig(timestep_spacing="sideways"))


@pytest.mark.parametrize("steps", [20, 50])
def test_ddpm_like_steps_on_a_zero_terminal_snr_schedule_stay_finite(steps):
    """eta = 1 from t = 999 of a zero-SNR schedule: the first step's ε weight is 0, not a rounded-negative square root
    (diffusers' own DDIM step gives NaN there at 50 trailing steps)."""
    m = T2VModule(diffusion=DiffusionConfig(**ZERO_SNR))
    tables = ddim_tables(ddim_scheduler(m.noise_scheduler), steps, 1.0)
    assert torch.isfinite(tables.direction).all()
    assert tables.direction[0] < 1e-3
    g = torch.Generator().manual_seed(0)
    sample, out, noise = (torch.randn(2, 4, 3, 5, 5, generator=g) for _ in range(3))
    assert torch.isfinite(ddim_step(tables, 0, out, sample, noise)).all()
