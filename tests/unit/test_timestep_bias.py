"""Timestep bias (diffusion.timestep_bias_*): training draws chosen timesteps more often, as diffusers' scripts do."""

from __future__ import annotations

import pytest
import torch

from dv.diffusion.loss import draw_timesteps, timestep_weights
from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, T2VModule
from tests.tiny import tiny_backbone
from tests.unit.test_models import make_batch


def test_later_bias_draws_the_noisiest_quarter_as_often_as_asked():
    weights = timestep_weights(1000, "later", multiplier=4.0, portion=0.25)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[750:].unique().numel() == 1 and weights[:750].unique().numel() == 1
    assert (weights[999] / weights[0]).item() == pytest.approx(4.0)
    t = draw_timesteps(weights, 1000, 20000, torch.Generator().manual_seed(0))
    # The last quarter holds 4 * 250 of the 750 + 4 * 250 weight units: 4/7 of the draws.
    assert (t >= 750).float().mean().item() == pytest.approx(4 / 7, abs=0.015)
    assert t.min() >= 0 and t.max() <= 999


def test_earlier_and_range_and_none():
    earlier = timestep_weights(1000, "earlier", multiplier=2.0, portion=0.1)
    assert (earlier[0] / earlier[500]).item() == pytest.approx(2.0) and earlier[100] == earlier[500]
    ranged = timestep_weights(1000, "range", multiplier=3.0, begin=200, end=300)
    assert (ranged[250] / ranged[100]).item() == pytest.approx(3.0) and ranged[300] == ranged[199]
    assert timestep_weights(1000, "none") is None
    uniform = draw_timesteps(None, 1000, 4, torch.Generator().manual_seed(1))
    assert torch.equal(uniform, torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(1)))


def test_the_training_loss_draws_from_the_recipe_bias():
    diffusion = DiffusionConfig(timestep_bias_strategy="range", timestep_bias_begin=990, timestep_bias_multiplier=1e7)
    module = T2VModule(backbone=tiny_backbone(), diffusion=diffusion)
    module.configure_model()
    _, t = module.diffusion_loss(make_batch(2, 4, 16), torch.Generator().manual_seed(0), drop=False)
    assert (t >= 990).all(), t


@pytest.mark.parametrize(
    "bad", [dict(timestep_bias_strategy="noisy"), dict(timestep_bias_multiplier=0.0), dict(timestep_bias_portion=0.0)]
)
def test_bad_bias_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="timestep_bias"):
        T2VModule(diffusion=DiffusionConfig(**bad))
