"""Min-SNR-γ weighting of the training loss."""

from __future__ import annotations

import pytest
import torch

from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, T2VModule
from tests.tiny import tiny_backbone, tiny_t2v
from tests.unit.test_models import make_batch


def closed_form_snr(module: T2VModule, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ / (1 − ᾱ), from the training schedule's ᾱ."""
    ab = module.noise_scheduler.alphas_cumprod[t].double()
    return ab / (1 - ab)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_closed_form(prediction_type):
    m = T2VModule(diffusion=DiffusionConfig(prediction_type=prediction_type, snr_gamma=5.0))
    t = torch.tensor([0, 50, 200, 500, 999])
    snr = closed_form_snr(m, t)
    # Hang et al. 2023: the x0 error counts min(SNR, γ); an ε loss is SNR times it, a v loss SNR + 1 times.
    per_x0_error = snr if prediction_type == "epsilon" else snr + 1
    expected = snr.clamp(max=5.0) / per_x0_error
    torch.testing.assert_close(m.loss_weights(t).double(), expected, rtol=1e-5, atol=0)
    assert m.loss_weights(t)[0] < 0.01, "the easiest timestep is weighed down"
    plain = T2VModule(diffusion=DiffusionConfig(prediction_type=prediction_type))
    assert torch.equal(plain.loss_weights(t), torch.ones(5))


def test_diffusers_weighting_keeps_the_noisiest_v_losses_whole():
    t = torch.tensor([0, 50, 200, 500, 800, 999])
    m = T2VModule(diffusion=DiffusionConfig(prediction_type="v_prediction", snr_gamma=5.0, snr_weighting="diffusers"))
    snr = closed_form_snr(m, t)
    # diffusers' train_text_to_image: min(SNR + 1, γ) / (SNR + 1) for a v loss.
    expected = torch.minimum(snr + 1, torch.full_like(snr, 5.0)) / (snr + 1)
    torch.testing.assert_close(m.loss_weights(t).double(), expected, rtol=1e-5, atol=0)
    assert torch.equal(m.loss_weights(t[-2:]), torch.ones(2)), "SNR + 1 < γ: the full v loss"
    hang = T2VModule(diffusion=DiffusionConfig(prediction_type="v_prediction", snr_gamma=5.0))
    assert hang.loss_weights(t[-1:]) < 0.01, "Hang et al.'s v weight vanishes as SNR → 0"
    eps = {
        w: T2VModule(diffusion=DiffusionConfig(snr_gamma=5.0, snr_weighting=w)).loss_weights(t)
        for w in ("hang", "diffusers")
    }
    assert torch.equal(eps["hang"], eps["diffusers"]), "the two agree for ε"


def test_training_step_minimises_the_weighted_loss():
    m = tiny_t2v(diffusion=DiffusionConfig(prediction_type="v_prediction", snr_gamma=1.5)).train()
    batch = make_batch()
    with pytest.warns(UserWarning, match="log"):  # no trainer: self.log only warns
        loss = m.training_step(batch, 0)
    torch.manual_seed(m.step_seed(0, 0, 1))
    per_sample, t = m.diffusion_loss(batch, m.step_generator(0, 0), drop=True)
    weights = m.loss_weights(t)
    assert not torch.allclose(weights, torch.ones_like(weights)), "γ = 1.5 weighs every timestep below 1"
    torch.testing.assert_close(loss, (per_sample * weights).mean())


def test_bad_noise_settings_are_config_errors():
    with pytest.raises(ConfigError, match="snr_gamma"):
        T2VModule(backbone=tiny_backbone(), diffusion=DiffusionConfig(snr_gamma=0.0))
    with pytest.raises(ConfigError, match="snr_weighting"):
        T2VModule(backbone=tiny_backbone(), diffusion=DiffusionConfig(snr_gamma=5.0, snr_weighting="min"))
