"""TrainableEMA: diffusers' warm-up rule for the decay, and the swap in and out of the trained weights."""

import pytest
import torch

from dv.errors import ConfigError
from dv.lit.ema import TrainableEMA


def _ema(decay: float) -> tuple[torch.nn.Parameter, TrainableEMA]:
    p = torch.nn.Parameter(torch.zeros(3))
    return p, TrainableEMA([("w", p)], decay)


def test_decay_warms_up_as_diffusers_ema_model():
    # diffusers' EMAModel (use_ema_warmup=False): min(decay, (1 + step) / (10 + step)).
    _, ema = _ema(0.99)
    decays = []
    for _ in range(1000):
        decays.append(ema.current_decay())
        ema.update()
    assert decays[0] == pytest.approx(0.1)
    assert decays[8] == pytest.approx(9 / 18)
    assert decays[-1] == 0.99 and decays[889] < 0.99 <= decays[891]


def test_shadow_follows_the_warmed_up_decays():
    p, ema = _ema(0.9)
    expected = torch.zeros(3)
    for step in range(30):
        with torch.no_grad():
            p.fill_(float(step + 1))
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * float(step + 1)
        ema.update()
    torch.testing.assert_close(ema.shadow[0], expected)
    assert ema.updates == 30


def test_swapped_restores_the_trained_weights():
    p, ema = _ema(0.5)
    with torch.no_grad():
        p.fill_(4.0)
    ema.update()  # shadow = 0.1 * 0 + 0.9 * 4
    with ema.swapped():
        torch.testing.assert_close(p.detach(), torch.full((3,), 3.6))
    torch.testing.assert_close(p.detach(), torch.full((3,), 4.0))


def test_decay_outside_the_open_unit_interval_is_refused():
    with pytest.raises(ConfigError, match="ema_decay"):
        _ema(1.0)
