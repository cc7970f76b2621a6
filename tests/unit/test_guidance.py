"""Eq. 5 / Eq. 4 and the one batched denoiser call."""

from __future__ import annotations

import pytest
import torch

from dv.diffusion.guidance import Conditions, double_guidance, guided_prediction
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError


def test_eq5_hand_computed():
    u, t, i = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.0, 4.0])
    # 1 + 2·(3−1) + 0.5·(0−1) = 4.5 ;  2 + 2·(−1−2) + 0.5·(4−2) = −3
    torch.testing.assert_close(double_guidance(u, t, i, 2.0, 0.5), torch.tensor([4.5, -3.0]))
    # Eq. 4: one condition
    torch.testing.assert_close(double_guidance(u, t, None, 2.0, 0.5), torch.tensor([5.0, -4.0]))
    torch.testing.assert_close(double_guidance(u, None, i, 2.0, 0.5), torch.tensor([0.5, 3.0]))


def test_eq5_with_unit_scales_is_sum_minus_uncond():
    g = torch.Generator().manual_seed(0)
    u, t, i = (torch.randn(3, 4, generator=g) for _ in range(3))
    torch.testing.assert_close(double_guidance(u, t, i, 1.0, 1.0), t + i - u)
    torch.testing.assert_close(double_guidance(u, t, i, 0.0, 0.0), u)


class Recorder:
    """A denoiser that is a fixed function of its inputs and records the batch size of each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, t, text, image):
        self.calls.append(z.shape[0])
        out = z * 0.5 + text.mean(dim=(1, 2))[:, None, None, None, None] + t[:, None, None, None, None] * 1e-3
        if image is not None:
            out = out + image.mean(dim=1)[:, None, None]
        return out


def conditions(b=2, with_image=True):
    g = torch.Generator().manual_seed(1)
    return Conditions(
        text=torch.randn(b, 3, 4, generator=g),
        null_text=torch.zeros(b, 3, 4),
        image=torch.randn(b, 5, 2, 2, generator=g) if with_image else None,
        null_image=torch.ones(b, 5, 2, 2) if with_image else None,
    )


def test_one_batched_call_equals_three_calls():
    cond, z, t = conditions(), torch.randn(2, 3, 4, 2, 2), torch.tensor([10, 10])
    rec = Recorder()
    eps = guided_prediction(rec, z, t, cond, s_text=7.5, s_image=1.5)
    assert rec.calls == [6], "the three predictions must come from one call of batch 3·B"
    separate = Recorder()
    e_u = separate(z, t, cond.null_text, cond.null_image)
    e_t = separate(z, t, cond.text, cond.null_image)
    e_i = separate(z, t, cond.null_text, cond.image)
    torch.testing.assert_close(eps, e_u + 7.5 * (e_t - e_u) + 1.5 * (e_i - e_u))


def test_zero_scale_or_missing_condition_leaves_its_branch_out():
    cond, z, t = conditions(), torch.randn(2, 3, 4, 2, 2), torch.tensor([5, 5])
    for s_text, s_image, batch in ((0.0, 2.0, 4), (3.0, 0.0, 4), (0.0, 0.0, 2)):
        rec = Recorder()
        guided_prediction(rec, z, t, cond, s_text, s_image)
        assert rec.calls == [batch]
    rec = Recorder()
    guided_prediction(rec, z, t, conditions(with_image=False), 3.0, 2.0)  # text-to-video on a T2V model
    assert rec.calls == [4]


@pytest.mark.parametrize(
    "field,value", [("s_text", float("nan")), ("s_image", -1.0), ("steps", 0), ("eta", float("inf"))]
)
def test_bad_sampler_settings(field, value):
    with pytest.raises(ConfigError):
        SamplerConfig(**{field: value}).validate()
