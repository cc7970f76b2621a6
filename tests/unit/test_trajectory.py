"""The sampling diagnostic: noise clips to t, DDIM back, compare with the clips."""

from __future__ import annotations

import pytest
import torch

from dv.diffusion.trajectory import STARTS, pixel_energy, sample_back, trajectory_table
from dv.models.conditions import video_to_model
from tests.tiny import tiny_dreamvideo, tiny_t2v
from tests.unit.test_models import make_batch


def test_pixel_energy_of_flat_and_checkerboard_frames():
    flat = torch.full((1, 3, 2, 4, 4), 0.3)
    assert pixel_energy(flat) == 0.0
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2.0 - 1  # ±1: every neighbour differs by 2
    assert pixel_energy(checker.expand(1, 3, 2, 4, 4)) == pytest.approx(4.0 + 4.0)


def latents_and_conditions(module, batch):
    """The clips in model range, their latents and the module's (text, image) conditions."""
    video = video_to_model(batch["video"])
    conditions = module.batch_conditions({"caption": batch["caption"]}, video, drop=False, generator=None)
    return video, module.encode_video(video), conditions


@pytest.mark.parametrize("make", [tiny_t2v, tiny_dreamvideo])
def test_a_start_near_zero_returns_the_clip_and_pure_noise_does_not(make):
    module = make().eval()
    video, latents, conditions = latents_and_conditions(module, make_batch(2, 4, 16))
    near, first = sample_back(module, latents, conditions, start=1, steps=25)
    assert first == 1 and near.shape == video.shape
    # At t = 1 the noise is 3% of the signal: even an untrained model's step leaves the clip almost as it was.
    assert (near - video).pow(2).mean() < 0.01
    sampled, first = sample_back(module, latents, conditions, start=None, steps=25)
    assert first == 961, "pure noise starts at the top of the 25 leading timesteps"
    assert (sampled - video).pow(2).mean() > 0.1


def test_table_has_one_row_per_start_and_is_seeded():
    module = tiny_t2v().eval()
    batch = make_batch(2, 4, 16)
    video = video_to_model(batch["video"])
    rows = trajectory_table(module, video, batch["caption"], steps=5, seed=3)
    assert [r.start for r in rows] == list(STARTS)
    assert [r.first_t for r in rows][-1] == 801
    again = trajectory_table(module, video, batch["caption"], steps=5, seed=3)
    assert [r.error for r in rows] == [r.error for r in again]
    with pytest.raises(ValueError, match="no DDIM timestep"):
        sample_back(module, module.encode_video(video), (None, None), start=0, steps=5)
